"""Side-by-side runs of two commits on this machine, after ``asv continuous``: the time gate of a machine
class that has no stored baselines.

BASE (a commit) and HEAD (a commit, or the working tree) each run the same cells here, alternating
cell by cell (BASE first, then HEAD first, ...), so a drift of the machine falls on both. Each side is a
``sparsebench run`` process of its own source tree: a commit is exported (``git archive``) into the cache,
the working tree is used in place. Both use this interpreter and its packages (one torch, as a fair
comparison needs); each imports its own ``sparsebench``, and each builds its own kernels (their build
directory is keyed by a hash of the kernel sources). Results are read back with this version's reader.

The time ratio against dense is gated by HEAD's ratio over BASE's, with the 95% interval of that change
from the two runs' interleaved pairs: a regression only when the whole interval lies above
1 + ``TIME_TOLERANCE``. Every other gated metric is compared with BASE's value under the floors of the
baselines' tolerance rule (``baselines.tolerance_rule`` of one run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_json_atomic
from .baselines import GATED_METRICS, format_metric, tolerance_rule
from .budgets import Budget
from .cell import Cell
from .gate import Failure, check_result
from .measure import git_commit
from .results import read_result
from .timing import change_interval

# HEAD's time ratio may exceed BASE's by this fraction before the change's whole interval counts as a
# regression; docs/time-gate.md gives the A/A runs it rests on
TIME_TOLERANCE = 0.15
TIME_METRIC = "time_ratio_vs_dense"
# a bootstrap of a median from fewer pairs is no 95% interval: 2 pairs of millisecond steps once read an
# unchanged commit as 2.3x slower, consistently, so with fewer the time change is shown but not gated
MIN_GATED_PAIRS = 10


@dataclass(frozen=True)
class Side:
    """One of the two versions compared: its label, its commit and the source tree it runs from."""

    label: str  # "BASE" or "HEAD"
    commit: str  # a full commit id, or "working tree"
    tree: Path

    @property
    def short(self) -> str:
        return self.commit[:12] if self.commit != "working tree" else self.commit

    def environment(self) -> dict[str, str]:
        # the side's own sparsebench comes from its tree: its processes run there (cwd), and `python -m` and
        # `python -c` put the working directory first on sys.path (check_imports proves it)
        env = dict(os.environ)
        if self.commit != "working tree":
            env["SPARSEBENCH_COMMIT"] = self.commit[:12]  # an exported tree has no .git to ask
        else:
            env.pop("SPARSEBENCH_COMMIT", None)
        return env


def git(root: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=120)
    except OSError as e:
        raise ValueError(f"continuous needs git: {e}") from None
    if done.returncode != 0:
        said = done.stderr.strip().splitlines() or ["failed"]
        raise ValueError(f"git {' '.join(args)}: {said[-1]}")
    return done.stdout.strip()


def checkout_root(start: Path | None = None) -> Path:
    """The git checkout of sparsebench that the comparison runs in (from the current directory)."""
    start = Path(start or Path.cwd())
    try:
        root = Path(git(start, "rev-parse", "--show-toplevel"))
    except ValueError:
        raise ValueError(f"continuous compares commits of a git checkout, and {start} is not in one; run it from "
                         f"your sparsebench clone") from None
    if not (root / "sparsebench" / "__init__.py").is_file():
        raise ValueError(f"{root} is a git checkout but not of sparsebench (no sparsebench/__init__.py)")
    return root


def resolve(root: Path, rev: str) -> str:
    """The full commit id of ``rev``; ValueError in one line when it names none."""
    if rev.startswith("-"):
        raise ValueError(f"{rev!r} is not a commit")
    try:
        return git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except ValueError:
        raise ValueError(f"{rev!r} names no commit in {root}; give a commit id, branch or tag "
                         f"(e.g. HEAD~1, main)") from None


def export_tree(root: Path, commit: str, cache: Path) -> Path:
    """The source of ``commit`` in ``cache/continuous/<commit>``, exported once with ``git archive`` (into
    a temporary directory renamed into place, so an interrupted export is never used)."""
    target = cache / "continuous" / commit
    if (target / "sparsebench" / "__init__.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{commit[:12]}-", dir=target.parent))
    try:
        archive = work / "source.tar"
        with open(archive, "wb") as out:
            done = subprocess.run(["git", "archive", "--format=tar", commit], cwd=root, stdout=out,
                                  stderr=subprocess.PIPE, timeout=300)
        if done.returncode != 0:
            raise ValueError(f"git archive {commit[:12]} failed: {done.stderr.decode(errors='replace').strip()}")
        tree = work / "tree"
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")
        if not (tree / "sparsebench" / "__init__.py").is_file():
            raise ValueError(f"commit {commit[:12]} has no sparsebench/ package to run")
        shutil.rmtree(target, ignore_errors=True)
        tree.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def check_imports(side: Side) -> None:
    """The side's process must import the side's own sparsebench, not an installed one."""
    done = subprocess.run([sys.executable, "-c", "import sparsebench; print(sparsebench.__file__)"],
                          env=side.environment(), cwd=side.tree, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"{side.label} {side.short} does not import with this interpreter: {last}")
    imported = Path(done.stdout.strip()).resolve()
    if side.tree.resolve() not in imported.parents:
        raise ValueError(f"{side.label} {side.short}: its process imported {imported}, not the sparsebench of "
                         f"{side.tree}; uninstall the non-editable sparsebench or run from the checkout")


def run_side(side: Side, cell: Cell, budget: Budget, out: Path, data_dir: str | None, seed: int):
    """One cell as a ``sparsebench run`` process of ``side``'s source; its Result, read with this reader."""
    command = [sys.executable, "-m", "sparsebench", "run", "--arch", cell.arch, "--scheme", str(cell.scheme),
               "--budget", budget.name, "--seed", str(seed), "--out", str(out), "--quiet"]
    if data_dir:
        command += ["--data-dir", str(data_dir)]
    done = subprocess.run(command, env=side.environment(), cwd=side.tree, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"{cell} on {side.label} {side.short} failed (exit {done.returncode}): {last}")
    try:
        return read_result(out)
    except ValueError as e:
        raise ValueError(f"{cell} on {side.label} {side.short}: its result does not read with this version ({e})"
                         ) from None


@dataclass
class Verdict:
    """One gated metric of one cell, HEAD against BASE."""

    cell: str
    metric: str
    base: float
    head: float
    ok: bool
    line: str


def time_verdict(cell: str, base, head, base_label: str) -> Verdict:
    b, h = base.time_ratio_vs_dense, head.time_ratio_vs_dense
    pairs = min(_pair_count(base), _pair_count(head))
    if pairs < MIN_GATED_PAIRS:
        return Verdict(cell, TIME_METRIC, b, h, True,
                       f"note {cell} {TIME_METRIC} {h:.3f} vs {base_label} {b:.3f}: x{h / b:.3f}, not gated: "
                       f"{pairs} timed pairs, the gate needs {MIN_GATED_PAIRS} (a budget with more timing_steps)")
    try:
        low, high = change_interval((base.step_times_s["dense"], base.step_times_s["scheme"]),
                                    (head.step_times_s["dense"], head.step_times_s["scheme"]))
    except (KeyError, TypeError, ValueError):
        low = high = h / b  # a result without its step times: the point change, no interval
    ok = low <= 1 + TIME_TOLERANCE
    op = "<=" if ok else ">"
    return Verdict(cell, TIME_METRIC, b, h, ok,
                   f"{'ok  ' if ok else 'FAIL'} {cell} {TIME_METRIC} {h:.3f} vs {base_label} {b:.3f}: x{h / b:.3f} "
                   f"[95% CI {low:.3f}-{high:.3f}] {'lower end ' if ok else 'whole interval '}{op} "
                   f"x{1 + TIME_TOLERANCE:.2f}")


def _pair_count(result) -> int:
    try:
        return min(len(result.step_times_s["dense"]), len(result.step_times_s["scheme"]))
    except (KeyError, TypeError):
        return MIN_GATED_PAIRS  # a result without step times is judged by its point ratio, as before


def metric_verdicts(cell: str, base, head, base_label: str) -> list[Verdict]:
    """Every gated metric but time, against BASE's value with the one-run floors of the tolerance rule."""
    verdicts = []
    for metric, better in GATED_METRICS.items():
        if metric == TIME_METRIC:
            continue
        value = getattr(base, metric)
        entry = {"value": value, "tolerance": tolerance_rule(metric, [value]), "better": better}
        failures: list[Failure] = check_result(head, {"metrics": {metric: entry}}, (metric,))
        f = lambda x, m=metric: format_metric(m, x)
        measured = getattr(head, metric)
        sign = "-" if better == "higher" else "+"
        verdicts.append(Verdict(cell, metric, value, measured, not failures,
                                f"{'FAIL' if failures else 'ok  '} {cell} {metric} {f(measured)} vs {base_label} "
                                f"{f(value)} {sign} tol {f(entry['tolerance'])}"))
    return verdicts


@dataclass
class Comparison:
    base: Side
    head: Side
    machine_class: str | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.verdicts) and all(v.ok for v in self.verdicts)

    def lines(self) -> list[str]:
        where = f"side by side with BASE {self.base.short} on this machine (class {self.machine_class})"
        out = [v.line for v in self.verdicts] + [f"ERROR {e}" for e in self.errors]
        cells = len({v.cell for v in self.verdicts})
        failed = [v for v in self.verdicts if not v.ok]
        if self.ok:
            out.append(f"continuous PASSED: HEAD {self.head.short} within tolerance in {cells} cells, {where}")
        else:
            out.append(f"continuous FAILED: {len(failed)} metric failures in {len({v.cell for v in failed})} of "
                       f"{cells} cells, {len(self.errors)} errors, HEAD {self.head.short} {where}")
        return out

    def document(self, budget: Budget, cells: list[Cell], seed: int) -> dict:
        return {"base": {"commit": self.base.commit}, "head": {"commit": self.head.commit,
                "made_by": git_commit()}, "budget": budget.name, "seed": seed,
                "cells": [[c.arch, str(c.scheme)] for c in cells], "machine_class": self.machine_class,
                "time_tolerance": TIME_TOLERANCE, "ok": self.ok, "errors": self.errors,
                "verdicts": [vars(v) for v in self.verdicts]}


def run_continuous(base_rev: str, head_rev: str | None, cells: list[Cell], budget: Budget, out_dir: Path,
                   data_dir: str | None = None, seed: int = 0, progress: bool = True,
                   cache: Path | None = None) -> Comparison:
    """Run ``cells`` on BASE and HEAD alternately, gate HEAD against BASE, write ``out_dir/comparison.json``."""
    from .machine import cache_dir

    root = checkout_root()
    out_dir = Path(out_dir).resolve()  # each side's process runs in its own tree, so no relative paths
    cache = cache or cache_dir()
    base_commit = resolve(root, base_rev)
    base = Side("BASE", base_commit, export_tree(root, base_commit, cache))
    if head_rev is None:
        head = Side("HEAD", "working tree", root)
    else:
        head_commit = resolve(root, head_rev)
        head = Side("HEAD", head_commit, export_tree(root, head_commit, cache))
    for side in (base, head):
        check_imports(side)
    comparison = Comparison(base, head)
    base_label = f"BASE {base.short}"
    start = time.perf_counter()
    for i, cell in enumerate(cells):
        results = {}
        for side in ((base, head) if i % 2 == 0 else (head, base)):  # alternate who runs first
            path = out_dir / side.label.lower() / cell.arch / f"{cell.scheme.slug}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                results[side.label] = run_side(side, cell, budget, path, data_dir, seed)
            except ValueError as e:
                comparison.errors.append(str(e))
        b, h = results.get("BASE"), results.get("HEAD")
        if b is None or h is None:
            continue
        if not (b.ok and h.ok):
            if b.status != h.status or b.status == "error":
                comparison.errors.append(f"{cell}: BASE {b.status} ({b.reason}), HEAD {h.status} ({h.reason})")
            continue
        comparison.machine_class = h.machine_class
        if b.machine_class != h.machine_class:
            comparison.errors.append(f"{cell}: BASE ran as class {b.machine_class}, HEAD as {h.machine_class}; "
                                     f"the two sides must run on one machine class")
            continue
        verdicts = [time_verdict(str(cell), b, h, base_label), *metric_verdicts(str(cell), b, h, base_label)]
        comparison.verdicts.extend(verdicts)
        if progress:
            bad = [v.metric for v in verdicts if not v.ok]
            print(f"[{i + 1}/{len(cells)}] {cell}: time x{h.time_ratio_vs_dense / b.time_ratio_vs_dense:.3f} of BASE"
                  f"{', FAIL ' + ', '.join(bad) if bad else ''} ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr, flush=True)
    write_json_atomic(out_dir / "comparison.json", comparison.document(budget, cells, seed))
    return comparison
