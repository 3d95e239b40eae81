"""The report: table rows, report.md and the PNG plots."""

import pytest

from sparsebench.report import PLOTS, build_report, build_table, series_label
from sparsebench.results import SCHEMA_VERSION, result_path, write_json_atomic

MiB = 1024 * 1024
SCHEMES = {  # scheme -> (slug, pattern, target); by hand so these tests need no pattern registry
    "dense": ("dense", "dense", 0.0),
    "random:0.5": ("random-0.5-masked", "random", 0.5),
    "random:0.9@csr": ("random-0.9-csr", "random", 0.9),
    "block:4x4:0.5@bsr": ("block4x4-0.5-bsr", "block", 0.5),
    "nm:2:4": ("nm2of4-masked", "nm", 0.5),
}


def make_result(arch="cnn", scheme="dense", **overrides):
    slug, pattern, target = SCHEMES[scheme]
    doc = {
        "schema_version": SCHEMA_VERSION, "status": "ok", "arch": arch, "scheme": scheme, "slug": slug,
        "pattern": pattern, "representation": scheme.partition("@")[2] or "masked", "target_sparsity": target,
        "budget": "ci", "budget_settings": {}, "seed": 0, "dataset": {}, "model": {},
        "accuracy": 0.7 - target / 5, "final_loss": 1.0, "train_time_s": 10.0 + 20 * target, "steps": 10,
        "samples": 640, "step_time_s": 1.0, "inference_time_s": 1.0, "inference_samples_per_s": 1234.5,
        "peak_memory_bytes": 100 * MiB, "peak_memory_method": "memray",
        "ledger": {"total": 4 * MiB, "dense_total": 8 * MiB}, "model_size_bytes": 512 * 1024,
        "dense_model_size_bytes": 1024 * 1024,
        "sparsity": {"total": {"realised": target * 0.95, "kept": 1, "count": 2}, "layers": {}},
        "realised_sparsity": target * 0.95,
        "time_ratio_vs_dense": 1.0 + target,
        "env": {"torch": "2.13.0", "device": "cpu", "threads": 2, "cpu": "Test CPU", "gpu": None, "commit": "abc123"},
    }
    doc.update(overrides)
    return doc


def write(directory, doc):
    write_json_atomic(result_path(directory, doc["arch"], doc["slug"]), doc)


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
    gpu_env = {"torch": "2.13.0", "device": "cuda", "threads": 16, "cpu": "x", "gpu": "NVIDIA H100", "commit": "abc"}
    text = build_table([make_result(), make_result(env=gpu_env)])
    assert "| machine" in text and "cuda (NVIDIA H100)" in text and "cpu x2 (Test CPU)" in text


def test_report_out_dir_and_skipped_cells(tmp_path):
    write(tmp_path, {"schema_version": 1, "status": "skipped", "arch": "cnn", "scheme": "nm:2:4@semi",
                     "slug": "nm2of4-semi", "budget": "ci", "reason": "needs CUDA"})
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
