"""The harness end to end on the smoke budget, on tiny parquet data written by the tests."""

import json

import pytest

from sparsebench import REPRESENTATIONS
from sparsebench.budgets import BUDGETS
from sparsebench.cli import main
from sparsebench.grid import run_one
from sparsebench.report import build_report
from sparsebench.results import REQUIRED_KEYS, validate_result

SMOKE = BUDGETS["smoke"]
# one scheme per representation (semi is skipped with its reason on a machine without CUDA)
SCHEME_OF = {"masked": "random:0.5", "csr": "random:0.5@csr", "bsr": "block:4x4:0.5@bsr",
             "bsr_cpp": "block:4x4:0.5@bsr_cpp", "semi": "nm:2:4@semi"}


def test_every_representation_has_a_smoke_scheme():
    assert set(SCHEME_OF) >= set(REPRESENTATIONS) - {"auto"}


@pytest.mark.parametrize("arch", ["cnn", "transformer"])
@pytest.mark.parametrize("rep", list(SCHEME_OF))
def test_smoke_cell_end_to_end(arch, rep, tiny_data_dir, isolated_cache):
    doc = run_one(arch, SCHEME_OF[rep], SMOKE, seed=0, data_dir=tiny_data_dir, progress=False)
    if doc["status"] == "skipped":
        assert rep == "semi" and "CUDA" in doc["reason"]
        pytest.skip(doc["reason"])
    validate_result(doc)
    assert set(REQUIRED_KEYS) <= set(doc)
    assert doc["arch"] == arch and doc["representation"] == rep and doc["budget"] == "smoke"
    assert doc["steps"] == SMOKE.training(arch).steps
    assert 0.0 <= doc["accuracy"] <= 1.0
    assert doc["peak_memory_bytes"] > 0 and doc["peak_memory_method"] == "memray.peak_heap"
    assert doc["time_ratio_vs_dense"] > 0 and len(doc["step_times_s"]["scheme"]) == SMOKE.timing_steps
    pruned = [v for v in doc["sparsity"]["layers"].values() if v["kept"] < v["count"]]
    assert pruned and all(abs(v["realised"] - 0.5) < 0.01 for v in pruned)
    if rep in ("csr", "bsr"):  # stored sparsely: less than dense in memory and on disk
        assert doc["ledger"]["total"] < doc["ledger"]["dense_total"]
    if rep == "csr":  # every csr layer says which kernels computed it
        from sparsebench import kernels

        expected = "sparsebench-cpp" if kernels.available() else "torch.sparse"
        assert doc["kernels"] == {layer: expected for layer in doc["representations"]}
    assert doc["env"]["threads"] >= 1 and doc["env"]["torch"]


def test_same_seed_same_accuracy_and_loss(tiny_data_dir, isolated_cache):
    a = run_one("cnn", "magnitude:0.5", SMOKE, seed=3, data_dir=tiny_data_dir, progress=False)
    b = run_one("cnn", "magnitude:0.5", SMOKE, seed=3, data_dir=tiny_data_dir, progress=False)
    assert (a["accuracy"], a["final_loss"]) == (b["accuracy"], b["final_loss"])


def test_cli_grid_report_and_plots(tiny_data_dir, isolated_cache, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["grid", "--budget", "smoke", "--out", str(out), "--data-dir", str(tiny_data_dir), "--quiet",
                 "--archs", "cnn", "--schemes", "dense", "block:4x4:0.5@bsr"])
    assert code == 0
    docs = [json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))]
    assert {d["scheme"] for d in docs} == {"dense", "block:4x4:0.5@bsr"}
    printed = capsys.readouterr().out
    assert "block:4x4:0.5@bsr" in printed and "dense" in printed
    for png in ["accuracy_vs_sparsity.png", "accuracy_vs_train_time.png", "accuracy_vs_peak_memory.png"]:
        assert (out / png).stat().st_size > 1000
    assert "block:4x4:0.5@bsr" in (out / "report.md").read_text()
    assert build_report(out) == (out / "report.md").read_text().strip() or "dense" in build_report(out)


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
