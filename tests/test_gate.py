"""The gate: comparing results with baselines, the tolerance rule, and updating baselines."""

import json
import os

import pytest

from sparsebench import gate
from sparsebench.gate import (
    GATED_METRICS,
    BaselineError,
    Failure,
    baseline_path,
    check_dir,
    check_result,
    load_baseline,
    tolerance_rule,
    update_baselines,
)
from sparsebench.results import SCHEMA_VERSION, result_path, write_json_atomic

MiB = 1024 * 1024
SCHEMES = {  # scheme -> (slug, pattern, target); by hand so these tests need no pattern registry
    "dense": ("dense", "dense", 0.0),
    "random:0.5@csr": ("random-0.5-csr", "random", 0.5),
    "block:4x4:0.5@bsr": ("block4x4-0.5-bsr", "block", 0.5),
}
CELLS = [("cnn", "dense"), ("cnn", "random:0.5@csr"), ("cnn", "block:4x4:0.5@bsr"), ("transformer", "dense")]


def make_result(arch="cnn", scheme="dense", **overrides):
    """A minimal valid ok result; the gated metrics are made-up round numbers."""
    slug, pattern, target = SCHEMES[scheme]
    doc = {
        "schema_version": SCHEMA_VERSION, "status": "ok", "arch": arch, "scheme": scheme, "slug": slug,
        "pattern": pattern, "representation": scheme.partition("@")[2] or "masked", "target_sparsity": target,
        "budget": "ci", "budget_settings": {}, "seed": 0, "dataset": {}, "model": {},
        "accuracy": 0.6, "final_loss": 1.0, "train_time_s": 10.0, "steps": 10, "samples": 640, "step_time_s": 1.0,
        "inference_time_s": 1.0, "inference_samples_per_s": 100.0,
        "peak_memory_bytes": 100 * MiB, "peak_memory_method": "memray",
        "ledger": {"total": 4, "dense_total": 8}, "model_size_bytes": 1 * MiB, "dense_model_size_bytes": 2 * MiB,
        "sparsity": {"total": {"realised": target, "kept": 1, "count": 2}, "layers": {}},
        "realised_sparsity": target,
        "time_ratio_vs_dense": 1.0 if pattern == "dense" else 2.0,
        "env": {"device": "cpu", "cpu": "test", "commit": "abc123"},
    }
    doc.update(overrides)
    return doc


def write_run(directory, cells=CELLS, **overrides):
    for arch, scheme in cells:
        doc = make_result(arch, scheme, **overrides)
        write_json_atomic(result_path(directory, arch, doc["slug"]), doc)
    return directory


@pytest.fixture
def baselined(tmp_path):
    """A run, and baselines made from it: (results dir, baselines root)."""
    run, root = write_run(tmp_path / "run"), tmp_path / "baselines"
    update_baselines(run, root, "ci")
    return run, root


def read(path):
    return json.loads(path.read_text())


# --- tolerance rule -------------------------------------------------------------------------------------------

def test_tolerance_rule_floors_and_spread():
    assert tolerance_rule("accuracy", [0.6]) == pytest.approx(0.03)
    assert tolerance_rule("accuracy", [0.60, 0.62, 0.61]) == pytest.approx(0.06)  # 3 x spread 0.02
    assert tolerance_rule("peak_memory_bytes", [100 * MiB]) == pytest.approx(10 * MiB)
    assert tolerance_rule("peak_memory_bytes", [2 * MiB]) == pytest.approx(1 * MiB)  # absolute floor
    assert tolerance_rule("peak_memory_bytes", [100 * MiB, 110 * MiB]) == pytest.approx(30 * MiB)
    assert tolerance_rule("model_size_bytes", [10 * MiB]) == pytest.approx(0.1 * MiB)
    assert tolerance_rule("model_size_bytes", [10_000]) == 1024
    assert tolerance_rule("time_ratio_vs_dense", [2.0]) == pytest.approx(0.5)
    assert tolerance_rule("time_ratio_vs_dense", [1.8, 2.0, 2.2]) == pytest.approx(0.8)  # capped at 40% of 2.0
    assert tolerance_rule("time_ratio_vs_dense", [1.95, 2.0, 2.15]) == pytest.approx(0.6)


def test_tolerance_rule_keeps_a_1_5x_slowdown_failing():
    for values in ([1.0], [1.0, 1.1], [0.8, 1.0, 1.4], [3.0, 3.1, 2.9]):
        median = sorted(values)[len(values) // 2]
        assert 1.5 * median > median + tolerance_rule("time_ratio_vs_dense", values)


def test_tolerance_rule_rejects_bad_input():
    with pytest.raises(ValueError, match="no tolerance rule"):
        tolerance_rule("loss", [1.0])
    with pytest.raises(ValueError):
        tolerance_rule("accuracy", [])
    with pytest.raises(ValueError):
        tolerance_rule("accuracy", [float("nan")])


# --- check_result ---------------------------------------------------------------------------------------------

def test_identical_results_pass(baselined):
    run, root = baselined
    report = check_dir(run, root, "ci")
    assert report.ok, report.lines()
    assert report.checked == len(CELLS)
    assert "PASSED" in report.lines()[-1]


@pytest.mark.parametrize("metric,worse,better", [
    ("accuracy", 0.5, 0.7),
    ("peak_memory_bytes", 150 * MiB, 50 * MiB),
    ("model_size_bytes", 2 * MiB, MiB // 2),
    ("time_ratio_vs_dense", 3.0, 1.0),
    ("realised_sparsity", 0.4, 0.6),
])
def test_each_metric_fails_only_in_its_worse_direction(baselined, metric, worse, better):
    _, root = baselined
    baseline = load_baseline(baseline_path(root, "ci", "cnn", "random-0.5-csr"))
    failures = check_result(make_result("cnn", "random:0.5@csr", **{metric: worse}), baseline)
    assert [f.metric for f in failures] == [metric]
    assert failures[0].better == GATED_METRICS[metric] and failures[0].measured == worse
    assert check_result(make_result("cnn", "random:0.5@csr", **{metric: better}), baseline) == []


def test_within_tolerance_passes_and_nan_fails(baselined):
    _, root = baselined
    baseline = load_baseline(baseline_path(root, "ci", "cnn", "dense"))
    assert check_result(make_result(accuracy=0.6 - 0.029), baseline) == []
    assert [f.metric for f in check_result(make_result(accuracy=0.6 - 0.031), baseline)] == ["accuracy"]
    assert [f.metric for f in check_result(make_result(accuracy=float("nan")), baseline)] == ["accuracy"]


def test_failure_line_is_one_readable_line():
    f = Failure("cnn", "block:4x4:0.5@bsr", "accuracy", 0.61, 0.512, 0.04, "higher")
    assert str(f) == "FAIL cnn block:4x4:0.5@bsr accuracy 0.512 < baseline 0.610 - tol 0.040 (worse by 0.098)"
    assert f.cell == "cnn block:4x4:0.5@bsr"
    m = str(Failure("cnn", "dense", "peak_memory_bytes", 100 * MiB, 150 * MiB, 10 * MiB, "lower"))
    assert m == ("FAIL cnn dense peak_memory_bytes 150.00 MiB > baseline 100.00 MiB + tol 10.00 MiB "
                 "(worse by 50.00 MiB, 50%)")
    r = str(Failure("cnn", "random:0.5@csr", "time_ratio_vs_dense", 2.0, 3.0, 0.5, "lower"))
    assert "3.000 > baseline 2.000 + tol 0.500" in r and "\n" not in r


# --- check_dir ------------------------------------------------------------------------------------------------

def test_gate_lists_all_failing_cells(baselined, tmp_path):
    _, root = baselined
    run = write_run(tmp_path / "new")
    write_run(run, [("cnn", "dense")], accuracy=0.4, peak_memory_bytes=200 * MiB)
    write_run(run, [("transformer", "dense")], model_size_bytes=3 * MiB)
    report = check_dir(run, root, "ci")
    assert not report.ok
    assert {(f.cell, f.metric) for f in report.failures} == {
        ("cnn dense", "accuracy"), ("cnn dense", "peak_memory_bytes"), ("transformer dense", "model_size_bytes")}
    lines = report.lines()
    assert "FAIL cnn dense accuracy 0.400 < baseline 0.600 - tol 0.030 (worse by 0.200)" in lines
    assert "3 metric failures in 2 of 4" in lines[-1]


def test_gate_reports_missing_baseline_and_bad_status(baselined, tmp_path):
    _, root = baselined
    run = write_run(tmp_path / "new")
    doc = make_result("cnn", "random:0.5@csr", status="error", error="RuntimeError: boom")
    write_json_atomic(result_path(run, "cnn", "random-0.5-csr"), doc)
    baseline_path(root, "ci", "transformer", "dense").unlink()
    report = check_dir(run, root, "ci")
    assert not report.ok and report.failures == []
    text = "\n".join(report.lines())
    assert "status 'error' (RuntimeError: boom)" in text
    assert f"{baseline_path(root, 'ci', 'transformer', 'dense')} does not exist" in text
    assert f"sparsebench baselines update --budget ci {run}" in text


def test_gate_notes_skipped_cell_without_baseline(baselined):
    run, root = baselined
    doc = {"schema_version": 1, "status": "skipped", "arch": "cnn", "scheme": "nm:2:4@semi",
           "slug": "nm2of4-semi", "budget": "ci", "reason": "semi needs CUDA"}
    write_json_atomic(result_path(run, "cnn", "nm2of4-semi"), doc)
    report = check_dir(run, root, "ci")
    assert report.ok
    assert any("skipped (semi needs CUDA)" in line for line in report.lines())


def test_gate_on_empty_or_corrupt_dir_fails(baselined, tmp_path):
    _, root = baselined
    (tmp_path / "empty").mkdir()
    assert not check_dir(tmp_path / "empty", root, "ci").ok
    run = write_run(tmp_path / "new")
    (run / "cnn" / "dense.json").write_text("{trunc")
    report = check_dir(run, root, "ci")
    assert not report.ok and any("dense.json" in e for e in report.errors)


# --- load_baseline --------------------------------------------------------------------------------------------

def test_missing_corrupt_or_old_baseline_names_file_and_command(baselined):
    _, root = baselined
    path = baseline_path(root, "ci", "cnn", "dense")
    command = "sparsebench baselines update --budget ci"
    for content in (None, "{not json", json.dumps({**read(path), "schema_version": 0}),
                    json.dumps({**read(path), "metrics": {"accuracy": read(path)["metrics"]["accuracy"]}})):
        if content is None:
            path.unlink()
        else:
            path.write_text(content)
        with pytest.raises(BaselineError) as e:
            load_baseline(path)
        assert str(path) in str(e.value) and command in str(e.value)


def test_baseline_with_flipped_direction_is_refused(baselined):
    _, root = baselined
    path = baseline_path(root, "ci", "cnn", "dense")
    doc = read(path)
    doc["metrics"]["accuracy"]["better"] = "lower"
    path.write_text(json.dumps(doc))
    with pytest.raises(BaselineError, match="better"):
        load_baseline(path)


# --- update_baselines -----------------------------------------------------------------------------------------

def test_update_writes_median_and_tolerance_from_runs(tmp_path):
    runs = [write_run(tmp_path / f"run{i}", accuracy=a) for i, a in enumerate((0.60, 0.62, 0.61))]
    lines = update_baselines(runs, tmp_path / "b", "ci", expected_cells=CELLS)
    doc = read(baseline_path(tmp_path / "b", "ci", "cnn", "block4x4-0.5-bsr"))
    assert doc["scheme"] == "block:4x4:0.5@bsr" and doc["budget"] == "ci" and doc["made_from"]["runs"] == 3
    assert doc["metrics"]["accuracy"] == {"value": 0.61, "tolerance": pytest.approx(0.06), "better": "higher"}
    assert doc["metrics"]["time_ratio_vs_dense"] == {"value": 2.0, "tolerance": 0.5, "better": "lower"}
    assert doc["made_from"]["commit"] == "abc123"
    assert sum(line.startswith("new ") for line in lines) == len(CELLS)
    # a second update from a different run says what changed, old -> new
    lines = update_baselines(write_run(tmp_path / "run9", accuracy=0.7), tmp_path / "b", "ci")
    assert any("accuracy: 0.610 ± 0.060 -> 0.700 ± 0.030" in line for line in lines)
    assert not list((tmp_path / "b").rglob("*.tmp"))


def test_update_refuses_incomplete_or_red_runs(tmp_path):
    root = tmp_path / "b"
    incomplete = write_run(tmp_path / "part", CELLS[:2])
    with pytest.raises(BaselineError, match="incomplete.*block:4x4:0.5@bsr"):
        update_baselines(incomplete, root, "ci", expected_cells=CELLS)
    with pytest.raises(BaselineError, match="different cells"):
        update_baselines([write_run(tmp_path / "full"), incomplete], root, "ci")
    red = write_run(tmp_path / "red")
    write_run(red, [("cnn", "dense")], status="error")
    with pytest.raises(BaselineError, match="status 'error'"):
        update_baselines(red, root, "ci")
    with pytest.raises(BaselineError, match="budget 'full'"):
        update_baselines(write_run(tmp_path / "other", budget="full"), root, "ci")
    with pytest.raises(BaselineError, match="no result"):
        (tmp_path / "empty").mkdir()
        update_baselines(tmp_path / "empty", root, "ci")
    assert not root.exists()  # nothing written by any refused update


def test_update_accepts_expected_cells_by_slug(tmp_path):
    update_baselines(write_run(tmp_path / "run"), tmp_path / "b", "ci", expected_cells=[("cnn", "random-0.5-csr")])
    assert [p.name for p in (tmp_path / "b" / "ci").rglob("*.json")] == ["random-0.5-csr.json"]


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_failure_while_writing_temps_leaves_old_baselines(baselined, tmp_path, monkeypatch):
    _, root = baselined
    before, new = snapshot(root), write_run(tmp_path / "new", accuracy=0.9)
    real, calls = gate.write_json_temp, []

    def flaky(path, obj):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(path, obj)

    monkeypatch.setattr(gate, "write_json_temp", flaky)
    with pytest.raises(OSError, match="disk full"):
        update_baselines(new, root, "ci")
    assert len(calls) == 3
    assert snapshot(root) == before  # old files intact, no temp files left


def test_failure_while_renaming_rolls_back(baselined, tmp_path, monkeypatch):
    _, root = baselined
    before, new = snapshot(root), write_run(tmp_path / "new", accuracy=0.9)
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("simulated crash")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="simulated crash"):
        update_baselines(new, root, "ci")
    assert len(calls) == 5  # the third rename failed; the two done before it were undone ...
    assert snapshot(root) == before  # ... so every baseline is the old one, and no temp file is left
    update_baselines(new, root, "ci")  # and the same update goes through once the crash is gone


def test_update_warns_when_time_ratio_runs_are_too_noisy(tmp_path):
    runs = [write_run(tmp_path / f"run{i}", [("cnn", "random:0.5@csr")], time_ratio_vs_dense=r)
            for i, r in enumerate((1.5, 2.0, 2.5))]
    lines = update_baselines(runs, tmp_path / "b", "ci")
    assert any(line.startswith("warning: cnn random:0.5@csr time_ratio_vs_dense") for line in lines)
    doc = read(baseline_path(tmp_path / "b", "ci", "cnn", "random-0.5-csr"))
    assert doc["metrics"]["time_ratio_vs_dense"]["tolerance"] == pytest.approx(0.8)
    assert doc["made_from"]["spread"]["time_ratio_vs_dense"] == pytest.approx(1.0)


def test_gate_notes_baselines_without_results(baselined, tmp_path):
    _, root = baselined
    report = check_dir(write_run(tmp_path / "part", CELLS[:1]), root, "ci")
    assert report.ok and any("3 baselines have no result" in line for line in report.lines())
