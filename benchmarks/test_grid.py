"""The benchmark grid: every architecture x scheme of the default grid is one pytest-benchmark
test (ids like ``cnn-block4x4-0.5-bsr``, grouped by architecture), run by the same runner as
``sparsebench grid`` (grid.run_one), so both write the same documents, skipped cells included.

Each training step of the cell's fixed-budget run is one pytest-benchmark round (the loop's untimed
work between steps, the learning curve's evaluation, is pedantic's ``setup``), so pytest-benchmark's
statistics (min, median, IQR over hundreds of rounds) describe the cell's step time, and
``--benchmark-compare-fail=median:10%`` compares medians of many steps. Every field of the cell's
Result goes into ``extra_info`` (accuracy, peak memory, the time ratio against dense and its interval),
so a saved pytest-benchmark JSON holds the whole result, and the result document is also written to
``--results-dir``. With the gate on (default), the cell fails
when a gated metric regresses beyond its baseline for this machine class; at the end the whole
directory is gated once more (conftest), which also fails the run for a cell it lost.

Under pytest-xdist (``-n 2``) pytest-benchmark switches its own timer off (and says so); the cells
still train, measure themselves and are gated exactly the same.
"""

from __future__ import annotations

import pytest

from sparsebench.gate import check_one
from sparsebench.grid import default_cells, run_one


@pytest.mark.parametrize("cell", default_cells(), ids=lambda cell: cell.id)
def test_cell(benchmark, grid, cell):
    benchmark.group = cell.arch

    def each_step_a_round(loop):  # the grid's budgets are fixed-step, so loop.steps is the round count
        benchmark.pedantic(loop.step, setup=loop.between, rounds=loop.steps, iterations=1)

    def timed_training(run):
        run.fresh()
        run.train(drive=each_step_a_round)

    result = run_one(cell, grid.budget, grid.results_dir, grid.settings, train=timed_training)
    if not result.ok:
        pytest.skip(result.reason)
    benchmark.extra_info.update(result.to_dict())
    if grid.gate:
        failures, _ = check_one(result, grid.baselines, grid.budget.name)
        assert not failures, "\n".join(str(f) for f in failures)
