"""The report: table rows, report.md and the PNG plots."""

import pytest
from factories import make_env, make_result

from sparsebench.cell import Cell
from sparsebench.report import PLOTS, build_report, build_table, series_label
from sparsebench.results import Result, write_result

SCHEMES = ["dense", "random:0.5", "random:0.9@csr", "block:4x4:0.5@bsr", "nm:2:4"]


def write(directory, result):
    write_result(directory, result)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One report over a small grid (plots are the slow part, so it is built once): (results dir, markdown)."""
    run = tmp_path_factory.mktemp("run")
    for arch in ("cnn", "transformer"):
        for scheme in SCHEMES:
            write(run, make_result(arch, scheme))
    return run, build_report(run)  # out_dir defaults to the results dir


def test_report_writes_table_markdown_and_plots(built):
    out, text = built
    rows = [line for line in text.splitlines() if line.startswith("| cnn") or line.startswith("| transformer")]
    assert len(rows) == 2 * len(SCHEMES)
    assert (out / "report.md").read_text() == text
    assert "budget ci" in text and "commit abc123" in text and "Test CPU" in text
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
        assert f"({name})" in text


def test_rows_grouped_by_arch_dense_first(built):
    _, text = built
    schemes = [line.split("|")[2].strip() for line in text.splitlines() if line.startswith("| cnn")]
    assert schemes == ["dense", "block:4x4:0.5@bsr", "nm:2:4", "random:0.5", "random:0.9@csr"]
    first_transformer = next(i for i, line in enumerate(text.splitlines()) if line.startswith("| transformer"))
    last_cnn = max(i for i, line in enumerate(text.splitlines()) if line.startswith("| cnn"))
    assert last_cnn < first_transformer


def test_row_values():
    table = build_table([make_result("cnn", "random:0.9@csr")])
    row = [c.strip() for c in table.splitlines()[2].split("|")[1:-1]]
    assert row == ["cnn", "random:0.9@csr", "0.520", "0.855", "28.0", "1.90", "1234", "100.0",
                   "512.0 / 1024.0", "4.00 / 8.00"]


def test_several_machines_get_a_machine_column():
    gpu_env = make_env("gpu-class", device="cuda", threads=16) | {"gpu": "NVIDIA H100"}
    text = build_table([make_result(), make_result(env=gpu_env)])
    assert "| machine" in text and "cuda (NVIDIA H100)" in text and "cpu x2 (Test CPU, avx2)" in text


def test_report_out_dir_and_skipped_cells(tmp_path):
    write(tmp_path, Result.skipped(Cell.parse("cnn", "nm:2:4@semi"), "ci", "needs CUDA"))
    text = build_report(tmp_path, tmp_path / "out")  # no ok cell: a table, no plots
    assert "skipped: needs CUDA" in text and "no plots" in text
    assert (tmp_path / "out" / "report.md").read_text() == text


def test_empty_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no result documents"):
        build_report(tmp_path)


def test_series_label_drops_only_the_sparsity():
    assert series_label(make_result(scheme="block:4x4:0.5@bsr")) == "block:4x4@bsr"
    assert series_label(make_result(scheme="random:0.5")) == "random"
    assert series_label(make_result(scheme="nm:2:4")) == "nm:2:4"
    assert series_label(make_result(scheme="dense")) == "dense"
