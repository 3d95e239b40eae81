"""``sparsebench study`` end to end on tiny data: the smoke study, resume, unusable documents, bad input."""

import json
import os
import re
import shutil

import pytest

from sparsebench import kernels
from sparsebench.cli import main
from sparsebench.representations.sparseprop import sparseprop_unavailable_reason
from sparsebench.study import documents, driver
from sparsebench.study.command import add_study_parser  # noqa: F401  (the command line's own entry)
from sparsebench.study.plots import PLOTS
from sparsebench.study.points import COST_BUDGETS, DEFAULT_LEVELS, Sweep

# one cost point and three accuracy points: enough to see what is measured again and what is kept
TINY = ["--budget", "smoke", "--archs", "cnn", "--patterns", "block:4x4", "--levels", "0.9",
        "--representations", "bsr_cpp", "--quiet"]


@pytest.fixture(scope="module")
def smoke_study(tiny_data_dir, tmp_path_factory):
    """`sparsebench study --budget smoke` (its whole default sweep), once for the module."""
    out = tmp_path_factory.mktemp("study")
    assert main(["study", "--budget", "smoke", "--out", str(out), "--data-dir", str(tiny_data_dir), "--quiet"]) == 0
    return out


def unavailable_here(point) -> str | None:
    """Why ``point`` is skipped on this machine (None: it is measured). On a CPU our bsr_cpp kernels can be
    missing (no compiler, a failed smoke test), and the peer where it is not installed; semi, CUDA only,
    is not among the study's."""
    if point.kind == "cost" and point.scheme.representation == "bsr_cpp" and not kernels.available():
        return "bsr_cpp kernels unavailable here"
    if point.kind == "cost" and point.scheme.representation == "sparseprop" and sparseprop_unavailable_reason():
        return "SparseProp is not importable"
    return None


def test_smoke_study_writes_every_point_the_report_and_the_plots(smoke_study):
    sweep = Sweep(budget="smoke", sizes=COST_BUDGETS["smoke"], levels=DEFAULT_LEVELS["smoke"])
    points = driver.study_points(sweep)
    assert {p.kind for p in points} == {"accuracy", "cost"}
    assert sorted(smoke_study.rglob("*.json")) == sorted(p.path(smoke_study) for p in points)  # nothing else
    docs = {p.key: documents.read(p.path(smoke_study), p) for p in points}  # every document there and valid
    skipped = {key: doc["reason"] for key, doc in docs.items() if doc["status"] != "ok"}
    expected = {p.key: why for p in points if (why := unavailable_here(p))}
    assert set(skipped) == set(expected)  # exactly the points this machine cannot run, each with its reason
    for key, why in expected.items():
        assert why in skipped[key], (key, skipped[key])
    if any("bsr_cpp" in why for why in expected.values()) and os.environ.get("SPARSEBENCH_REQUIRE_KERNELS") == "1":
        pytest.fail(f"sparse kernels unavailable: {kernels.unavailable_reason()}")
    text = (smoke_study / "STUDY.md").read_text()
    for heading in ("## In a sentence", "## Break-even sparsity", "## Accuracy", "## Time to accuracy",
                    "## Pareto fronts", "## Peak memory against dense", "## Cost per point"):
        assert heading in text
    assert "`sparsebench study --out " in text and "--budget smoke" in text  # the command that regenerates it
    assert "on this machine, block 16x16 at 90% (auto)" in text
    assert "CNN 64-128-256, fc 512, batch 16" in text  # the model and batch of every number
    assert "| cnn         | smoke  | block:16x16 |" in text  # a break-even row
    for plot in PLOTS:
        assert (smoke_study / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plot})" in text
    assert not re.search(r"issue \d|Deliver \d| min\b|minutes|hours?\b", text)  # numbers and findings only
    for key, why in skipped.items():
        assert f"- {key}: {why}" in text  # a point not measured is named, with its reason


def test_time_to_accuracy_end_to_end_with_a_pattern_that_never_gets_there(tiny_data_dir, tmp_path, monkeypatch):
    """A smoke study in which the sparse model cannot learn (its learning rate is 0): dense reaches its own
    targets at 1x its time, the sparse pattern is "not reached", in the table and in its sentence."""
    from sparsebench.train import CellRun

    real_fresh = CellRun.fresh

    def frozen_if_sparse(run):
        real_fresh(run)
        if run.cell.scheme.pattern.sparse:
            for group in run.ready.optimizer.param_groups:
                group["lr"] = 0.0

    monkeypatch.setattr(CellRun, "fresh", frozen_if_sparse)
    out = tmp_path / "study"
    assert main(["study", "--budget", "smoke", "--archs", "cnn", "--patterns", "random", "--levels", "0.9",
                 "--representations", "auto", "--out", str(out), "--data-dir", str(tiny_data_dir), "--quiet"]) == 0
    dense = json.loads((out / "accuracy/smoke/cnn/dense-seed0.json").read_text())["value"]["result"]
    points = dense["curve"]["points"]
    assert points[0]["step"] == 0 and points[-1]["step"] == dense["steps"] and len(points) > 2
    assert points[-1]["accuracy"] > points[0]["accuracy"] + 0.03  # dense learns: a target above where it began
    text = (out / "STUDY.md").read_text()
    section = text.split("## Time to accuracy", 1)[1].split("\n## ", 1)[0]
    dense_row = next(line for line in section.splitlines() if line.startswith("| cnn") and "| dense" in line)
    sparse_row = next(line for line in section.splitlines() if line.startswith("| cnn") and "random:0.9" in line)
    assert "1.00" in dense_row and sparse_row.count("not reached") == 2
    assert "never reaches dense's final accuracy minus 1 point" in text  # the sentence says it too
    assert "![accuracy vs training time](accuracy_vs_time.png)" in text


def test_the_method_comparison_end_to_end(tiny_data_dir, tmp_path):
    """A smoke study with masks chosen during training: each method is trained once with its schedule, its
    document names its timing, and STUDY.md compares it with its static pattern, update cost included."""
    out = tmp_path / "study"
    assert main(["study", "--budget", "smoke", "--archs", "transformer", "--patterns", "random", "magnitude",
                 "--levels", "0.9", "--methods", "magnitude/gmp", "random/rigl/erk", "--only", "accuracy",
                 "--out", str(out), "--data-dir", str(tiny_data_dir), "--quiet"]) == 0
    doc = json.loads((out / "accuracy/smoke/transformer/random-0.9-rigl-erk-seed0.json").read_text())
    assert doc["point"]["timing"] == "/rigl/erk" and doc["point"]["training_scheme"] == "random:0.9/rigl/erk@auto"
    updates = doc["value"]["result"]["mask_updates"]
    assert updates["updates"] >= 1 and updates["dense_grad_s"] > 0
    gmp = json.loads((out / "accuracy/smoke/transformer/magnitude-0.9-gmp-seed0.json").read_text())
    assert gmp["value"]["result"]["mask_updates"]["switches"]
    text = (out / "STUDY.md").read_text()
    section = text.split("## When the mask is chosen", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| transformer")]
    methods = {line.split("|")[3].strip() for line in rows}
    assert methods == {"random:0.9", "magnitude:0.9", "magnitude:0.9/gmp", "random:0.9/rigl/erk"}
    assert "transformer (" in section and "soonest" in section or "ends most accurate" in section
    # the static tables keep only the static patterns
    accuracy = text.split("## Accuracy", 1)[1].split("\n## ", 1)[0]
    assert "/gmp" not in accuracy and "/rigl" not in accuracy


def _count_calls(monkeypatch):
    calls = []
    for name in ("measure_accuracy", "measure_cost"):
        real = getattr(driver, name)

        def counted(*args, _real=real, **kwargs):
            calls.append(str(kwargs.get("scheme")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(driver, name, counted)
    return calls


def _tiny(out, data, *extra):
    return main(["study", "--out", str(out), "--data-dir", str(data), *TINY, *extra])


def test_an_interrupted_study_resumes_and_force_reruns(tiny_data_dir, tmp_path, monkeypatch):
    out = tmp_path / "study"
    assert _tiny(out, tiny_data_dir) == 0
    docs = sorted(out.rglob("*.json"))
    assert len(docs) == 3  # accuracy: dense, block:4x4:0.9; cost: block:4x4:0.9@bsr_cpp
    cost_doc = out / "cost/smoke/cnn/block4x4-0.9-bsr_cpp.json"
    calls = _count_calls(monkeypatch)
    assert _tiny(out, tiny_data_dir) == 0
    assert calls == []  # everything kept
    cost_doc.unlink()  # as if the study had been killed before this point
    assert _tiny(out, tiny_data_dir) == 0
    assert calls == ["block:4x4:0.9@bsr_cpp"]
    calls.clear()
    assert _tiny(out, tiny_data_dir, "--force") == 0
    assert sorted(calls) == ["block:4x4:0.9@auto", "block:4x4:0.9@bsr_cpp", "dense"]  # accuracy trains @auto


def test_unusable_documents_are_named_and_measured_again(tiny_data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    assert _tiny(out, tiny_data_dir) == 0
    cost_doc = out / "cost/smoke/cnn/block4x4-0.9-bsr_cpp.json"
    dense_doc = out / "accuracy/smoke/cnn/dense-seed0.json"
    sparse_doc = out / "accuracy/smoke/cnn/block4x4-0.9-seed0.json"
    good = json.loads(cost_doc.read_text())
    if good["status"] != "ok":  # the cases below damage a measured point's numbers
        pytest.skip(good["reason"])
    calls = _count_calls(monkeypatch)
    cases = {
        "not readable as JSON": (cost_doc, lambda: cost_doc.write_text('{"study_schema": 1, "key": ')),
        "describes another point": (sparse_doc, lambda: shutil.copy(dense_doc, sparse_doc)),
        "other settings": (cost_doc, lambda: cost_doc.write_text(json.dumps(
            good | {"settings": good["settings"] | {"measurement": {"warmup": 0}}}))),
        "its cost result is invalid .value: key 'speedup' must be > 0": (cost_doc, lambda: cost_doc.write_text(
            json.dumps(good | {"value": good["value"] | {"speedup": -1}}))),
        "key 'time_s.scheme.total' must be a number, got None": (cost_doc, lambda: cost_doc.write_text(json.dumps(
            good | {"value": good["value"] | {"time_s": {"dense": good["value"]["time_s"]["dense"]}}}))),
        "unknown key 'speed'": (cost_doc, lambda: cost_doc.write_text(json.dumps(
            good | {"value": good["value"] | {"speed": 1.0}}))),
        "study_schema": (cost_doc, lambda: cost_doc.write_text(json.dumps(good | {"study_schema": 99}))),
        "its result document is invalid": (dense_doc, lambda: dense_doc.write_text(json.dumps(
            json.loads(dense_doc.read_text()) | {"value": {"status": "ok", "result": {"accuracy": 2}}}))),
    }
    for why, (path, damage) in cases.items():
        damage()
        calls.clear()
        capsys.readouterr()
        assert _tiny(out, tiny_data_dir, "--quiet") == 0
        assert len(calls) == 1, why  # that point, and only it, measured again
        assert documents.read(path, _point_of(path, out)) is not None, why
        damage()
        with pytest.raises(documents.Unusable, match=why):
            documents.read(path, _point_of(path, out))
        assert _tiny(out, tiny_data_dir, "--quiet") == 0  # repaired for the next case


def test_an_accuracy_point_ignores_the_timing_pairs_but_not_its_training(tiny_data_dir, tmp_path):
    """The budget's timing pairs and memory steps shape a grid Result's time ratio and peak, which the study
    reads from cost points only: an accuracy document made with another count stays usable; a cost document
    made with another count, or an accuracy document made with other training, does not."""
    out = tmp_path / "study"
    assert _tiny(out, tiny_data_dir) == 0
    acc_doc, cost_doc = out / "accuracy/smoke/cnn/dense-seed0.json", out / "cost/smoke/cnn/block4x4-0.9-bsr_cpp.json"

    def with_budget(path, **changes):
        doc = json.loads(path.read_text())
        doc["settings"]["budget"] |= changes
        path.write_text(json.dumps(doc))

    with_budget(acc_doc, timing_steps=99, memory_steps=7)
    assert documents.read(acc_doc, _point_of(acc_doc, out))["settings"]["budget"]["timing_steps"] == 99
    with_budget(acc_doc, seconds=99.0)  # a wall-clock budget trains another model
    with pytest.raises(documents.Unusable, match="other settings"):
        documents.read(acc_doc, _point_of(acc_doc, out))
    with_budget(cost_doc, timing_steps=99)
    with pytest.raises(documents.Unusable, match="other settings"):
        documents.read(cost_doc, _point_of(cost_doc, out))


def _point_of(path, out):
    sweep = Sweep(archs=("cnn",), families=("block:4x4",), levels=(0.9,), fixed=(), representations=("bsr_cpp",),
                  budget="smoke", sizes=("smoke",))
    return next(p for p in driver.study_points(sweep) if p.path(out) == path)


def test_progress_names_an_unusable_document(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "study"
    assert _tiny(out, tiny_data_dir) == 0
    (out / "cost/smoke/cnn/block4x4-0.9-bsr_cpp.json").write_text("garbage")
    capsys.readouterr()
    argv = ["study", "--out", str(out), "--data-dir", str(tiny_data_dir), *[a for a in TINY if a != "--quiet"]]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "cost/smoke/cnn/block4x4-0.9-bsr_cpp: document" in err and "not readable as JSON" in err
    assert "2 kept from an earlier run" in err and "[1/1] cost/smoke/cnn/block4x4-0.9-bsr_cpp" in err


@pytest.mark.parametrize("argv, message", [
    (["--levels", "1.5"], "a sparsity level must be in (0, 1)"),
    (["--levels", "x"], "is not a number"),
    (["--patterns", "random:0.5"], "give a family without its sparsity"),
    (["--patterns", "blob"], "is not a pattern family"),
    (["--patterns", "random@csr"], "is not a pattern family"),
    (["--seeds", "0"], "must be in [1, 100]"),
    (["--budget", "full"], "invalid choice"),
    (["--representations", "semi"], "invalid choice"),
    (["--methods", "random/gmp"], "prunes by magnitude"),
    (["--methods", "random"], "FAMILY/SCHEDULE"),
    (["--report-only", "--out", "{tmp}/nowhere/at/all"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert main(["study", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_data_fails_before_any_work(tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "none"), *TINY]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(tmp_path / "none") in err
    assert not list((tmp_path / "out").rglob("*.json"))
