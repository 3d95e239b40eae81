"""The benchmark grid: every architecture x scheme of the default grid is one pytest-benchmark
test (ids like ``cnn-block4x4-0.5-bsr``, grouped by architecture).

Each round trains a fresh seeded model (pedantic's untimed ``setup``), so no round ever continues
on already-trained weights; pytest-benchmark times the training loop alone. Every measurement of
the cell (SPEC §2) goes into ``extra_info``, so a saved pytest-benchmark JSON holds the whole
result, and the result document is also written to ``--results-dir``. With the gate on (default),
the cell fails when any gated metric regresses beyond its stored baseline's tolerance.

Under pytest-xdist (``-n 2``) pytest-benchmark switches its own timer off (and says so); the cells
still train, measure themselves and are gated exactly the same.
"""

from __future__ import annotations

import pytest

from sparsebench.gate import baseline_path, check_result, load_baseline
from sparsebench.grid import default_cells
from sparsebench.representations import RepresentationUnavailable
from sparsebench.results import result_path, write_json_atomic
from sparsebench.schemes import parse_scheme


def cell_params():
    for arch, scheme in default_cells():
        yield pytest.param(arch, scheme, id=f"{arch}-{parse_scheme(scheme).slug}")


@pytest.mark.parametrize("arch, scheme", list(cell_params()))
def test_cell(benchmark, grid, arch, scheme):
    from sparsebench.train import CellRun

    benchmark.group = arch
    try:
        cell = CellRun(arch, scheme, grid.budget, seed=grid.seed, progress=grid.progress)
        cell.fresh()  # fails early (and skips) where the representation cannot run here
    except RepresentationUnavailable as why:
        pytest.skip(str(why))
    benchmark.pedantic(cell.train, setup=cell.fresh, rounds=grid.rounds, iterations=1)
    doc = cell.measure()
    write_json_atomic(result_path(grid.results_dir, arch, doc["slug"]), doc)
    benchmark.extra_info.update(doc)
    if grid.gate:
        baseline = load_baseline(baseline_path(grid.baselines, grid.budget.name, arch, doc["slug"]))
        failures = check_result(doc, baseline)
        grid.failures.extend(failures)
        assert not failures, "\n".join(str(f) for f in failures)
