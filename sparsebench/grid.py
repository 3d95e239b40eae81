"""The default grid and the one grid runner, used by the command line (``sparsebench grid``) and by
the pytest-benchmark suite (benchmarks/test_grid.py) alike.

Each cell's document is written atomically as soon as it exists, so a crash loses at most the cell
in flight; a cell this machine cannot run is written as a skipped document with the reason. A run
first writes its manifest (``grid.json``: the budget and the cells it was asked for), which is the
expected set the gate checks the run against.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .atomic import write_json_atomic
from .budgets import Budget
from .cell import Cell, cells
from .representations import RepresentationUnavailable
from .results import Result, write_result

DEFAULT_ARCHS = ("cnn", "transformer")
DEFAULT_SCHEMES = (
    "dense",
    "random:0.5@masked",
    "random:0.5@csr",
    "random:0.9@csr",  # the csr kernels' fast path
    "block:4x4:0.5@masked",
    "block:4x4:0.5@bsr",
    "block:16x16:0.9@bsr_cpp",  # the block kernels' fast path (16x16 tiles every pruned layer of both archs)
    "nm:2:4@masked",
    "magnitude:0.5@masked",
)
MANIFEST = "grid.json"


def default_cells(archs: Iterable[str] = DEFAULT_ARCHS, schemes: Iterable[str] = DEFAULT_SCHEMES) -> list[Cell]:
    return cells(archs, schemes)


def write_manifest(out_dir: str | Path, budget: Budget, grid: list[Cell]) -> None:
    write_json_atomic(Path(out_dir) / MANIFEST, {"budget": budget.name,
                                                 "cells": [[c.arch, str(c.scheme)] for c in grid]})


def read_manifest(results_dir: str | Path) -> list[Cell] | None:
    """The cells a run was asked for, or None when the directory has no manifest."""
    path = Path(results_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return [Cell.parse(arch, scheme) for arch, scheme in json.loads(path.read_text(encoding="utf-8"))["cells"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"grid manifest {path} is unreadable ({e}); rerun the grid") from e


def run_one(cell: Cell, budget: Budget, out_dir: str | Path | None = None, seed: int = 0, data_dir=None,
            device=None, progress: bool = True, train: Callable | None = None) -> Result:
    """Run a cell and (with ``out_dir``) write its document. A representation this machine cannot run
    gives a 'skipped' result with the reason. ``train(run)`` replaces ``run.fresh(); run.train()``
    (the benchmark suite times the training through it)."""
    from .train import CellRun  # late: torch-heavy, only when a cell runs

    try:
        run = CellRun(cell, budget, seed, data_dir, device, progress)
        if train is None:
            run.fresh()
            run.train()
        else:
            train(run)
        result = run.measure()
    except RepresentationUnavailable as why:
        result = Result.skipped(cell, budget.name, str(why))
    if out_dir is not None:
        write_result(out_dir, result)
    return result


def run_grid(grid: list[Cell], budget: Budget, out_dir: str | Path, seed: int = 0, data_dir=None, device=None,
             progress: bool = True) -> list[Result]:
    write_manifest(out_dir, budget, grid)
    done, start = [], time.perf_counter()
    for i, cell in enumerate(grid, 1):
        t0 = time.perf_counter()
        result = run_one(cell, budget, out_dir, seed, data_dir, device, progress)
        done.append(result)
        if progress:
            what = (f"acc {result.accuracy:.3f}, time x{result.time_ratio_vs_dense:.2f} of dense" if result.ok
                    else f"skipped: {result.reason}")
            print(f"[{i}/{len(grid)}] {cell}: {what} ({time.perf_counter() - t0:.0f} s, "
                  f"{time.perf_counter() - start:.0f} s total) -> {cell.path(out_dir)}", file=sys.stderr, flush=True)
    return done
