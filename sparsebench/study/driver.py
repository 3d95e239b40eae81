"""The study driver: points -> executor tasks -> one document per point, written atomically.

Before anything runs, every cell the study will build is preflighted (data present, scheme valid for
every layer), and the study directory is locked (``grid.results_lock``). A point whose usable
document is already there is kept (an interrupted study resumes; ``force`` reruns); an unusable one
is named on stderr and recomputed. The tasks go to an executor (``executors``: serial by default);
the driver writes each outcome's document as it arrives and prints one progress line per point.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..atomic import clean_orphans, write_json_atomic
from ..budgets import get_budget
from ..cell import Cell
from ..executors import Task, get_executor
from ..grid import cell_resources, preflight, results_lock
from ..settings import RunSettings
from ..sparsify import POLICIES
from . import documents
from .accuracy import measure_accuracy
from .cost import measure_cost
from .points import AccuracyPoint, CostPoint, Sweep, accuracy_points, cost_points


def study_points(sweep: Sweep) -> list[AccuracyPoint | CostPoint]:
    """Every point of ``sweep``: its accuracy points, then its cost points."""
    return accuracy_points(sweep) + cost_points(sweep)


def task_of(point, settings: RunSettings) -> Task:
    """The executor task that measures ``point`` (a module-level function and picklable arguments)."""
    # each point reserves what a grid cell does (its CPUs and torch threads, a GPU on CUDA), so a point run
    # through Ray trains and times at the serial run's thread count
    point_settings = settings.but(seed=point.seed, progress=False)  # each point has its own seed
    if point.kind == "accuracy":
        cpus, gpus = cell_resources(get_budget(point.budget), settings.device)
        return Task(point.key, measure_accuracy, kwargs={"arch": point.arch, "scheme": str(point.training_scheme),
                                                         "budget": point.budget, "settings": point_settings},
                    cpus=cpus, gpus=gpus)
    cpus, gpus = cell_resources(get_budget(point.size), settings.device)
    return Task(point.key, measure_cost, kwargs={"arch": point.arch, "size": point.size, "scheme": point.scheme,
                                                 "settings": point_settings},
                cpus=cpus, gpus=gpus)


def check_points(points, settings: RunSettings) -> None:
    """``grid.preflight`` for every (budget, cell) the points will build: fail before any work."""
    by_budget: dict[str, dict] = {}
    for p in points:
        budget = p.budget if p.kind == "accuracy" else p.size
        scheme = p.training_scheme if p.kind == "accuracy" else p.scheme
        by_budget.setdefault(budget, {})[(p.arch, str(scheme))] = Cell.parse(p.arch, scheme)
    for budget, cells in by_budget.items():
        preflight([cells[k] for k in sorted(cells)], get_budget(budget), settings)


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)


def summary(point, doc: dict) -> str:
    """A point's result in a few words, for its progress line."""
    value = doc["value"]
    if doc["status"] != "ok":
        return f"skipped: {doc['reason']}"
    if point.kind == "accuracy":
        return f"accuracy {value['result']['accuracy']:.3f}"
    text = f"speed-up x{value['speedup']:.2f}, peak x{value['peak_ratio']:.2f} of dense"
    if point.scheme.representation in POLICIES:  # which representations the policy chose
        text += f" (auto: {', '.join(sorted(set(value['representations'].values())))})"
    return text


def run_study(sweep: Sweep, out_dir: str | Path, settings: RunSettings | None = None, executor=None,
              force: bool = False) -> dict[str, dict]:
    """Measure every point of ``sweep`` not already measured; return every point's document by key.
    ``settings``: the data directory and device every point uses, and whether progress lines are printed
    (each point has its own seed). A point whose task failed (a distributed executor reports it) is
    named and left for the next run."""
    out_dir = Path(out_dir)
    settings = settings or RunSettings()
    progress = settings.progress
    points = study_points(sweep)
    check_points(points, settings)
    executor = executor or get_executor("serial")
    docs, todo = {}, []
    with results_lock(out_dir):
        clean_orphans(out_dir, older_than_s=0)
        for point in points:
            try:
                doc = None if force else documents.read(point.path(out_dir), point)
            except documents.Unusable as why:
                _say(progress, f"{point.key}: document {point.path(out_dir)} not used ({why}); measuring it again")
                doc = None
            if doc is None:
                todo.append(point)
            else:
                docs[point.key] = doc
        _say(progress, f"study: {len(points)} points, {len(docs)} kept from an earlier run (--force reruns them), "
                       f"{len(todo)} to measure -> {out_dir}")
        by_key = {p.key: p for p in todo}
        start = last = time.perf_counter()
        failed = []
        for i, outcome in enumerate(executor.run([task_of(p, settings) for p in todo]), 1):
            point = by_key[outcome.task.key]
            now = time.perf_counter()
            took, elapsed, last = now - last, now - start, now
            eta = elapsed / i * (len(todo) - i)
            error = outcome.error
            if outcome.ok:
                try:
                    doc = documents.check(documents.make_document(point, outcome.value), point)
                    write_json_atomic(point.path(out_dir), doc)
                except ValueError as e:  # documents.Unusable, or a number JSON cannot hold
                    error = f"its measurement is not a valid document ({e})"
            if error is not None:
                failed.append(point.key)
                _say(progress, f"[{i}/{len(todo)}] {point.key}: FAILED ({error}); rerun the study to retry it")
                continue
            docs[point.key] = doc
            _say(progress, f"[{i}/{len(todo)}] {point.key}: {summary(point, doc)} ({took:.0f} s; "
                           f"{elapsed / 60:.1f} min so far, about {eta / 60:.0f} min left)")
    if failed:
        _say(progress, f"study: {len(failed)} points failed: {', '.join(failed)}")
    return docs


def load_documents(sweep: Sweep, out_dir: str | Path) -> tuple[dict[str, dict], list[str]]:
    """The usable documents of ``sweep``'s points in ``out_dir``, and a line for each missing or unusable one."""
    docs, problems = {}, []
    for point in study_points(sweep):
        try:
            doc = documents.read(point.path(out_dir), point)
        except documents.Unusable as why:
            problems.append(f"{point.key}: not used ({why})")
            continue
        if doc is None:
            problems.append(f"{point.key}: not measured yet")
        else:
            docs[point.key] = doc
    return docs, problems
