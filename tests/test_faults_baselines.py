"""Fault injection on the baselines (issue 13): a killed `baselines update` at every file operation,
untrusted fields that would become paths, impossible values and mismatched runs.

The kill test forks (cheap: no new interpreter, no torch import) and the child SIGKILLs (or SIGTERMs)
itself at the k-th file operation of the update, for every k until the update runs to its end."""

import json
import os
import pathlib
import shutil
import signal

import pytest
from factories import MACHINE_CLASS, make_doc, make_result

from sparsebench.cli import main
from sparsebench.gate import BaselineError, check_dir, known_classes, load_baseline, update_baselines
from sparsebench.results import write_json_atomic, write_result

CELLS = [("cnn", "dense"), ("cnn", "random:0.5@csr"), ("transformer", "dense")]


def write_run(directory, pairs=CELLS, **overrides):
    for arch, scheme in pairs:
        write_result(directory, make_result(arch, scheme, **overrides))
    return directory


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
    assert set(old.values()) == {0.5} and len(old) == len(CELLS)
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


def test_old_style_orphan_temp_files_are_cleaned_on_the_next_read(tmp_path):
    root = tmp_path / "baselines"
    update_baselines(write_run(tmp_path / "run"), root, "ci")
    orphan = root / "ci" / MACHINE_CLASS / "cnn" / ".dense.json.abc123.tmp"
    orphan.write_text("{half")
    check_dir(tmp_path / "run", root, "ci")
    assert not orphan.exists()


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


@pytest.mark.parametrize("field, overrides, words", [
    ("seed", {"seed": 1}, "seed differs"),
    ("steps", {"budget_settings": {"arch_steps": 20}}, "steps differs"),
    ("model", {"model": {"d_model": 64}}, "model sizes.d_model differs"),
    ("budget", {"budget_settings": {"timing_steps": 9}}, "budget_settings.timing_steps differs"),
])
def test_update_refuses_runs_with_other_settings_naming_the_field(tmp_path, field, overrides, words):
    a = write_run(tmp_path / "a")
    b = tmp_path / "b"
    for arch, scheme in CELLS:
        write_result(b, make_result(arch, scheme, **(overrides if arch == "cnn" and scheme == "dense" else {})))
    with pytest.raises(BaselineError, match=words) as e:
        update_baselines([a, b], tmp_path / "baselines", "ci")
    assert "\n" not in str(e.value)


def test_update_refuses_wall_clock_runs(tmp_path):
    run = write_run(tmp_path / "run", budget_settings={"seconds": 30.0})
    with pytest.raises(BaselineError, match="--seconds 30.0"):
        update_baselines(run, tmp_path / "baselines", "ci")
