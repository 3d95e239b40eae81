"""Learning curves: the fixed slice, when a curve is evaluated, what a curve document must hold, and time to
accuracy (curves.py); and the curve of a real smoke-budget cell."""

import pytest
import torch

from sparsebench.curves import CurveRecorder, check_curve, slice_rows, time_to_accuracy


def test_the_slice_is_fixed_whatever_the_run_seed():
    torch.manual_seed(0)
    a = slice_rows(100, 10)
    torch.manual_seed(123)
    assert torch.equal(a, slice_rows(100, 10))  # not the global generator
    assert a.tolist() == sorted(set(a.tolist())) and len(a) == 10 and int(a.max()) < 100
    assert len(slice_rows(5, 10)) == 5  # never more rows than the test split has
    with pytest.raises(ValueError, match="at least one row"):
        slice_rows(100, 0)


def _record(curve, steps):
    for step in range(1, steps + 1):
        curve.saw(torch.tensor(float(step)))
        if curve.due(step, float(step)):
            curve.add(step, float(step), 0.5)
    curve.finish(steps, float(steps), lambda: 0.9)
    return [p.step for p in curve.recorded]


def test_a_step_budget_is_evaluated_evenly_and_at_its_last_step():
    curve = CurveRecorder(points=4, steps=10, seconds=None)
    curve.add(0, 0.0, 0.1)
    assert _record(curve, 10) == [0, 2, 5, 8, 10]  # round(10 * i / 4); the last step once
    assert curve.recorded[0].loss is None and curve.recorded[1].loss == 1.5  # mean of steps 1 and 2
    assert curve.recorded[-1].loss == 9.5 and curve.recorded[-1].accuracy == 0.5  # not evaluated twice
    with pytest.raises(ValueError, match="at least one point"):
        CurveRecorder(points=0, steps=10, seconds=None)


def test_a_wall_clock_budget_is_evaluated_every_fraction_and_at_its_end():
    curve = CurveRecorder(points=3, steps=None, seconds=9.0)
    curve.add(0, 0.0, 0.1)
    assert _record(curve, 10) == [0, 3, 6, 9, 10]  # every 3 s of training, then the final step
    assert curve.recorded[-1].accuracy == 0.9


@pytest.mark.parametrize("curve, message", [
    ({"points": []}, "non-empty list"),
    ([], "non-empty list"),
    ({"points": [{"step": 0, "seconds": 0}]}, "needs numbers step, seconds and accuracy"),
    ({"points": [{"step": 0, "seconds": 0, "accuracy": True}]}, "needs numbers"),
    ({"points": [{"step": 0, "seconds": 0, "accuracy": 0.1}, {"step": 0, "seconds": 1, "accuracy": 0.2}]},
     "goes back"),
    ({"points": [{"step": 0, "seconds": 2, "accuracy": 0.1}, {"step": 5, "seconds": 1, "accuracy": 0.2}]},
     "goes back"),
    ({"points": [{"step": 0, "seconds": 0, "accuracy": 1.5}]}, "outside"),
])
def test_a_bad_curve_is_refused_naming_what(curve, message):
    with pytest.raises(ValueError, match=message):
        check_curve(curve, "here")


def test_time_to_accuracy_is_the_first_point_at_or_above_the_target():
    points = [{"step": 0, "seconds": 0.0, "accuracy": 0.1}, {"step": 5, "seconds": 2.0, "accuracy": 0.6},
              {"step": 9, "seconds": 4.0, "accuracy": 0.55}, {"step": 12, "seconds": 6.0, "accuracy": 0.7}]
    assert time_to_accuracy(points, 0.6) == 2.0
    assert time_to_accuracy(points, 0.65) == 6.0
    assert time_to_accuracy(points, 0.71) is None


def test_a_smoke_cell_records_its_curve_with_training_seconds_only(tiny_settings):
    from sparsebench.budgets import BUDGETS
    from sparsebench.cell import Cell
    from sparsebench.results import Result
    from sparsebench.train import CellRun

    run = CellRun(Cell.parse("cnn", "random:0.5@csr"), BUDGETS["smoke"], tiny_settings)
    run.fresh()
    run.train()
    result = run.measure()
    curve = result.curve
    points = check_curve(curve, "smoke")
    training = run.training
    assert [p["step"] for p in points][0] == 0 and points[-1]["step"] == result.steps == run.steps
    assert len(points) == min(training.curve_points, run.steps) + 1
    assert points[-1]["seconds"] == result.train_time_s  # the loop's own clock, evaluations excluded
    assert curve["slice_rows"] == min(training.curve_rows, result.dataset["test_size"])
    assert Result.from_dict(result.to_dict()).curve == curve  # written and read back
    with pytest.raises(ValueError, match="key 'curve'"):
        Result.from_dict(result.to_dict() | {"curve": {"points": [{"step": 0, "seconds": -1, "accuracy": 2}]}})


def test_the_curve_evaluations_are_not_training_time(tiny_settings, monkeypatch):
    """A clock that jumps 100 s during every evaluation: the training time must not see the jumps."""
    import time
    import types

    from sparsebench import train
    from sparsebench.budgets import BUDGETS
    from sparsebench.cell import Cell

    jumped = [0.0]
    real_evaluate = train.CellRun.evaluate

    def slow_evaluate(self, *args, **kwargs):
        out = real_evaluate(self, *args, **kwargs)
        jumped[0] += 100.0
        return out

    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + jumped[0]))
    monkeypatch.setattr(train.CellRun, "evaluate", slow_evaluate)
    run = train.CellRun(Cell.parse("cnn", "dense"), BUDGETS["smoke"], tiny_settings)
    run.fresh()
    run.train()
    points = run.trained.curve["points"]
    assert jumped[0] == 100.0 * len(points)  # every point evaluated once
    assert run.trained.seconds < 100.0 and points[-1]["seconds"] == run.trained.seconds
