"""Baselines and the regression gate: compare result documents with stored baselines, and update them.

A baseline lives at ``baselines/<budget>/<arch>/<slug>.json`` and holds, per gated metric, a value,
an absolute tolerance (in the metric's unit) and which direction is better. A cell fails a metric
when it is worse than the value by more than the tolerance.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .results import SCHEMA_VERSION, read_result, result_files, write_json_temp

GATED_METRICS = {
    "accuracy": "higher",
    "peak_memory_bytes": "lower",
    "model_size_bytes": "lower",
    "time_ratio_vs_dense": "lower",
    # a mask that stops holding (pruned weights drifting off zero) changes none of the above for
    # `masked`, and may even raise accuracy; the realised sparsity is what shows it
    "realised_sparsity": "higher",
}
_BYTE_METRICS = ("peak_memory_bytes", "model_size_bytes")
_KiB, _MiB = 1024, 1024 * 1024


class BaselineError(Exception):
    """A baseline is missing, unreadable or inconsistent, or an update was refused."""


def update_command(budget: str | None, results_dir: str | os.PathLike | None = None) -> str:
    """The command that (re)makes the baselines of a budget."""
    return f"sparsebench baselines update --budget {budget or 'BUDGET'} {results_dir or 'DIR'}"


def baseline_path(root: str | os.PathLike, budget: str, arch: str, slug: str) -> Path:
    return Path(root) / budget / arch / f"{slug}.json"


def load_baseline(path: str | os.PathLike) -> dict:
    """Read and check one baseline file; BaselineError names the file and the command that makes it."""
    path = Path(path)
    budget = path.parent.parent.name or None  # baselines/<budget>/<arch>/<slug>.json
    fix = f"make it from a complete, green run with `{update_command(budget)}`"
    if not path.is_file():
        raise BaselineError(f"baseline {path} does not exist; {fix}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BaselineError(f"baseline {path} is unreadable ({e}); {fix}") from e
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        version = doc.get("schema_version") if isinstance(doc, dict) else None
        raise BaselineError(f"baseline {path} has schema_version {version!r}, expected {SCHEMA_VERSION}; {fix}")
    metrics = doc.get("metrics")
    if not isinstance(metrics, dict):
        raise BaselineError(f"baseline {path} has no 'metrics' object; {fix}")
    for metric, better in GATED_METRICS.items():
        entry = metrics.get(metric)
        if not isinstance(entry, dict):
            raise BaselineError(f"baseline {path} lacks metric {metric!r}; {fix}")
        value, tol = entry.get("value"), entry.get("tolerance")
        if not (_is_finite(value) and _is_finite(tol) and tol >= 0):
            raise BaselineError(f"baseline {path}: metric {metric!r} needs a finite value and a tolerance >= 0, "
                                f"got {value!r} and {tol!r}; {fix}")
        # A flipped direction would silently turn the gate around, so it must agree with ours.
        if entry.get("better") != better:
            raise BaselineError(f"baseline {path}: metric {metric!r} has better={entry.get('better')!r}, "
                                f"expected {better!r}; {fix}")
    return doc


def _is_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def format_metric(metric: str, x: float) -> str:
    """A metric value for people: bytes in B/KiB/MiB/GiB, everything else with 3 decimals."""
    if metric not in _BYTE_METRICS or not _is_finite(x):
        return f"{x:.3f}" if _is_finite(x) else str(x)
    for unit, size in (("GiB", 1024**3), ("MiB", _MiB), ("KiB", _KiB)):
        if abs(x) >= size:
            return f"{x / size:.2f} {unit}"
    return f"{x:.0f} B"


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

    @property
    def cell(self) -> str:
        return f"{self.arch} {self.scheme}"

    def __str__(self) -> str:
        f = lambda x: format_metric(self.metric, x)
        op, sign = ("<", "-") if self.better == "higher" else (">", "+")
        worse = abs(self.measured - self.baseline) if _is_finite(self.measured) else float("nan")
        pct = f", {100 * worse / abs(self.baseline):.0f}%" if self.metric != "accuracy" and self.baseline else ""
        return (f"FAIL {self.cell} {self.metric} {f(self.measured)} {op} baseline {f(self.baseline)} "
                f"{sign} tol {f(self.tolerance)} (worse by {f(worse)}{pct})")


def check_result(result: dict, baseline: dict) -> list[Failure]:
    """The gated metrics of ``result`` that are worse than ``baseline`` beyond its tolerance (empty: pass)."""
    failures = []
    for metric, better in GATED_METRICS.items():
        entry = baseline["metrics"][metric]
        value, tol, measured = entry["value"], entry["tolerance"], result.get(metric)
        if not _is_finite(measured):
            bad = True  # a missing or NaN measurement must not pass by comparing False
        elif better == "higher":
            bad = measured < value - tol
        else:
            bad = measured > value + tol
        if bad:
            failures.append(Failure(result["arch"], result["scheme"], metric, value,
                                    measured if _is_finite(measured) else float("nan"), tol, better))
    return failures


@dataclass
class GateReport:
    """What the gate found in one results directory."""

    failures: list[Failure] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # cells that could not be judged: these fail the gate too
    notes: list[str] = field(default_factory=list)  # worth saying, not failing (skipped cells, unused baselines)
    checked: int = 0  # cells compared with a baseline

    @property
    def ok(self) -> bool:
        return not self.failures and not self.errors and self.checked > 0

    def lines(self) -> list[str]:
        """One line per error, failure and note, then a summary line."""
        out = [f"ERROR {e}" for e in self.errors] + [str(f) for f in self.failures] + [f"NOTE {n}" for n in self.notes]
        failed_cells = len({f.cell for f in self.failures})
        if self.ok:
            out.append(f"gate PASSED: {self.checked} cells within tolerance of their baselines")
        else:
            out.append(f"gate FAILED: {len(self.failures)} metric failures in {failed_cells} of {self.checked} "
                       f"checked cells, {len(self.errors)} errors")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def check_dir(results_dir: str | os.PathLike, baselines_root: str | os.PathLike, budget: str) -> GateReport:
    """Compare every result under ``results_dir`` with its baseline; collect all failures, never stop at the first."""
    report = GateReport()
    used = set()
    for path in result_files(results_dir):
        try:
            doc = read_result(path)
        except ValueError as e:
            report.errors.append(str(e))
            continue
        if doc is None:
            continue
        cell = f"{doc['arch']} {doc['scheme']}"
        if doc["budget"] != budget:
            report.errors.append(f"{cell}: result {path} is budget {doc['budget']!r}, the gate checks {budget!r}")
            continue
        bpath = baseline_path(baselines_root, budget, doc["arch"], doc["slug"])
        used.add(bpath.resolve())
        if doc["status"] != "ok":
            why = doc.get("reason") or doc.get("error") or "no reason given"
            if doc["status"] == "skipped" and not bpath.exists():
                # e.g. semi on a machine without it: expected, and nothing was ever promised for it.
                report.notes.append(f"{cell}: skipped ({why})")
            else:
                report.errors.append(f"{cell}: status {doc['status']!r} ({why}) in {path}")
            continue
        try:
            baseline = load_baseline(bpath)
        except BaselineError as e:
            report.errors.append(f"{cell}: {e}".replace(update_command(budget), update_command(budget, results_dir)))
            continue
        if (baseline.get("arch"), baseline.get("scheme")) != (doc["arch"], doc["scheme"]):
            report.errors.append(f"{cell}: baseline {bpath} is for {baseline.get('arch')} {baseline.get('scheme')}")
            continue
        report.failures.extend(check_result(doc, baseline))
        report.checked += 1
    if report.checked == 0 and not report.errors:
        report.errors.append(f"no result documents in {results_dir}; nothing was gated")
    unused = sorted(p for p in (Path(baselines_root) / budget).glob("*/*.json") if p.resolve() not in used)
    if unused:
        report.notes.append(f"{len(unused)} baselines have no result in {results_dir} (not gated): "
                            + ", ".join(f"{p.parent.name}/{p.stem}" for p in unused))
    return report


# Floors of the tolerance rule: (absolute floor, fraction of median floor, cap as fraction of median or None).
_TOLERANCE_FLOORS = {
    "accuracy": (0.03, 0.0, None),
    "peak_memory_bytes": (1 * _MiB, 0.10, None),
    "model_size_bytes": (1 * _KiB, 0.01, None),
    "time_ratio_vs_dense": (0.0, 0.25, 0.40),
    "realised_sparsity": (0.002, 0.0, None),
}


def tolerance_rule(metric: str, values: list[float]) -> float:
    """Turn repeated measurements of one metric into a tolerance well above their spread.

    spread = max - min over the runs (0 for one run), m = median; the tolerance is

    - accuracy: max(0.03, 3 * spread). Fixed-seed runs barely differ, but thread scheduling and
      torch versions move a small test split by a point or two; 3 points is a real loss.
    - peak_memory_bytes: max(10% of m, 1 MiB, 3 * spread). Allocator and memray noise is a few percent
      (and about a MiB of arenas on tiny models); a mask or gradient kept dense costs far more.
    - model_size_bytes: max(1% of m, 1 KiB, 3 * spread). Deterministic; the 1 KiB absorbs the
      torch.save container varying across torch versions; int64 indices or dense storage cost far more.
    - time_ratio_vs_dense: min(max(25% of m, 3 * spread), 40% of m). Interleaved timing cancels most
      machine noise but a 2-core runner still wobbles by 10-20%; the 40% cap keeps a 1.5x slowdown
      failing however noisy the runs that made the baseline were (update_baselines warns when capped).
    - realised_sparsity: max(0.002, 3 * spread). Deterministic from the seed; a pruned weight that
      drifts off zero lowers it, and 0.2% of the weights is far less than any real drift.
    """
    if metric not in _TOLERANCE_FLOORS:
        raise ValueError(f"no tolerance rule for metric {metric!r}; gated metrics are {', '.join(GATED_METRICS)}")
    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"tolerance_rule({metric!r}): need at least one finite value, got {values!r}")
    absolute, fraction, cap = _TOLERANCE_FLOORS[metric]
    median, spread = statistics.median(values), max(values) - min(values)
    tol = max(absolute, fraction * abs(median), 3 * spread)
    if cap is not None:
        tol = min(tol, cap * abs(median))
    return tol


def _cells_of(results_dir: Path, budget: str) -> dict[tuple[str, str], tuple[Path, dict]]:
    """(arch, scheme) -> (file, document) for one complete, green run of the given budget."""
    cells = {}
    files = result_files(results_dir)
    for path in files:
        try:
            doc = read_result(path)
        except ValueError as e:
            raise BaselineError(f"refusing to update baselines: {e}") from e
        if doc is None:
            continue
        cell = (doc["arch"], doc["scheme"])
        if doc["status"] != "ok":
            raise BaselineError(f"refusing to update baselines: {path} ({' '.join(cell)}) has status "
                                f"{doc['status']!r}; baselines come only from a complete, green run")
        if doc["budget"] != budget:
            raise BaselineError(f"refusing to update baselines: {path} is budget {doc['budget']!r}, not {budget!r}")
        if cell in cells:
            raise BaselineError(f"refusing to update baselines: {' '.join(cell)} appears twice in {results_dir} "
                                f"({cells[cell][0]} and {path}); give each repeated run its own directory")
        cells[cell] = (path, doc)
    if not cells:
        raise BaselineError(f"refusing to update baselines: no result documents in {results_dir}")
    return cells


def _baseline_doc(budget: str, docs: list[dict]) -> tuple[dict, list[str]]:
    """The baseline of one cell from its repeated runs, and warnings about noisy metrics."""
    first, metrics, spread, warnings = docs[0], {}, {}, []
    for metric, better in GATED_METRICS.items():
        values = [d[metric] for d in docs]
        value, tol = statistics.median(values), tolerance_rule(metric, values)
        spread[metric] = max(values) - min(values)
        if metric in _BYTE_METRICS:
            value, tol = round(value), math.ceil(tol)  # whole bytes read better and diff cleanly
        else:
            value, tol = round(value, 6), round(tol, 6)
        cap = _TOLERANCE_FLOORS[metric][2]
        if cap is not None and 3 * spread[metric] > cap * abs(value):
            warnings.append(f"warning: {first['arch']} {first['scheme']} {metric}: runs spread by "
                            f"{format_metric(metric, spread[metric])}, tolerance capped at {cap:.0%} of the median; "
                            f"the gate may be flaky on this machine")
        metrics[metric] = {"value": value, "tolerance": tol, "better": better}
    env = first.get("env", {})
    doc = {
        "schema_version": SCHEMA_VERSION, "budget": budget, "arch": first["arch"], "scheme": first["scheme"],
        "metrics": metrics,
        "made_from": {"runs": len(docs), "spread": spread, "env": env, "commit": env.get("commit")},
    }
    return doc, warnings


def _describe_change(path: Path, old: dict | None, new: dict) -> list[str]:
    def show(m, e):
        return f"{format_metric(m, e['value'])} ± {format_metric(m, e['tolerance'])}"

    if old is None:
        return [f"new {path}: " + ", ".join(f"{m} {show(m, e)}" for m, e in new["metrics"].items())]
    changed = []
    old_metrics = old.get("metrics") if isinstance(old.get("metrics"), dict) else {}
    for m, e in new["metrics"].items():
        before = old_metrics.get(m)
        readable = isinstance(before, dict) and _is_finite(before.get("value")) and _is_finite(before.get("tolerance"))
        if not readable or (before["value"], before["tolerance"]) != (e["value"], e["tolerance"]):
            changed.append(f"  {m}: {show(m, before) if readable else 'none'} -> {show(m, e)}")
    return [f"updated {path}:"] + changed if changed else [f"unchanged {path}"]


def update_baselines(results_dirs: list[Path] | Path, baselines_root: str | os.PathLike, budget: str,
                     expected_cells: list[tuple[str, str]] | None = None) -> list[str]:
    """Rewrite the baselines of ``budget`` from complete, green runs; return what changed, one line per item.

    Several directories are repeated runs of the same grid: value = median, tolerance by ``tolerance_rule``
    over their spread. Refuses (BaselineError) if a run lacks an expected cell (``expected_cells`` holds
    (arch, scheme or slug); by default every run must hold the same cells), if any result is not ok or of
    another budget. All files go to temp files first and are then renamed, so a failure leaves the old
    baselines in place (renames already done are rolled back).
    """
    dirs = [Path(results_dirs)] if isinstance(results_dirs, (str, os.PathLike)) else [Path(d) for d in results_dirs]
    if not dirs:
        raise BaselineError("refusing to update baselines: no results directory given")
    runs = [_cells_of(d, budget) for d in dirs]

    if expected_cells is not None:
        for d, run in zip(dirs, runs, strict=True):
            have = {(a, s) for a, s in run} | {(a, doc["slug"]) for (a, _), (_, doc) in run.items()}
            missing = [f"{a} {s}" for a, s in expected_cells if (a, s) not in have]
            if missing:
                raise BaselineError(f"refusing to update baselines: {d} is incomplete, missing {', '.join(missing)}; "
                                    f"run the whole grid first")
        wanted = {(a, s) for a, s in expected_cells}
        keep = [c for c in runs[0] if c in wanted or (c[0], runs[0][c][1]["slug"]) in wanted]
    else:
        keep = list(runs[0])
        for d, run in zip(dirs[1:], runs[1:], strict=True):
            if set(run) != set(runs[0]):
                diff = sorted(set(run) ^ set(runs[0]))
                raise BaselineError(f"refusing to update baselines: {dirs[0]} and {d} hold different cells "
                                    f"({', '.join(' '.join(c) for c in diff)}); every run must be the complete grid")

    planned, lines = [], []  # planned: (target, new doc, old doc or None)
    for cell in sorted(keep):
        docs = [run[cell][1] for run in runs]
        devices = {d.get("env", {}).get("device") for d in docs}
        if len(devices) > 1:
            raise BaselineError(f"refusing to update baselines: {' '.join(cell)} measured on "
                                f"different devices ({', '.join(sorted(map(str, devices)))}); one baseline, one kind")
        new, warnings = _baseline_doc(budget, docs)
        target = baseline_path(baselines_root, budget, cell[0], docs[0]["slug"])
        try:
            old = json.loads(target.read_text(encoding="utf-8")) if target.exists() else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = {}  # a corrupt old baseline is simply replaced
        planned.append((target, new, old))
        lines += _describe_change(target, old, new) + warnings

    _write_all(planned)
    return lines


def _write_all(planned: list[tuple[Path, dict, dict | None]]) -> None:
    """Write every file or none: all temp files first, then the renames, rolled back on failure."""
    temps = []
    try:
        for target, new, _ in planned:
            temps.append(write_json_temp(target, new))
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    done = []
    try:
        for (target, _, _), tmp in zip(planned, temps, strict=True):
            old_bytes = target.read_bytes() if target.exists() else None
            os.replace(tmp, target)
            done.append((target, old_bytes))
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        for target, old_bytes in reversed(done):
            if old_bytes is None:
                target.unlink(missing_ok=True)
            else:
                restore = target.with_name(f".{target.name}.restore.tmp")
                restore.write_bytes(old_bytes)
                os.replace(restore, target)
        raise
