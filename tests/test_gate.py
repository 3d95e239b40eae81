"""The gate: comparing results with baselines, the tolerance rule, and updating baselines."""

import json
import os

import pytest
from factories import MACHINE_CLASS, make_env, make_result

from sparsebench import gate
from sparsebench.cell import Cell
from sparsebench.gate import (
    CROSS_MACHINE_ACCURACY_TOLERANCE,
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
from sparsebench.results import Result, write_result

MiB = 1024 * 1024
CELLS = [("cnn", "dense"), ("cnn", "random:0.5@csr"), ("cnn", "block:4x4:0.5@bsr"), ("transformer", "dense")]
HERE = MACHINE_CLASS


def cells(pairs=CELLS):
    return [Cell.parse(a, s) for a, s in pairs]


def bpath(root, arch, slug, machine_class=HERE):
    return baseline_path(root, "ci", machine_class, arch, slug)


def write_run(directory, pairs=CELLS, **overrides):
    for arch, scheme in pairs:
        write_result(directory, make_result(arch, scheme, **overrides))
    return directory


@pytest.fixture
def baselined(tmp_path):
    """A run, and baselines made from it: (results dir, baselines root)."""
    run, root = write_run(tmp_path / "run"), tmp_path / "baselines"
    update_baselines(run, root, "ci")
    return run, root


def gate_run(run, root, pairs=CELLS):
    return check_dir(run, root, "ci", cells(pairs))


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
    report = gate_run(run, root)
    assert report.ok, report.lines()
    assert report.checked == len(CELLS)
    assert "PASSED" in report.lines()[-1]


@pytest.mark.parametrize("metric,worse,better", [
    ("accuracy", 0.5, 0.7),
    ("peak_memory_bytes", 150 * MiB, 50 * MiB),
    ("model_size_bytes", 2 * MiB, 256 * 1024),
    ("ledger_bytes", 8 * MiB, 2 * MiB),
    ("time_ratio_vs_dense", 3.0, 1.0),
    ("realised_sparsity", 0.4, 0.6),
])
def test_each_metric_fails_only_in_its_worse_direction(baselined, metric, worse, better):
    _, root = baselined
    baseline = load_baseline(bpath(root, "cnn", "random-0.5-csr"))
    failures = check_result(make_result("cnn", "random:0.5@csr", **{metric: worse}), baseline)
    assert [f.metric for f in failures] == [metric]
    assert failures[0].better == GATED_METRICS[metric] and failures[0].measured == worse
    assert check_result(make_result("cnn", "random:0.5@csr", **{metric: better}), baseline) == []


def test_within_tolerance_passes(baselined):
    _, root = baselined
    baseline = load_baseline(bpath(root, "cnn", "dense"))
    assert check_result(make_result(accuracy=0.7 - 0.029), baseline) == []
    assert [f.metric for f in check_result(make_result(accuracy=0.7 - 0.031), baseline)] == ["accuracy"]


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
    report = gate_run(run, root)
    assert not report.ok
    assert {(f.cell, f.metric) for f in report.failures} == {
        ("cnn dense", "accuracy"), ("cnn dense", "peak_memory_bytes"), ("transformer dense", "model_size_bytes")}
    lines = report.lines()
    assert "FAIL cnn dense accuracy 0.400 < baseline 0.700 - tol 0.030 (worse by 0.300)" in lines
    assert "3 metric failures in 2 of 4" in lines[-1]


def test_gate_reports_missing_baseline_and_bad_status(baselined, tmp_path):
    _, root = baselined
    run = write_run(tmp_path / "new")
    write_result(run, Result.skipped(Cell.parse("cnn", "random:0.5@csr"), "ci", "RuntimeError: boom", "error"))
    bpath(root, "transformer", "dense").unlink()
    report = gate_run(run, root)
    assert not report.ok and report.failures == []
    text = "\n".join(report.lines())
    assert "status 'error' (RuntimeError: boom)" in text
    assert f"{bpath(root, 'transformer', 'dense')} does not exist" in text
    assert f"sparsebench baselines update --budget ci {run}" in text


def test_gate_notes_skipped_cell_without_baseline(baselined):
    run, root = baselined
    write_result(run, Result.skipped(Cell.parse("cnn", "nm:2:4@semi"), "ci", "semi needs CUDA"))
    report = gate_run(run, root, CELLS + [("cnn", "nm:2:4@semi")])
    assert report.ok
    assert any("skipped (semi needs CUDA)" in line for line in report.lines())


def test_gate_on_empty_or_corrupt_dir_fails(baselined, tmp_path):
    _, root = baselined
    (tmp_path / "empty").mkdir()
    assert not gate_run(tmp_path / "empty", root).ok
    run = write_run(tmp_path / "new")
    (run / "cnn" / "dense.json").write_text("{trunc")
    report = gate_run(run, root)
    assert not report.ok and any("dense.json" in e for e in report.errors)


# --- load_baseline --------------------------------------------------------------------------------------------

def test_missing_corrupt_or_old_baseline_names_file_and_command(baselined):
    _, root = baselined
    path = bpath(root, "cnn", "dense")
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
    path = bpath(root, "cnn", "dense")
    doc = read(path)
    doc["metrics"]["accuracy"]["better"] = "lower"
    path.write_text(json.dumps(doc))
    with pytest.raises(BaselineError, match="better"):
        load_baseline(path)


# --- update_baselines -----------------------------------------------------------------------------------------

def test_update_writes_median_and_tolerance_from_runs(tmp_path):
    runs = [write_run(tmp_path / f"run{i}", accuracy=a) for i, a in enumerate((0.60, 0.62, 0.61))]
    lines = update_baselines(runs, tmp_path / "b", "ci", expected_cells=cells())
    doc = read(bpath(tmp_path / "b", "cnn", "block4x4-0.5-bsr"))
    assert doc["scheme"] == "block:4x4:0.5@bsr" and doc["budget"] == "ci" and doc["made_from"]["runs"] == 3
    assert doc["machine_class"] == HERE
    assert doc["metrics"]["accuracy"] == {"value": 0.61, "tolerance": pytest.approx(0.06), "better": "higher"}
    assert doc["metrics"]["time_ratio_vs_dense"] == {"value": 1.5, "tolerance": 0.375, "better": "lower"}
    assert doc["made_from"]["commit"] == "abc123"
    assert sum(line.startswith("new ") for line in lines) == len(CELLS)
    assert read(tmp_path / "b" / "ci" / HERE / "machine.json")["fingerprint"] == make_env()["machine"]
    # a second update from a different run says what changed, old -> new
    lines = update_baselines(write_run(tmp_path / "run9", accuracy=0.7), tmp_path / "b", "ci")
    assert any("accuracy: 0.610 ± 0.060 -> 0.700 ± 0.030" in line for line in lines)
    assert not list((tmp_path / "b").rglob("*.tmp"))


def test_update_refuses_incomplete_or_red_runs(tmp_path):
    root = tmp_path / "b"
    incomplete = write_run(tmp_path / "part", CELLS[:2])
    with pytest.raises(BaselineError, match="incomplete.*block:4x4:0.5@bsr"):
        update_baselines(incomplete, root, "ci", expected_cells=cells())
    with pytest.raises(BaselineError, match="different cells"):
        update_baselines([write_run(tmp_path / "full"), incomplete], root, "ci")
    red = write_run(tmp_path / "red")
    write_result(red, Result.skipped(Cell.parse("cnn", "dense"), "ci", "boom", "error"))
    with pytest.raises(BaselineError, match="status 'error'"):
        update_baselines(red, root, "ci")
    with pytest.raises(BaselineError, match="budget 'full'"):
        update_baselines(write_run(tmp_path / "other", budget="full"), root, "ci")
    with pytest.raises(BaselineError, match="no result"):
        (tmp_path / "empty").mkdir()
        update_baselines(tmp_path / "empty", root, "ci")
    assert not root.exists()  # nothing written by any refused update


def test_update_writes_only_expected_cells(tmp_path):
    update_baselines(write_run(tmp_path / "run"), tmp_path / "b", "ci",
                     expected_cells=cells([("cnn", "random:0.5@csr")]))
    assert sorted(p.name for p in (tmp_path / "b" / "ci").rglob("*.json")) == ["machine.json", "random-0.5-csr.json"]


def test_update_refuses_results_from_mixed_machine_classes(tmp_path):
    a = write_run(tmp_path / "a")
    b = write_run(tmp_path / "b", env=make_env("other-class", kernel_variant="avx512"))
    with pytest.raises(BaselineError) as e:
        update_baselines([a, b], tmp_path / "root", "ci")
    assert "env.machine_class differs" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "root").exists()


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
    assert len(calls) == 3  # the third rename failed, inside the new class directory ...
    assert snapshot(root) == before  # ... so every baseline is the old one, and no temp file is left
    assert not [p for p in (root / "ci").iterdir() if p.name.startswith(".")]
    update_baselines(new, root, "ci")  # and the same update goes through once the crash is gone


def test_update_warns_when_time_ratio_runs_are_too_noisy(tmp_path):
    runs = [write_run(tmp_path / f"run{i}", [("cnn", "random:0.5@csr")], time_ratio_vs_dense=r)
            for i, r in enumerate((1.5, 2.0, 2.5))]
    lines = update_baselines(runs, tmp_path / "b", "ci")
    assert any(line.startswith("warning: cnn random:0.5@csr time_ratio_vs_dense") for line in lines)
    doc = read(bpath(tmp_path / "b", "cnn", "random-0.5-csr"))
    assert doc["metrics"]["time_ratio_vs_dense"]["tolerance"] == pytest.approx(0.8)
    assert doc["made_from"]["spread"]["time_ratio_vs_dense"] == pytest.approx(1.0)


def test_gate_notes_baselines_without_results(baselined, tmp_path):
    _, root = baselined
    report = gate_run(write_run(tmp_path / "part", CELLS[:1]), root, CELLS[:1])
    assert report.ok and any("3 baselines have no result" in line for line in report.lines())


# --- expected cells -------------------------------------------------------------------------------------------

def test_gate_fails_a_run_that_lost_cells_naming_each(baselined, tmp_path):
    _, root = baselined
    run = write_run(tmp_path / "part", CELLS[:2])
    report = gate_run(run, root)
    assert not report.ok
    missing = [line for line in report.lines() if line.startswith("MISSING")]
    assert missing == ["MISSING cnn block:4x4:0.5@bsr: no result (expected by the grid)",
                       "MISSING transformer dense: no result (expected by the grid)"]


def test_expected_cells_come_from_the_grid_manifest_else_the_default_grid(baselined, tmp_path):
    from sparsebench.budgets import BUDGETS
    from sparsebench.grid import DEFAULT_SCHEMES, default_cells, write_manifest

    _, root = baselined
    run = write_run(tmp_path / "run")
    report = check_dir(run, root, "ci")  # no manifest: the default grid is expected
    assert len(report.missing) == len(default_cells()) - len(CELLS) and not report.ok
    assert "block:16x16:0.9@bsr_cpp" in DEFAULT_SCHEMES and "random:0.9@csr" in DEFAULT_SCHEMES
    write_manifest(run, BUDGETS["ci"], cells())  # the grid this run was asked for
    assert check_dir(run, root, "ci").ok


# --- machine classes ------------------------------------------------------------------------------------------

@pytest.fixture
def elsewhere(baselined, tmp_path):
    """Results from a machine class with no baselines of its own (an AVX-512 CPU, say)."""
    _, root = baselined
    return root, make_env("x86_64-othervendor-25-17-avx512-t2-00000000", kernel_variant="avx512",
                          vendor="OtherVendor", model="17")


def test_class_without_baselines_passes_unchanged_results_and_says_time_is_not_gated(elsewhere, tmp_path):
    root, env = elsewhere
    # time and peak memory far off: another machine; the rest unchanged
    run = write_run(tmp_path / "run", env=env, time_ratio_vs_dense=9.0, peak_memory_bytes=900 * MiB)
    report = gate_run(run, root)
    assert report.ok, report.lines()
    notes = [line for line in report.lines() if "has no baselines" in line]
    assert len(notes) == 1 and "time ratio and peak memory are reported, not gated" in notes[0]
    assert f"nearest class {HERE}" in notes[0] and "sparsebench baselines update --budget ci" in notes[0]
    assert any(line.startswith("REPORTED cnn random:0.5@csr time_ratio_vs_dense 9.000") for line in report.lines())


def test_class_without_baselines_still_fails_a_broken_mask_and_an_accuracy_drop(elsewhere, tmp_path):
    root, env = elsewhere
    run = write_run(tmp_path / "run", env=env)
    write_run(run, [("cnn", "random:0.5@csr")], env=env, realised_sparsity=0.1)  # pruned weights moved off zero
    write_run(run, [("cnn", "dense")], env=env, accuracy=0.7 - CROSS_MACHINE_ACCURACY_TOLERANCE - 0.01)
    report = gate_run(run, root)
    assert {(f.cell, f.metric) for f in report.failures} == {("cnn random:0.5@csr", "realised_sparsity"),
                                                             ("cnn dense", "accuracy")}
    # within the cross-machine tolerance is not a failure
    write_run(run, [("cnn", "dense")], env=env, accuracy=0.7 - CROSS_MACHINE_ACCURACY_TOLERANCE + 0.005)
    assert {f.metric for f in gate_run(run, root).failures} == {"realised_sparsity"}


def test_own_class_gates_time(baselined, tmp_path):
    _, root = baselined
    run = write_run(tmp_path / "run", time_ratio_vs_dense=9.0)
    assert {f.metric for f in gate_run(run, root).failures} == {"time_ratio_vs_dense"}


def test_nearest_class_prefers_cpu_arch_then_variant_vendor_threads_torch():
    from factories import make_fingerprint

    from sparsebench.gate import nearest_class

    fp = make_fingerprint()
    known = {"a-arm": make_fingerprint(arch="aarch64", kernel_variant="avx2", vendor="TestVendor"),
             "b-avx512": make_fingerprint(kernel_variant="avx512", vendor="TestVendor"),
             "c-avx2-othervendor": make_fingerprint(vendor="Other"),
             "d-avx2-4threads": make_fingerprint(threads=4)}
    assert nearest_class(fp, known) == "d-avx2-4threads"  # arch, variant and vendor match; threads do not
    del known["d-avx2-4threads"]
    assert nearest_class(fp, known) == "c-avx2-othervendor"
    del known["c-avx2-othervendor"]
    assert nearest_class(fp, known) == "b-avx512"  # same CPU arch beats same variant on another arch
    assert nearest_class(fp, {}) is None


def test_results_from_two_classes_are_one_error(baselined, tmp_path):
    _, root = baselined
    run = write_run(tmp_path / "run")
    write_run(run, [("cnn", "dense")], env=make_env("another-class"))
    report = gate_run(run, root)
    assert not report.ok and any("several machine classes" in e for e in report.errors)


def test_old_layout_files_outside_class_dirs_are_ignored(baselined, tmp_path):
    run, root = baselined
    old = root / "ci" / "cnn" / "dense.json"  # baselines/<budget>/<arch>/<slug>.json, schema 1
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text(json.dumps({"schema_version": 1, "metrics": {}}))
    assert gate_run(run, root).ok
    (tmp_path / "fresh" / "ci" / "cnn").mkdir(parents=True)
    (tmp_path / "fresh" / "ci" / "cnn" / "dense.json").write_text("{}")
    report = gate_run(run, tmp_path / "fresh")
    assert not report.ok and any("no baselines for budget 'ci'" in e for e in report.errors)
