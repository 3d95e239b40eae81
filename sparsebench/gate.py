"""The regression gate: compare results with the baselines of their machine class (baselines.py).

A result is gated against the class it ran on (its ``env.machine_class``). On a class without
baselines of its own, the machine-independent metrics and peak memory are gated against the nearest
class and the time ratio is reported, not gated (``sparsebench continuous`` gates time there, side by
side with an earlier commit). A cell fails a metric when it is worse than the value by more than the
tolerance; the time ratio, which carries a confidence interval, only when the whole interval lies beyond
it. A run fails when it lost a cell it was asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .baselines import (
    GATED_METRICS,
    BaselineError,
    baseline_path,
    class_dir,
    format_metric,
    known_classes,
    load_baseline,
    nearest_class,
    update_command,
)
from .cell import Cell
from .results import Result, is_finite, scan_results

# what does not depend on the machine, so is gated against another class's baselines too. Peak memory
# (memray's peak heap) came out equal to 0.01 MiB on AMD EPYC 25-17 and Intel Xeon 6-207 in every grid cell
# whose code had not changed between the two runs, so it is gated across classes with its own tolerance.
MACHINE_INDEPENDENT = ("accuracy", "realised_sparsity", "model_size_bytes", "ledger_bytes", "peak_memory_bytes")
# accuracy moves between machines (thread scheduling, BLAS kernels); absolute, in accuracy units
CROSS_MACHINE_ACCURACY_TOLERANCE = 0.03


@dataclass(frozen=True)
class Failure:
    """One gated metric of one cell that is worse than its baseline by more than the tolerance."""

    arch: str
    scheme: str
    metric: str
    baseline: float
    measured: float
    tolerance: float
    better: str  # "higher" or "lower"
    interval: tuple[float, float] | None = None  # the measurement's confidence interval (time ratio)

    @property
    def cell(self) -> str:
        return f"{self.arch} {self.scheme}"

    def __str__(self) -> str:
        f = lambda x: format_metric(self.metric, x)
        op, sign = ("<", "-") if self.better == "higher" else (">", "+")
        worse = abs(self.measured - self.baseline) if is_finite(self.measured) else float("nan")
        pct = f", {100 * worse / abs(self.baseline):.0f}%" if self.metric != "accuracy" and self.baseline else ""
        ci = f" [95% CI {f(self.interval[0])}-{f(self.interval[1])}]" if self.interval else ""
        return (f"FAIL {self.cell} {self.metric} {f(self.measured)}{ci} {op} baseline {f(self.baseline)} "
                f"{sign} tol {f(self.tolerance)} (worse by {f(worse)}{pct})")


def interval_of(result: Result) -> tuple[float, float] | None:
    """The time ratio's confidence interval, when the result carries one."""
    ci = result.time_ratio_interval
    return (ci["low"], ci["high"]) if ci else None


# How far below 1 a masked cell's whole interval must lie to be a fault. An interval covers the noise
# within its process, not a bias shared by its pairs (the cache state, which model stepped first): in the
# A/A grid runs (docs/time-gate.md) dense timed against itself read 2% faster, its interval ending below 1.
# A bias of a few percent is far inside every time tolerance; a masked cell once read 1.24x faster.
FAULT_BIAS = 0.05


def measurement_fault(result: Result) -> str | None:
    """A ``masked`` scheme (dense's own included) does dense's arithmetic and more, so it cannot train faster
    than dense; one that reads faster beyond its interval and the pairs' bias says the timing, not the code,
    went wrong."""
    ci = interval_of(result)
    if not result.ok or ci is None or result.representation != "masked" or ci[1] >= 1.0 - FAULT_BIAS:
        return None
    return (f"{result.cell} time_ratio_vs_dense {result.time_ratio_vs_dense:.3f} [95% CI {ci[0]:.3f}-{ci[1]:.3f}] "
            f"reads faster than dense beyond its interval, which its arithmetic cannot be: a measurement fault "
            f"(a noisy machine or a timing bug), not a speed-up")


def check_result(result: Result, baseline: dict, metrics=tuple(GATED_METRICS),
                 cross_machine: bool = False) -> list[Failure]:
    """The ``metrics`` of ``result`` that are worse than ``baseline`` beyond its tolerance (empty: pass).
    ``cross_machine``: the baseline is another class's, so accuracy gets the cross-machine tolerance."""
    failures = []
    for metric in metrics:
        better, entry = GATED_METRICS[metric], baseline["metrics"][metric]
        value, tol, measured = entry["value"], entry["tolerance"], getattr(result, metric)
        if metric == "accuracy" and cross_machine:
            tol = max(tol, CROSS_MACHINE_ACCURACY_TOLERANCE)
        interval = interval_of(result) if metric == "time_ratio_vs_dense" else None
        # a timing is worse only when its whole interval is: the end nearest the baseline decides
        nearest = measured if interval is None else interval[0] if better == "lower" else interval[1]
        if not is_finite(measured):
            bad = True  # a missing or NaN measurement must not pass by comparing False
        elif better == "higher":
            bad = nearest < value - tol
        else:
            bad = nearest > value + tol
        if bad:
            failures.append(Failure(result.arch, result.scheme, metric, value,
                                    measured if is_finite(measured) else float("nan"), tol, better, interval))
    return failures


@dataclass
class GateReport:
    """What the gate found in one results directory."""

    failures: list[Failure] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # cells that could not be judged: these fail the gate too
    missing: list[str] = field(default_factory=list)  # expected cells with no result: these fail the gate
    notes: list[str] = field(default_factory=list)  # worth saying, not failing (skipped cells, unused baselines)
    faults: list[str] = field(default_factory=list)  # timings that cannot be right (measurement_fault)
    reported: list[str] = field(default_factory=list)  # measured but not gated (time on another machine class)
    checked: int = 0  # cells compared with a baseline

    @property
    def ok(self) -> bool:
        return not self.failures and not self.errors and not self.missing and self.checked > 0

    def lines(self) -> list[str]:
        """One line per error, missing cell, failure, note and reported figure, then a summary line."""
        out = ([f"ERROR {e}" for e in self.errors] + [f"MISSING {m}" for m in self.missing]
               + [str(f) for f in self.failures] + [f"FAULT {m}" for m in self.faults]
               + [f"NOTE {n}" for n in self.notes]
               + [f"REPORTED {r}" for r in self.reported])
        failed_cells = len({f.cell for f in self.failures})
        if self.ok:
            out.append(f"gate PASSED: {self.checked} cells within tolerance of their baselines")
        else:
            out.append(f"gate FAILED: {len(self.failures)} metric failures in {failed_cells} of {self.checked} "
                       f"checked cells, {len(self.missing)} missing cells, {len(self.errors)} errors")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def missing_cells(results: list[Result], expected: list[Cell]) -> list[str]:
    """The expected cells with no document (of any status), one line each."""
    have = {(r.arch, r.scheme) for r in results}
    return [f"{c}: no result (expected by the grid)" for c in expected if (c.arch, str(c.scheme)) not in have]


def machine_class_of(results: list[Result]) -> tuple[str | None, dict, str | None]:
    """The one machine class the ok results ran on, its fingerprint, and an error line when they disagree."""
    classes = {r.machine_class: r.env.get("machine") or {} for r in results if r.ok}
    if len(classes) > 1:
        return None, {}, (f"results from several machine classes (env.machine_class: {', '.join(sorted(classes))}); "
                          f"gate each machine's run on its own")
    return (next(iter(classes)), classes[next(iter(classes))], None) if classes else (None, {}, None)


def gating_plan(machine_class: str | None, fp: dict, baselines_root: str | os.PathLike, budget: str,
                results_dir: str | os.PathLike | None = None) -> tuple[str | None, tuple[str, ...], str | None]:
    """Which class's baselines to gate against, which metrics, and the line that says so when it is
    not the machine's own class. No class at all: (None, ..)."""
    known = known_classes(baselines_root, budget)
    if machine_class is None or machine_class in known:
        return machine_class, tuple(GATED_METRICS), None
    against = nearest_class(fp, known)
    if against is None:
        return None, MACHINE_INDEPENDENT, None
    return against, MACHINE_INDEPENDENT, (
        f"machine class {machine_class} has no baselines: the time ratio is reported, not gated here (`nox -s "
        f"continuous` gates it side by side); accuracy (tolerance >= {CROSS_MACHINE_ACCURACY_TOLERANCE}), peak "
        f"memory, realised sparsity, model size and ledger are gated against the nearest class {against}; add "
        f"this machine with "
        f"`{update_command(budget, results_dir)}`")


def check_one(result: Result, baselines_root: str | os.PathLike, budget: str) -> tuple[list[Failure], str | None]:
    """Gate one ok result against its machine class's baseline (the benchmark suite, cell by cell):
    its failures and the not-own-class line, if any. BaselineError when there is no baseline."""
    against, metrics, note = gating_plan(result.machine_class, result.env.get("machine") or {}, baselines_root, budget)
    if against is None:
        raise BaselineError(f"no baselines for budget {budget!r} under {baselines_root}; make them with "
                            f"`{update_command(budget)}`")
    baseline = load_baseline(baseline_path(baselines_root, budget, against, result.arch, result.file_slug))
    return check_result(result, baseline, metrics, cross_machine=against != result.machine_class), note


def check_dir(results_dir: str | os.PathLike, baselines_root: str | os.PathLike, budget: str,
              expected: list[Cell] | None = None) -> GateReport:
    """Gate every result under ``results_dir`` against the baselines of its machine class; collect all
    failures, never stop at the first. ``expected``: the cells the run must hold (default: its grid
    manifest, else the default grid)."""
    from .grid import default_cells, read_manifest

    report, results = GateReport(), []
    for path, result in scan_results(results_dir):
        if isinstance(result, ValueError):
            report.errors.append(str(result))
        elif result.budget != budget:
            report.errors.append(f"{result.cell}: result {path} is budget {result.budget!r}, "
                                 f"the gate checks {budget!r}")
        else:
            results.append(result)
    if expected is None:
        try:
            expected = read_manifest(results_dir) or default_cells()
        except ValueError as e:
            report.errors.append(str(e))
            expected = default_cells()
    report.missing = missing_cells(results, expected)

    machine_class, fp, mixed = machine_class_of(results)
    if mixed:
        report.errors.append(mixed)
        return report
    against, metrics, note = gating_plan(machine_class, fp, baselines_root, budget, results_dir)
    if note:
        report.notes.append(note)
    if machine_class is not None and against is None:
        report.errors.append(f"no baselines for budget {budget!r} under {baselines_root}; make them with "
                             f"`{update_command(budget, results_dir)}`")
        return report

    used = set()
    for result in results:
        bpath = baseline_path(baselines_root, budget, against or "_none", result.arch, result.file_slug)
        used.add(bpath.resolve())
        if not result.ok:
            if result.status == "skipped" and not bpath.exists():
                # e.g. semi on a machine without it: expected, and nothing was ever promised for it.
                report.notes.append(f"{result.cell}: skipped ({result.reason or 'no reason given'})")
            else:
                report.errors.append(f"{result.cell}: status {result.status!r} ({result.reason or 'no reason given'})")
            continue
        try:
            baseline = load_baseline(bpath)
        except BaselineError as e:
            report.errors.append(f"{result.cell}: {e}".replace(update_command(budget),
                                                               update_command(budget, results_dir)))
            continue
        if (baseline.get("arch"), baseline.get("scheme")) != (result.arch, result.scheme):
            report.errors.append(f"{result.cell}: baseline {bpath} is for {baseline.get('arch')} "
                                 f"{baseline.get('scheme')}")
            continue
        report.failures.extend(check_result(result, baseline, metrics, cross_machine=against != machine_class))
        fault = measurement_fault(result)
        if fault:
            report.faults.append(fault)
        if against != machine_class:
            ref = baseline["metrics"]["time_ratio_vs_dense"]["value"]
            ci = interval_of(result)
            ci = f" [95% CI {ci[0]:.3f}-{ci[1]:.3f}]" if ci else ""
            report.reported.append(f"{result.cell} time_ratio_vs_dense {result.time_ratio_vs_dense:.3f}{ci} "
                                   f"(class {against}: {ref:.3f}; not gated)")
        report.checked += 1
    if report.checked == 0 and not report.errors:
        report.errors.append(f"no result documents in {results_dir}; nothing was gated")
    if against is not None:
        unused = sorted(p for p in class_dir(baselines_root, budget, against).glob("*/*.json")
                        if p.resolve() not in used)
        if unused:
            report.notes.append(f"{len(unused)} baselines have no result in {results_dir} (not gated): "
                                + ", ".join(f"{p.parent.name}/{p.stem}" for p in unused))
    return report
