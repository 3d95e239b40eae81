"""The default grid and the one grid runner, used by the command line (``sparsebench grid``) and by
the pytest-benchmark suite (benchmarks/test_grid.py) alike.

Each cell's document is written atomically as soon as it exists, so a crash loses at most the cell
in flight; a cell this machine cannot run is written as a skipped document with the reason. A run
first writes its manifest (``grid.json``: the budget and the cells it was asked for), which is the
expected set the gate checks the run against.

Before any cell trains, ``preflight`` checks everything that can be known without training (device,
data of every architecture, the scheme against every layer of every architecture). While a grid writes
a results directory it holds its lock (``results_lock``); a rerun keeps the cells already written
with the same settings (``reusable``) unless forced.

Cells run through an executor (executors.py): each cell still to run is one ``Task`` (``run_cell``, which
returns the cell's Result and writes nothing, with the CPUs and GPU the budget needs); the driver writes each
document as its outcome arrives, so a Ray run writes the same files as a serial one. A cell that failed for
good on a distributed executor (raised or lost its worker twice) is written as an ``error`` document with
the reason; a rerun runs it again.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

from .atomic import Locked, clean_orphans, locked, read_json, write_json_atomic
from .budgets import Budget
from .cell import Cell, cells
from .executors import SerialExecutor, Task
from .representations import RepresentationUnavailable
from .results import Result, read_result, write_result
from .settings import RunSettings

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
TASK_CPUS = 2  # CPUs (and torch threads) one cell reserves on a cluster: the ci budget's 2-core machine class (t2)
LOCK = ".sparsebench.lock"


class ResultsLocked(Exception):
    """Another process is writing the results directory."""


@contextlib.contextmanager
def results_lock(out_dir: str | Path):
    """Hold ``OUT/.sparsebench.lock`` (``atomic.locked``: an flock, with the owner's pid in it) while a grid writes
    ``out_dir``; a second writer gets ResultsLocked. The kernel drops the lock when its owner dies: never stale."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(locked(out_dir / LOCK, wait_s=0))
        except Locked as busy:
            raise ResultsLocked(f"results directory {out_dir} is being written by another sparsebench "
                                f"(pid {busy.owner or 'unknown'}); wait for it to finish or choose another --out"
                                ) from None
        yield


def preflight(grid: list[Cell], budget: Budget, settings: RunSettings | None = None) -> None:
    """Fail before any training: the device exists, every architecture's data is present, and every
    scheme is valid for every pruned layer of every architecture (``sparsify.check_scheme`` on a model
    built on the meta device, so nothing is allocated). ValueError / DataNotFound with one line."""
    import torch

    from .archs import get_arch
    from .data import HUB_ENV, resolve_data_dir
    from .sparsify import LayerRefused, check_scheme, dense_layers

    settings = settings or RunSettings()
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device cuda: CUDA is not available on this machine (torch {torch.__version__}); "
                         f"use --device cpu")
    archs = {c.arch: get_arch(c.arch) for c in grid}
    if os.environ.get(HUB_ENV) != "1":
        resolve_data_dir(settings.data_dir, names=sorted({a.data for a in archs.values() if a.data}))
    for name, arch in archs.items():
        arch.training_for(budget)  # a budget without settings for this arch
        with torch.device("meta"):
            model = arch.build(arch.size_for(budget), _NoData())
        kept = dense_layers(model, settings.keep_dense)
        for cell in (c for c in grid if c.arch == name):
            try:
                check_scheme(model, cell.scheme, kept)
            except RepresentationUnavailable:
                pass  # this machine cannot run it: the cell is written as skipped, with the reason
            except LayerRefused as e:
                raise ValueError(f"{cell}: {e} (command line: --keep-dense {e.layer})") from None
            except ValueError as e:  # keep_dense names a layer the model does not have
                raise ValueError(f"{cell}: --keep-dense: {e}") from None


class _NoData:
    """What a model builder may read of the loaded data before it is loaded (the reference sizes apply)."""

    info: dict = {}


def reusable(cell: Cell, out_dir: str | Path, budget: Budget, settings: RunSettings) -> Result | None:
    """The cell's document already in ``out_dir`` when it is complete and was made with the same budget
    settings, seed and scheme (and kept layers); else None (the cell runs again)."""
    from .archs import get_arch

    path = cell.path(out_dir)
    if not path.is_file():
        return None
    try:
        result = read_result(path)
    except ValueError:
        return None  # unreadable: run it again and overwrite it
    if result is None or not result.ok or (result.arch, result.scheme) != (cell.arch, str(cell.scheme)):
        return None
    recorded = dict(result.budget_settings)
    arch_training = recorded.pop("arch_training", None)
    recorded.pop("arch_steps", None)
    same = (result.budget == budget.name and result.seed == settings.seed and recorded == budget.settings()
            and arch_training == asdict(get_arch(cell.arch).training_for(budget))
            and result.model.get("keep_dense") == (list(settings.keep_dense) or None))
    return result if same else None


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
        doc = read_json(path, "grid manifest")
    except ValueError as e:
        raise ValueError(f"{e}; rerun the grid") from e
    try:
        return [Cell.parse(arch, scheme) for arch, scheme in doc["cells"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"grid manifest {path} does not list its cells as [arch, scheme] ({e}); rerun the grid") from e


def run_one(cell: Cell, budget: Budget, out_dir: str | Path | None = None, settings: RunSettings | None = None,
            train: Callable | None = None) -> Result:
    """Run a cell under ``settings`` (default: ``RunSettings()``) and (with ``out_dir``) write its document. A
    representation this machine cannot run gives a 'skipped' result with the reason. ``train(run)`` replaces
    ``run.fresh(); run.train()`` (the benchmark suite times the training through it)."""
    from .train import CellRun  # late: torch-heavy, only when a cell runs

    try:
        run = CellRun(cell, budget, settings)
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


def cell_resources(budget: Budget, device: str | None = None, cpus: int = TASK_CPUS) -> tuple[int, int]:
    """(CPUs, GPUs) one cell of ``budget`` reserves: ``cpus`` threads, and a GPU when it trains on CUDA (the
    ``full`` budget, unless ``--device cpu``)."""
    gpus = 1 if device == "cuda" or (device is None and budget.device == "cuda") else 0
    return cpus, gpus


def run_cell(cell: Cell, budget: Budget, settings: RunSettings) -> Result:
    """One grid task: run the cell and return its Result (skipped with the reason where this machine cannot run
    it), writing nothing; the driver writes it. Module-level, so a Ray worker can import it."""
    return run_one(cell, budget, None, settings)


def run_grid(grid: list[Cell], budget: Budget, out_dir: str | Path, settings: RunSettings | None = None,
             force: bool = False, executor=None, cell_fn: Callable[..., Result] | None = None) -> list[Result]:
    """Check every cell (``preflight``), then run them under the directory's lock through ``executor`` (default:
    serial, in this process), keeping the cells a previous run already wrote with the same settings unless
    ``force``. ``cell_fn`` replaces ``run_cell`` (a module-level function with its signature; tests)."""
    settings = settings or RunSettings()
    preflight(grid, budget, settings)
    with results_lock(out_dir):
        clean_orphans(out_dir, older_than_s=0)  # we hold the lock: every temp file is a dead writer's
        write_manifest(out_dir, budget, grid)
        return _run_cells(grid, budget, out_dir, settings, force, executor or SerialExecutor(), cell_fn or run_cell)


def _run_cells(grid, budget, out_dir, settings: RunSettings, force, executor, cell_fn) -> list[Result]:
    done: dict[str, Result] = {}
    todo: dict[str, tuple[int, Cell]] = {}
    tasks, start = [], time.perf_counter()
    cpus, gpus = cell_resources(budget, settings.device)
    progress = settings.progress
    # in this process the cell shows its own progress; on a cluster the executor's counts do
    task_settings = settings.but(progress=progress and isinstance(executor, SerialExecutor))
    for i, cell in enumerate(grid, 1):
        if cell.id in done or cell.id in todo:
            continue  # the same cell twice: one document
        kept = None if force else reusable(cell, out_dir, budget, settings)
        if kept is not None:
            done[cell.id] = kept
            if progress:
                print(f"[{i}/{len(grid)}] {cell}: kept from an earlier run with the same settings "
                      f"({cell.path(out_dir)}; --force reruns it)", file=sys.stderr, flush=True)
            continue
        todo[cell.id] = (i, cell)
        tasks.append(Task(cell.id, cell_fn, (cell, budget, task_settings), cpus=cpus, gpus=gpus))
    t0 = time.perf_counter()
    for outcome in executor.run(tasks):
        i, cell = todo[outcome.task.key]
        if outcome.ok:
            result = outcome.value
        else:
            tries = f" (after {outcome.attempts} attempts)" if outcome.attempts > 1 else ""
            result = Result.skipped(cell, budget.name, f"{outcome.error}{tries}", status="error")
        write_result(out_dir, result)
        done[cell.id] = result
        if progress:
            what = (f"acc {result.accuracy:.3f}, time x{result.time_ratio_vs_dense:.2f} of dense" if result.ok
                    else f"{result.status}: {result.reason}")
            print(f"[{i}/{len(grid)}] {cell}: {what} ({time.perf_counter() - t0:.0f} s, "
                  f"{time.perf_counter() - start:.0f} s total) -> {cell.path(out_dir)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
    return [done[cell.id] for cell in grid]
