"""Learning curves: accuracy on a fixed held-out slice at evenly spaced points of training, with the
training wall-clock at each; and the time a curve takes to reach an accuracy.

The slice is ``rows`` rows of the test split drawn once with a fixed generator (``SLICE_SEED``), not
the run's seed, so every scheme and seed of an architecture is evaluated on the same rows (IMDB's test
split is in label order, so a prefix would hold one class). A result's ``accuracy`` is on the budget's
whole test set; its curve's points are on the slice, and time to accuracy compares curve points only.

A curve's seconds are training seconds: the clock stops while the slice is evaluated, so a curve's
last point has the loop's own ``train_time_s``. Its first point is step 0, before any training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

SLICE_SEED = 1729  # fixed: the slice must not move with the run's seed


def slice_rows(n_test: int, rows: int) -> torch.Tensor:
    """The sorted indices of the curve's slice: ``min(rows, n_test)`` of ``range(n_test)``."""
    if rows < 1:
        raise ValueError(f"a curve slice needs at least one row, got {rows}")
    pick = torch.randperm(n_test, generator=torch.Generator().manual_seed(SLICE_SEED))[:min(rows, n_test)]
    return pick.sort().values


@dataclass(frozen=True)
class CurvePoint:
    step: int
    seconds: float  # training wall-clock up to this step, evaluations excluded
    loss: float | None  # mean training loss of the steps since the previous point (None at step 0)
    accuracy: float  # on the slice


class CurveRecorder:
    """When to evaluate and what was seen. With a step budget: at step 0 and after every
    ``steps / points`` steps (rounded), the last at the final step. With a wall-clock budget: after
    every ``seconds / points`` of training; ``finish`` adds the final step if it fell between."""

    def __init__(self, points: int, steps: int | None, seconds: float | None):
        if points < 1:
            raise ValueError(f"a learning curve needs at least one point after step 0, got {points}")
        self.points, self.steps, self.seconds = points, steps, seconds
        self.recorded: list[CurvePoint] = []
        self._losses_since: list[torch.Tensor] = []

    def _due_steps(self) -> set[int]:
        return {round(i * self.steps / self.points) for i in range(1, self.points + 1)}

    def due(self, step: int, seconds: float) -> bool:
        """Whether the curve is evaluated after ``step`` steps and ``seconds`` of training."""
        if self.steps is not None:
            return step in self._due_steps()
        done = len(self.recorded) - 1  # points after step 0 so far
        return seconds >= (done + 1) * self.seconds / self.points

    def saw(self, loss: torch.Tensor) -> None:
        self._losses_since.append(loss)

    def add(self, step: int, seconds: float, accuracy: float) -> None:
        loss = float(torch.stack(self._losses_since).float().mean()) if self._losses_since else None
        self._losses_since = []
        self.recorded.append(CurvePoint(step, seconds, loss, accuracy))

    def finish(self, step: int, seconds: float, accuracy_of) -> None:
        """The final point at ``step`` (``accuracy_of()`` evaluates), with the loop's final clock; a point
        already recorded at ``step`` only takes that clock (no training happened since)."""
        if self.recorded and self.recorded[-1].step == step:
            self.recorded[-1] = replace(self.recorded[-1], seconds=seconds)
        else:
            self.add(step, seconds, accuracy_of())

    def document(self, rows: int) -> dict:
        return {"slice_rows": rows, "slice_seed": SLICE_SEED, "points": [asdict(p) for p in self.recorded]}


def check_curve(curve: dict, where: str) -> list[dict]:
    """The points of a result's ``curve`` document, checked: steps and seconds never go back, accuracies
    in [0, 1]. ValueError naming ``where`` and the first thing wrong."""
    points = curve.get("points") if isinstance(curve, dict) else None
    if not isinstance(points, list) or not points:
        raise ValueError(f"{where}: a curve needs a non-empty list of points")
    last_step, last_s = -1, -1.0
    for i, p in enumerate(points):
        if not isinstance(p, dict) or not all(isinstance(p.get(k), (int, float)) and not isinstance(p.get(k), bool)
                                               for k in ("step", "seconds", "accuracy")):
            raise ValueError(f"{where}: curve point {i} needs numbers step, seconds and accuracy, got {p!r}")
        if p["step"] <= last_step or p["seconds"] < last_s or not 0 <= p["accuracy"] <= 1:
            raise ValueError(f"{where}: curve point {i} ({p}) goes back in steps or time, or its accuracy is "
                             f"outside [0, 1]")
        last_step, last_s = p["step"], p["seconds"]
    return points


def time_to_accuracy(points: list[dict], target: float) -> float | None:
    """The training seconds at the first curve point whose accuracy reaches ``target``; None: never.
    The resolution is the curve's spacing: the time is that of the evaluation that first saw it."""
    return next((p["seconds"] for p in points if p["accuracy"] >= target), None)


def final_accuracy(points: list[dict]) -> float:
    """The curve's accuracy at the end of training (its last point)."""
    return points[-1]["accuracy"]
