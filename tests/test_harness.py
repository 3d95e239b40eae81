"""The harness end to end on the smoke budget, on tiny parquet data written by the tests."""

import json
import os

import pytest

from sparsebench import REPRESENTATIONS
from sparsebench.archs import ARCHS
from sparsebench.budgets import BUDGETS
from sparsebench.cell import Cell
from sparsebench.cli import main
from sparsebench.grid import run_one
from sparsebench.patterns import parse_pattern
from sparsebench.report import build_report
from sparsebench.results import REQUIRED_KEYS, read_result, validate_result
from sparsebench.schemes import Scheme

SMOKE = BUDGETS["smoke"]
SMOKE_PATTERNS = ("random:0.5", "block:4x4:0.5", "nm:2:4")  # the first a representation can store is its scheme


def _smoke_scheme(rep: str) -> str | None:
    for pattern in SMOKE_PATTERNS:
        try:
            return str(Scheme(parse_pattern(pattern), rep))
        except ValueError:
            continue
    return None


# one scheme per registered representation (semi is skipped with its reason on a machine without CUDA)
SCHEME_OF = {rep: _smoke_scheme(rep) for rep in REPRESENTATIONS}


def test_every_representation_has_a_smoke_scheme():
    assert None not in SCHEME_OF.values(), "a representation stores none of SMOKE_PATTERNS: add one it stores"
    assert {rep: SCHEME_OF[rep] for rep in ("masked", "csr", "bsr", "bsr_cpp", "semi")} == {
        "masked": "random:0.5", "csr": "random:0.5@csr", "bsr": "block:4x4:0.5@bsr",
        "bsr_cpp": "block:4x4:0.5@bsr_cpp", "semi": "nm:2:4@semi"}


@pytest.mark.parametrize("arch", ["cnn", "transformer"])
@pytest.mark.parametrize("rep", list(SCHEME_OF))
def test_smoke_cell_end_to_end(arch, rep, tiny_settings, isolated_cache, tmp_path):
    cell = Cell.parse(arch, SCHEME_OF[rep])
    result = run_one(cell, SMOKE, tmp_path, tiny_settings)
    assert read_result(cell.path(tmp_path)) == result  # what is written is what was measured
    doc = result.to_dict()
    if doc["status"] == "skipped":
        if rep not in ("semi", "sparseprop"):  # bsr_cpp skips only when our kernels cannot be built
            require_kernels()
        expected = {"semi": "CUDA", "sparseprop": "SparseProp is not importable"}
        assert rep in expected and expected[rep] in doc["reason"], doc["reason"]
        pytest.skip(doc["reason"])
    validate_result(doc)
    assert set(REQUIRED_KEYS) <= set(doc)
    assert doc["arch"] == arch and doc["representation"] == rep and doc["budget"] == "smoke"
    assert doc["steps"] == ARCHS[arch].training_for(SMOKE).steps
    assert 0.0 <= doc["accuracy"] <= 1.0
    assert doc["peak_memory_bytes"] > 0 and doc["peak_memory_method"] == "memray.peak_heap"
    assert doc["time_ratio_vs_dense"] > 0 and len(doc["step_times_s"]["scheme"]) == SMOKE.timing_steps
    pruned = [v for v in doc["sparsity"]["layers"].values() if v["kept"] < v["count"]]
    assert pruned and all(abs(v["realised"] - 0.5) < 0.01 for v in pruned)
    if rep in ("csr", "bsr"):  # stored sparsely: less than dense in memory and on disk
        assert doc["ledger"]["total"] < doc["ledger"]["dense_total"]
    if rep == "csr":  # every csr layer says which kernels computed it: on a CPU with a compiler, ours
        require_kernels()
        assert doc["kernels"] == {layer: "sparsebench-cpp" for layer in doc["representations"]}
    env = doc["env"]
    assert env["threads"] >= 1 and env["torch"] and env["kernel_variant"] == env["machine"]["kernel_variant"]
    assert env["machine_class"] and env["machine"]["cpu"]["isa"] is not None
    assert doc["ledger_bytes"] == doc["ledger"]["total"]


def require_kernels():
    """Kernels that cannot be built fail where they are required ($SPARSEBENCH_REQUIRE_KERNELS=1), else skip."""
    from sparsebench import kernels

    if not kernels.available():
        why = getattr(kernels, "unavailable_reason", lambda: "unknown")()
        if os.environ.get("SPARSEBENCH_REQUIRE_KERNELS") == "1":
            pytest.fail(f"sparse kernels unavailable: {why}")
        pytest.skip(f"sparse kernels unavailable: {why}")


def test_same_seed_same_accuracy_and_loss(tiny_settings, isolated_cache):
    cell = Cell.parse("cnn", "magnitude:0.5")
    a = run_one(cell, SMOKE, None, tiny_settings.but(seed=3))
    b = run_one(cell, SMOKE, None, tiny_settings.but(seed=3))
    assert a.seed == 3
    assert (a.accuracy, a.final_loss) == (b.accuracy, b.final_loss)


def test_measure_twice_gives_the_same_model_measurements(tiny_settings, isolated_cache):
    from sparsebench.train import CellRun

    run = CellRun(Cell.parse("cnn", "random:0.5"), SMOKE, tiny_settings)
    run.fresh()
    run.train()
    a, b = run.measure(), run.measure()
    assert (a.accuracy, a.realised_sparsity, a.model_size_bytes, a.ledger_bytes) == \
        (b.accuracy, b.realised_sparsity, b.model_size_bytes, b.ledger_bytes)
    with pytest.raises(RuntimeError, match="fresh"):
        run.train()  # trained weights are never trained again


def test_cli_grid_report_and_plots(tiny_data_dir, isolated_cache, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["grid", "--budget", "smoke", "--out", str(out), "--data-dir", str(tiny_data_dir), "--quiet",
                 "--archs", "cnn", "--schemes", "dense", "block:4x4:0.5@bsr"])
    assert code == 0
    docs = [json.loads(p.read_text()) for p in sorted(out.glob("*/*.json"))]
    assert {d["scheme"] for d in docs} == {"dense", "block:4x4:0.5@bsr"}
    assert json.loads((out / "grid.json").read_text())["cells"] == [["cnn", "dense"], ["cnn", "block:4x4:0.5@bsr"]]
    printed = capsys.readouterr().out
    assert "block:4x4:0.5@bsr" in printed and "dense" in printed
    for png in ["accuracy_vs_sparsity.png", "accuracy_vs_train_time.png", "accuracy_vs_peak_memory.png"]:
        assert (out / png).stat().st_size > 1000
    report_md = (out / "report.md").read_text()
    assert "block:4x4:0.5@bsr" in report_md
    assert build_report(out) == report_md  # the printed report is the saved one, rebuilt identically
    # the gate on this run: no baselines anywhere is an error, the run's own grid is the expected set
    assert main(["check", str(out), "--budget", "smoke", "--baselines", str(tmp_path / "none")]) == 1
    assert "no baselines for budget 'smoke'" in capsys.readouterr().out
    assert main(["baselines", "update", str(out), "--budget", "smoke", "--baselines", str(tmp_path / "b"),
                 "--archs", "cnn", "--schemes", "dense", "block:4x4:0.5@bsr"]) == 0
    capsys.readouterr()
    assert main(["check", str(out), "--budget", "smoke", "--baselines", str(tmp_path / "b")]) == 0
    (out / "cnn" / "dense.json").unlink()  # a lost cell fails the gate
    assert main(["check", str(out), "--budget", "smoke", "--baselines", str(tmp_path / "b")]) == 1
    assert "MISSING cnn dense" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["run", "--arch", "rnn", "--scheme", "dense", "--out", "x.json"], ["invalid choice", "rnn"]),
    (["run", "--arch", "cnn", "--scheme", "block:4x4", "--out", "x.json"], ["block:RxC:S"]),
    (["run", "--arch", "cnn", "--scheme", "random:1.5", "--out", "x.json"], ["outside [0, 1)"]),
    (["run", "--arch", "cnn", "--scheme", "dense", "--out", "/proc/nope/x.json"], ["cannot write"]),
    (["run", "--arch", "cnn", "--scheme", "dense", "--budget", "huge", "--out", "x.json"], ["invalid choice"]),
    (["report", "/no/such/dir"], ["does not exist"]),
])
def test_cli_bad_arguments_one_line_nonzero(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for w in words:
        assert w in err


def test_cli_missing_data_says_where_it_looked(tmp_path, capsys, isolated_cache):
    code = main(["run", "--arch", "cnn", "--scheme", "dense", "--budget", "smoke", "--out", str(tmp_path / "r.json"),
                 "--data-dir", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(tmp_path / "empty") in err and "SPARSEBENCH_DATA_DIR" in err
