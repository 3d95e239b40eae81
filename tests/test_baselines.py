"""Baselines: their layout and loading, the tolerance rule, updating them from runs (refusing what would
make a wrong baseline), and the all-or-nothing swap of a class directory.

The kill test forks (cheap: no new interpreter, no torch import) and the child SIGKILLs (or SIGTERMs)
itself at the k-th file operation of the update, for every k until the update runs to its end."""

import json
import os
import pathlib
import shutil
import signal
import threading

import pytest
from factories import (
    MACHINE_CLASS,
    RUN_CELLS,
    ci_baseline_path,
    make_doc,
    make_env,
    make_fingerprint,
    make_result,
    run_cells,
    write_baselined_run,
    write_run,
)

from sparsebench import baselines
from sparsebench.atomic import locked
from sparsebench.baselines import (
    BaselineError,
    known_classes,
    load_baseline,
    nearest_class,
    tolerance_rule,
    update_baselines,
)
from sparsebench.cell import Cell
from sparsebench.cli import main
from sparsebench.gate import check_dir
from sparsebench.results import MiB, Result, write_json_atomic, write_result


@pytest.fixture
def baselined(tmp_path):
    return write_baselined_run(tmp_path)


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
    assert tolerance_rule("time_ratio_vs_dense", [2.0]) == pytest.approx(0.3)
    assert tolerance_rule("time_ratio_vs_dense", [1.7, 2.0, 2.2]) == pytest.approx(0.8)  # capped at 40% of 2.0
    assert tolerance_rule("time_ratio_vs_dense", [1.95, 2.0, 2.15]) == pytest.approx(0.4)  # 2 x spread 0.2
    assert tolerance_rule("accuracy", [0.60, 0.64]) == pytest.approx(0.12)  # every other metric: 3 x spread


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


# --- load_baseline --------------------------------------------------------------------------------------------

def test_missing_corrupt_or_old_baseline_names_file_and_command(baselined):
    _, root = baselined
    path = ci_baseline_path(root, "cnn", "dense")
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
    path = ci_baseline_path(root, "cnn", "dense")
    doc = read(path)
    doc["metrics"]["accuracy"]["better"] = "lower"
    path.write_text(json.dumps(doc))
    with pytest.raises(BaselineError, match="better"):
        load_baseline(path)


@pytest.mark.parametrize("metric, value", [("accuracy", 7.5), ("peak_memory_bytes", -5),
                                           ("time_ratio_vs_dense", 0.0), ("realised_sparsity", 1.5)])
def test_impossible_baseline_values_are_refused(tmp_path, metric, value):
    root = tmp_path / "baselines"
    update_baselines(write_run(tmp_path / "run", [("cnn", "dense")]), root, "ci")
    path = root / "ci" / MACHINE_CLASS / "cnn" / "dense.json"
    doc = json.loads(path.read_text())
    doc["metrics"][metric]["value"] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(BaselineError, match=f"metric '{metric}' value must be"):
        load_baseline(path)


# --- machine classes ------------------------------------------------------------------------------------------

def test_nearest_class_prefers_cpu_arch_then_variant_vendor_threads_torch():
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


# --- update_baselines -----------------------------------------------------------------------------------------

def test_update_keeps_each_runs_time_interval(tmp_path):
    ci = [{"low": 1.4 + i / 100, "high": 1.6, "confidence": 0.95, "pairs": 30} for i in range(3)]
    runs = [write_run(tmp_path / f"run{i}", time_ratio_interval=ci[i]) for i in range(3)]
    update_baselines(runs, tmp_path / "b", "ci", expected_cells=run_cells())
    doc = read(ci_baseline_path(tmp_path / "b", "cnn", "block4x4-0.5-bsr"))
    assert doc["metrics"]["time_ratio_vs_dense"]["intervals"] == ci
    load_baseline(ci_baseline_path(tmp_path / "b", "cnn", "block4x4-0.5-bsr"))  # and it still reads


def test_update_writes_median_and_tolerance_from_runs(tmp_path):
    runs = [write_run(tmp_path / f"run{i}", accuracy=a) for i, a in enumerate((0.60, 0.62, 0.61))]
    lines = update_baselines(runs, tmp_path / "b", "ci", expected_cells=run_cells())
    doc = read(ci_baseline_path(tmp_path / "b", "cnn", "block4x4-0.5-bsr"))
    assert doc["scheme"] == "block:4x4:0.5@bsr" and doc["budget"] == "ci" and doc["made_from"]["runs"] == 3
    assert doc["machine_class"] == MACHINE_CLASS
    assert doc["metrics"]["accuracy"] == {"value": 0.61, "tolerance": pytest.approx(0.06), "better": "higher"}
    assert doc["metrics"]["time_ratio_vs_dense"] == {"value": 1.5, "tolerance": 0.225, "better": "lower",
                                                     "intervals": []}  # these made-up runs carry none
    assert doc["made_from"]["commit"] == "abc123"
    assert sum(line.startswith("new ") for line in lines) == len(RUN_CELLS)
    assert read(tmp_path / "b" / "ci" / MACHINE_CLASS / "machine.json")["fingerprint"] == make_env()["machine"]
    # a second update from a different run says what changed, old -> new
    lines = update_baselines(write_run(tmp_path / "run9", accuracy=0.7), tmp_path / "b", "ci")
    assert any("accuracy: 0.610 ± 0.060 -> 0.700 ± 0.030" in line for line in lines)
    assert not list((tmp_path / "b").rglob("*.tmp"))


def test_update_refuses_incomplete_or_red_runs(tmp_path):
    root = tmp_path / "b"
    incomplete = write_run(tmp_path / "part", RUN_CELLS[:2])
    with pytest.raises(BaselineError, match="incomplete.*block:4x4:0.5@bsr"):
        update_baselines(incomplete, root, "ci", expected_cells=run_cells())
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
                     expected_cells=run_cells([("cnn", "random:0.5@csr")]))
    assert sorted(p.name for p in (tmp_path / "b" / "ci").rglob("*.json")) == ["machine.json", "random-0.5-csr.json"]


def test_update_refuses_results_from_mixed_machine_classes(tmp_path):
    a = write_run(tmp_path / "a")
    b = write_run(tmp_path / "b", env=make_env("other-class", kernel_variant="avx512"))
    with pytest.raises(BaselineError) as e:
        update_baselines([a, b], tmp_path / "root", "ci")
    assert "env.machine_class differs" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "root").exists()


def test_update_warns_when_time_ratio_runs_are_too_noisy(tmp_path):
    runs = [write_run(tmp_path / f"run{i}", [("cnn", "random:0.5@csr")], time_ratio_vs_dense=r)
            for i, r in enumerate((1.5, 2.0, 2.5))]
    lines = update_baselines(runs, tmp_path / "b", "ci")
    assert any(line.startswith("warning: cnn random:0.5@csr time_ratio_vs_dense") for line in lines)
    doc = read(ci_baseline_path(tmp_path / "b", "cnn", "random-0.5-csr"))
    assert doc["metrics"]["time_ratio_vs_dense"]["tolerance"] == pytest.approx(0.8)
    assert doc["made_from"]["spread"]["time_ratio_vs_dense"] == pytest.approx(1.0)


@pytest.mark.parametrize("field, overrides, words", [
    ("seed", {"seed": 1}, "seed differs"),
    ("steps", {"budget_settings": {"arch_steps": 20}}, "steps differs"),
    ("model", {"model": {"d_model": 64}}, "model sizes.d_model differs"),
    ("budget", {"budget_settings": {"timing_steps": 9}}, "budget_settings.timing_steps differs"),
])
def test_update_refuses_runs_with_other_settings_naming_the_field(tmp_path, field, overrides, words):
    a = write_run(tmp_path / "a")
    b = tmp_path / "b"
    for arch, scheme in RUN_CELLS:
        write_result(b, make_result(arch, scheme, **(overrides if arch == "cnn" and scheme == "dense" else {})))
    with pytest.raises(BaselineError, match=words) as e:
        update_baselines([a, b], tmp_path / "baselines", "ci")
    assert "\n" not in str(e.value)


def test_update_refuses_wall_clock_runs(tmp_path):
    run = write_run(tmp_path / "run", budget_settings={"seconds": 30.0})
    with pytest.raises(BaselineError, match="--seconds 30.0"):
        update_baselines(run, tmp_path / "baselines", "ci")


# --- untrusted fields and impossible values -----------------------------------------------------------------

def test_a_slug_that_disagrees_with_its_scheme_is_refused_and_never_becomes_a_path(tmp_path, capsys):
    run = tmp_path / "run"
    write_run(run)
    evil = make_doc("cnn", "random:0.5@csr", slug="../../../outside")
    write_json_atomic(run / "cnn" / "evil.json", evil)
    root = tmp_path / "repo" / "baselines"
    assert main(["baselines", "update", str(run), "--budget", "ci", "--baselines", str(root),
                 "--archs", "cnn", "--schemes", "dense"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "slug' is '../../../outside'" in err and "random-0.5-csr" in err
    assert not (tmp_path / "outside.json").exists() and not (tmp_path / "repo" / "outside.json").exists()
    assert not root.exists()
    assert main(["check", str(run), "--budget", "ci", "--baselines", str(root)]) == 1
    assert "slug' is '../../../outside'" in capsys.readouterr().out


@pytest.mark.parametrize("field, value", [("arch", "../x"), ("scheme", "random:0.5/../../x")])
def test_unknown_arch_or_unparsable_scheme_is_refused(tmp_path, field, value):
    run = tmp_path / "run"
    write_json_atomic(run / "cnn" / "dense.json", make_doc() | {field: value})
    with pytest.raises(BaselineError, match=f"key '{field}'"):
        update_baselines(run, tmp_path / "baselines", "ci")


def test_machine_class_from_a_file_must_be_file_safe(tmp_path):
    run = tmp_path / "run"
    env = make_doc()["env"] | {"machine_class": "../../evil"}
    write_json_atomic(run / "cnn" / "dense.json", make_doc(env=env))
    with pytest.raises(BaselineError, match="env.machine_class' must be a file-safe name"):
        update_baselines(run, tmp_path / "baselines", "ci")
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("field, value", [("peak_memory_bytes", -5), ("accuracy", 7.5)])
def test_impossible_results_are_refused_by_check_and_update(tmp_path, capsys, field, value):
    root = tmp_path / "baselines"
    update_baselines(write_run(tmp_path / "good", [("cnn", "dense")]), root, "ci")
    run = tmp_path / "run"
    write_json_atomic(run / "cnn" / "dense.json", make_doc(**{field: value}))
    assert main(["check", str(run), "--budget", "ci", "--baselines", str(root)]) == 1
    assert f"key '{field}' must be" in capsys.readouterr().out
    assert main(["baselines", "update", str(run), "--budget", "ci", "--baselines", str(root),
                 "--archs", "cnn", "--schemes", "dense"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"key '{field}' must be" in err


# --- all-or-nothing class directories -------------------------------------------------------------------------

def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("module, name, error", [
    (baselines, "write_json_temp", "disk full"),  # the third temp file of the new class directory
    (os, "replace", "simulated crash"),  # the third rename, inside the new class directory
], ids=["writing temps", "renaming"])
def test_a_failure_during_an_update_leaves_the_old_baselines(baselined, tmp_path, monkeypatch, module, name, error):
    _, root = baselined
    before, new = snapshot(root), write_run(tmp_path / "new", accuracy=0.9)
    real, calls = getattr(module, name), []

    def flaky(*args):
        calls.append(args)
        if len(calls) == 3:
            raise OSError(error)
        return real(*args)

    monkeypatch.setattr(module, name, flaky)
    with pytest.raises(OSError, match=error):
        update_baselines(new, root, "ci")
    assert len(calls) == 3
    assert snapshot(root) == before  # every baseline is the old one, and no temp file is left
    assert not [p for p in (root / "ci").iterdir() if p.name.startswith(".")]
    update_baselines(new, root, "ci")  # and the same update goes through once the crash is gone


def accuracies(root):
    """Every live baseline's accuracy value, read as the gate reads them (recovery included)."""
    (machine_class,) = known_classes(root, "ci")
    found = {}
    for path in sorted((root / "ci" / machine_class).glob("*/*.json")):
        found[f"{path.parent.name}/{path.name}"] = load_baseline(path)["metrics"]["accuracy"]["value"]
    return found


def hidden(root):
    """Anything an update may leave behind: work directories and temp files."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


FILE_OPS = [(os, "replace"), (os, "rename"), (os, "mkdir"), (os, "unlink"), (os, "rmdir"), (os, "fsync"),
            (os, "open"), (pathlib.Path, "write_text"), (shutil, "copy2")]


def update_killed_at(k, sig, new, root):
    """Fork; the child runs the update and kills itself with ``sig`` at its k-th file operation.
    Returns True when the child finished the update before reaching k."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            count = [0]

            def counted(real):
                def op(*args, **kwargs):
                    count[0] += 1
                    if count[0] == k:
                        os.kill(os.getpid(), sig)
                    return real(*args, **kwargs)
                return op

            for owner, name in FILE_OPS:
                setattr(owner, name, counted(getattr(owner, name)))
            update_baselines(new, root, "ci")
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == sig
        return False
    assert os.WEXITSTATUS(status) == 0, "the update failed instead of being killed or finishing"
    return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_update_killed_at_every_file_operation_leaves_all_old_or_all_new(tmp_path, sig):
    old_run, new_run = write_run(tmp_path / "old", accuracy=0.5), write_run(tmp_path / "new", accuracy=0.75)
    pristine = tmp_path / "pristine"
    update_baselines(old_run, pristine, "ci")
    old = accuracies(pristine)
    assert set(old.values()) == {0.5} and len(old) == len(RUN_CELLS)
    new = dict.fromkeys(old, 0.75)
    outcomes = set()
    for k in range(1, 500):
        root = tmp_path / f"k{k}"
        shutil.copytree(pristine, root)
        finished = update_killed_at(k, sig, new_run, root)
        seen = accuracies(root)  # the next command that reads baselines recovers first
        assert seen in (old, new), f"killed at file operation {k}: a mix of old and new baselines {seen}"
        assert hidden(root) == [], f"killed at file operation {k}: left {hidden(root)}"
        outcomes.add("new" if seen == new else "old")
        # and the interrupted update can simply be run again
        update_baselines(new_run, root, "ci")
        assert accuracies(root) == new and hidden(root) == []
        shutil.rmtree(root)
        if finished:
            break
    else:
        pytest.fail("the update never finished")
    assert outcomes == {"old", "new"}  # kills before the decision roll back, after it roll forward
    assert k > 10  # the counter really saw the update's file operations


def test_an_update_waits_for_the_budget_lock_and_leaves_no_lock_file(baselined, tmp_path):
    _, root = baselined
    before, new = snapshot(root), write_run(tmp_path / "new", accuracy=0.75)
    with locked(root / "ci"):  # another update or recovery of the budget is at work
        update = threading.Thread(target=update_baselines, args=(new, root, "ci"))
        update.start()
        update.join(0.5)
        assert update.is_alive() and snapshot(root) == before  # waiting, nothing written yet
    update.join(30)
    assert not update.is_alive() and set(accuracies(root).values()) == {0.75}
    assert [p.name for p in (root / "ci").iterdir()] == [MACHINE_CLASS] and hidden(root) == []


def test_old_style_orphan_temp_files_are_cleaned_on_the_next_read(tmp_path):
    root = tmp_path / "baselines"
    update_baselines(write_run(tmp_path / "run"), root, "ci")
    orphan = root / "ci" / MACHINE_CLASS / "cnn" / ".dense.json.abc123.tmp"
    orphan.write_text("{half")
    check_dir(tmp_path / "run", root, "ci")
    assert not orphan.exists()
