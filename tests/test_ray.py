"""The Ray executor on a local Ray instance with 2 CPUs, started by this module:

1. a smoke grid runs through Ray and writes the same layout as a serial run;
2. a worker killed mid-cell (SIGKILL after training, before measuring) is retried once; a cell whose worker
   dies every time becomes an ``error`` document with the reason, the rest of the grid goes on, and a rerun
   resumes (finished cells kept, the error cell run again);
3. the same grid run serially in this process gives the same accuracy, final loss, realised sparsity and
   model size cell for cell. Time ratios are measured by both and printed side by side, not compared: a
   wall-clock figure from a tiny cell on a shared 2-core runner is no test (the gate's own time check lives
   in test_gate, against a slowdown far past its tolerance).

Ray is an optional extra: without it these tests skip (``nox -s tests``), except under
``SPARSEBENCH_REQUIRE_RAY=1`` (``nox -s ray``), where a missing Ray fails. The one-line message for a
missing Ray is tested everywhere.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from sparsebench import grid
from sparsebench.budgets import BUDGETS
from sparsebench.cell import cells
from sparsebench.cli import main
from sparsebench.results import load_results, read_result

REQUIRE_RAY = os.environ.get("SPARSEBENCH_REQUIRE_RAY") == "1"
HAVE_RAY = importlib.util.find_spec("ray") is not None
BUDGET = BUDGETS["smoke"]
GRID = cells(["cnn", "transformer"], ["dense", "random:0.5@csr", "block:16x16:0.9@bsr_cpp", "nm:2:4"])
SAME = ("accuracy", "final_loss", "realised_sparsity", "model_size_bytes")


@pytest.fixture(scope="module")
def ray_instance():
    if not HAVE_RAY:
        if REQUIRE_RAY:
            pytest.fail("SPARSEBENCH_REQUIRE_RAY=1 but ray is not importable: pip install 'sparsebench[ray]'",
                        pytrace=False)
        pytest.skip("ray is not installed (optional extra: pip install 'sparsebench[ray]'; nox -s ray runs these)")
    import ray

    # the test-only cell functions below travel to the workers by value (this module is not importable there)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        yield ray
    finally:
        ray.shutdown()


def ray_executor(**options):
    from sparsebench.executors import RayExecutor

    return RayExecutor(poll_s=5, **options)


def as_json(result) -> dict:
    return json.loads(json.dumps(result.to_dict()))


def by_cell(results):
    return {(r.arch, r.scheme): r for r in results}


@pytest.fixture(scope="module")
def ray_and_serial(ray_instance, tiny_settings, tmp_path_factory):
    """The grid through Ray (2-CPU tasks on 2 CPUs: one at a time), then serially in this process."""
    root = tmp_path_factory.mktemp("ray-vs-serial")
    ray_results = grid.run_grid(GRID, BUDGET, root / "ray", tiny_settings, executor=ray_executor(progress=False))
    serial = grid.run_grid(GRID, BUDGET, root / "serial", tiny_settings)
    return root, ray_results, serial


def test_smoke_grid_through_ray(ray_and_serial):
    root, ray_results, _ = ray_and_serial
    files = sorted(p.relative_to(root / "ray") for p in (root / "ray").rglob("*.json"))
    assert files == sorted([Path("grid.json")] + [c.path(".") for c in GRID])  # the serial layout
    assert [r.cell for r in ray_results] == [str(c) for c in GRID]
    on_disk = by_cell(load_results(root / "ray"))
    for r in ray_results:
        assert r.status in ("ok", "skipped"), (r.cell, r.status, r.reason)
        assert as_json(on_disk[(r.arch, r.scheme)]) == as_json(r)  # the driver wrote what the task returned
        if r.ok:
            assert r.env["threads"] == grid.TASK_CPUS  # the task's CPUs became torch's threads
    assert any(r.ok for r in ray_results)


def test_ray_gives_the_serial_results_cell_for_cell(ray_and_serial):
    _, ray_results, serial = ray_and_serial
    rays, serials = by_cell(ray_results), by_cell(serial)
    assert rays.keys() == serials.keys()
    lines = []
    for key, s in serials.items():
        r = rays[key]
        assert r.status == s.status, key
        if not s.ok:
            continue
        assert r.machine_class == s.machine_class, key  # same threads, kernels, torch: one machine class
        for metric in SAME:
            assert getattr(r, metric) == getattr(s, metric), (key, metric, getattr(r, metric), getattr(s, metric))
        # the ray task timed its own steps (interleaved with dense in the worker, as serially)
        assert len(r.step_times_s["scheme"]) == len(s.step_times_s["scheme"]) == BUDGET.timing_steps, key
        assert r.time_ratio_vs_dense > 0, key
        lines.append(f"{s.cell}: time x dense serial {s.time_ratio_vs_dense:.3f}, ray {r.time_ratio_vs_dense:.3f}")
    print("\n".join(lines))


def dies_mid_cell(cell, budget, settings, *, marker_dir, die):
    """A grid cell function for tests: cells named in ``die`` lose their worker (SIGKILL) after training and
    before measuring, on the first attempt ("once") or on every attempt ("always"); each attempt leaves a
    line in ``marker_dir/<cell id>.attempts``. Other cells run as usual."""
    marker = Path(marker_dir) / f"{cell.id}.attempts"
    with marker.open("a") as f:
        f.write(f"{os.getpid()}\n")
    attempt = len(marker.read_text().splitlines())
    if die.get(cell.id) == "always" or (die.get(cell.id) == "once" and attempt == 1):
        def train_then_die(run):
            run.fresh()
            run.train()
            os.kill(os.getpid(), signal.SIGKILL)

        return grid.run_one(cell, budget, None, settings, train=train_then_die)
    return grid.run_cell(cell, budget, settings)


def test_killed_worker_is_retried_then_recorded_as_error_and_a_rerun_resumes(ray_instance, tiny_settings, tmp_path,
                                                                               capsys):
    cells3 = cells(["cnn"], ["dense", "random:0.5", "nm:2:4"])
    out, markers = tmp_path / "out", tmp_path / "markers"
    markers.mkdir()
    fn = functools.partial(dies_mid_cell, marker_dir=str(markers),
                           die={"cnn-dense": "once", "cnn-random-0.5-masked": "always"})
    settings = tiny_settings.but(progress=True)  # the driver's progress lines are checked below
    results = grid.run_grid(cells3, BUDGETS["smoke"], out, settings, executor=ray_executor(), cell_fn=fn)
    err = capsys.readouterr().err
    attempts = {p.name.removesuffix(".attempts"): len(p.read_text().splitlines()) for p in markers.iterdir()}
    assert attempts == {"cnn-dense": 2, "cnn-random-0.5-masked": 2, "cnn-nm2of4-masked": 1}
    dense, random, nm = results
    assert dense.ok and nm.ok  # retried after its worker died; the other cell never noticed
    assert "cnn-dense: attempt 1 failed (WorkerCrashedError" in err and "cnn-dense: done on attempt 2" in err
    assert random.status == "error" and "after 2 attempts" in random.reason
    assert random.reason.startswith("WorkerCrashedError") and "\n" not in random.reason
    assert "1 failed" in err
    doc = read_result(cells3[1].path(out))  # the error document: strict schema, names its cell and reason
    assert (doc.status, doc.arch, doc.scheme, doc.reason) == ("error", "cnn", "random:0.5", random.reason)

    # the rerun keeps the finished cells and runs the error cell again, this time without a fault
    rerun = grid.run_grid(cells3, BUDGETS["smoke"], out, settings, executor=ray_executor(),
                          cell_fn=functools.partial(dies_mid_cell, marker_dir=str(markers), die={}))
    err = capsys.readouterr().err
    assert err.count("kept from an earlier run") == 2 and "cnn random:0.5: kept" not in err
    assert len((markers / "cnn-random-0.5-masked.attempts").read_text().splitlines()) == 3
    assert all(r.ok for r in rerun) and as_json(rerun[0]) == as_json(dense) and as_json(rerun[2]) == as_json(nm)
    assert read_result(cells3[1].path(out)).ok


def test_without_ray_the_cli_says_how_to_install_it(tiny_data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as where it is not installed
    out = tmp_path / "out"
    assert main(["grid", "--executor", "ray", "--out", str(out), "--budget", "smoke", "--archs", "cnn",
                 "--schemes", "dense", "--data-dir", str(tiny_data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "pip install 'sparsebench[ray]'" in err, err
    assert not list(out.rglob("*.json"))


def test_address_without_ray_executor_is_refused(tiny_data_dir, tmp_path, capsys):
    assert main(["grid", "--address", "head:6379", "--out", str(tmp_path / "out"), "--budget", "smoke",
                 "--archs", "cnn", "--schemes", "dense", "--data-dir", str(tiny_data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--executor ray" in err, err


def test_a_study_with_moving_masks_runs_through_ray(ray_instance, tiny_settings, tmp_path):
    """The study's sweep (static and scheduled accuracy points, and cost points) through Ray: every document
    written, each accuracy close to the serial run's (points train with `@auto`, which each process may resolve
    to another representation by timing, so not bit for bit), and the report built from what Ray measured."""
    from sparsebench.study.driver import run_study
    from sparsebench.study.points import Sweep
    from sparsebench.study.report import build_study_report

    sweep = Sweep(archs=("transformer",), families=("random",), levels=(0.9,), fixed=(), representations=("auto",),
                  budget="smoke", sizes=("smoke",), methods=("random/rigl",))
    through_ray = run_study(sweep, tmp_path / "ray", tiny_settings, executor=ray_executor(progress=False))
    serial = run_study(sweep, tmp_path / "serial", tiny_settings.but(progress=False))
    assert set(through_ray) == set(serial) and len(serial) == 4  # dense, random, random/rigl; one cost point
    assert all(doc["status"] == "ok" for doc in through_ray.values())
    for key, doc in serial.items():
        if doc["point"]["kind"] == "accuracy":
            ray_result, result = through_ray[key]["value"]["result"], doc["value"]["result"]
            assert ray_result["scheme"] == result["scheme"] and ray_result["steps"] == result["steps"], key
            assert abs(ray_result["accuracy"] - result["accuracy"]) <= 0.05, key
            assert (ray_result.get("mask_updates") is None) == (result.get("mask_updates") is None), key
    text = build_study_report(through_ray, [], tmp_path / "ray", "test").read_text()
    assert "## Time to accuracy" in text and "## When the mask is chosen" in text
