"""One accuracy point: a pattern trained once on the accuracy budget with one seed, through the grid's
own per-cell runner (``grid.run_one``), so it is the same training and the same result document as
a grid cell's.

It trains with ``PATTERN@auto``: every representation of a pattern computes the same function (the
property tests hold them to the masked reference), so the accuracy is the pattern's; ``auto`` gives
each layer the fastest valid representation within dense's memory on this machine, what a user would
pick for speed, so the learning curve's wall-clock (time to accuracy) is what that user would see.
Dense trains dense.

``measure_accuracy`` is a module-level function returning plain JSON data: an executor's task.
"""

from __future__ import annotations

from ..budgets import get_budget
from ..cell import Cell
from ..grid import run_one
from ..settings import RunSettings


def measure_accuracy(arch: str, scheme: str, budget: str, settings: RunSettings) -> dict:
    """Train and measure ``arch`` with ``scheme`` under ``settings`` (its seed is the point's), without a
    progress bar (the driver prints a line per point); the cell's result document, with its status."""
    result = run_one(Cell.parse(arch, scheme), get_budget(budget), None, settings.but(progress=False))
    return {"status": result.status, "reason": result.reason, "result": result.to_dict()}
