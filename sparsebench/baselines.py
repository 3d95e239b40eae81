"""Baselines: what the gate compares results with, and the one way they change.

Baselines belong to a machine class (machine.py: CPU identity, kernel variant, threads, torch), since
time ratios differ between instruction sets. Layout::

    baselines/<budget>/<machine-class>/machine.json          the fingerprint that made them
    baselines/<budget>/<machine-class>/<arch>/<slug>.json    per gated metric: value, tolerance, better

``update_baselines`` makes them from complete, green runs of one class: value the median, tolerance by
``tolerance_rule`` over the runs' spread. It replaces a class directory as a whole, so a failure or a
kill at any point leaves all old or all new baselines; ``recover`` finishes or undoes an interrupted update.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from pathlib import Path

from .atomic import clean_orphans, fsync_dir, locked, read_json
from .cell import Cell
from .results import SCHEMA_VERSION, KiB, MiB, Result, is_finite, is_safe_name, scan_results, write_json_temp

GATED_METRICS = {
    "accuracy": "higher",
    "peak_memory_bytes": "lower",
    "model_size_bytes": "lower",
    "ledger_bytes": "lower",
    "time_ratio_vs_dense": "lower",
    # a mask that stops holding (pruned weights drifting off zero) changes none of the above for
    # `masked`, and may even raise accuracy; the realised sparsity is what shows it
    "realised_sparsity": "higher",
}
MACHINE_FILE = "machine.json"
_BYTE_METRICS = ("peak_memory_bytes", "model_size_bytes", "ledger_bytes")
# physical bounds of a stored value: (low, high, low excluded)
_BOUNDS = {"accuracy": (0.0, 1.0, False), "realised_sparsity": (0.0, 1.0, False),
           "time_ratio_vs_dense": (0.0, None, True)} | {m: (0.0, None, False) for m in _BYTE_METRICS}


class BaselineError(Exception):
    """A baseline is missing, unreadable or inconsistent, or an update was refused."""


def update_command(budget: str | None, results_dir: str | os.PathLike | None = None) -> str:
    """The command that (re)makes the baselines of a budget for the machine that made the results."""
    return f"sparsebench baselines update --budget {budget or 'BUDGET'} {results_dir or 'DIR'}"


def class_dir(root: str | os.PathLike, budget: str, machine_class: str) -> Path:
    """``root/<budget>/<machine_class>``; BaselineError for a name that is not file-safe."""
    for what, name in (("budget", budget), ("machine class", machine_class)):
        if not is_safe_name(name):
            raise BaselineError(f"{what} {name!r} is not a file-safe name (letters, digits, '.', '_', '-'; "
                                f"no leading dot); refusing to use it as a directory")
    return Path(root) / budget / machine_class


def baseline_path(root: str | os.PathLike, budget: str, machine_class: str, arch: str, slug: str) -> Path:
    """The baseline file of one cell of one class; BaselineError for a name that is not file-safe."""
    for what, name in (("architecture", arch), ("scheme slug", slug)):
        if not is_safe_name(name):
            raise BaselineError(f"{what} {name!r} is not a file-safe name; refusing to use it as a path")
    return class_dir(root, budget, machine_class) / arch / f"{slug}.json"


def known_classes(root: str | os.PathLike, budget: str) -> dict[str, dict]:
    """Machine class -> the fingerprint that made its baselines. Directories without ``machine.json``
    (an older layout) are not classes and are ignored."""
    try:
        recover(root, budget)
    except OSError as e:
        raise BaselineError(f"baselines under {Path(root) / budget} hold an interrupted update that cannot be "
                            f"finished ({e}); rerun `{update_command(budget)}`") from e
    classes = {}
    for marker in sorted((Path(root) / budget).glob(f"*/{MACHINE_FILE}")):
        if not is_safe_name(marker.parent.name):
            continue  # an update's work directory (.<class>.new / .old), never a class
        try:
            fp = json.loads(marker.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise BaselineError(f"baselines {marker} is unreadable ({e}); remake that class with "
                                f"`{update_command(budget)}`") from e
        classes[marker.parent.name] = fp if isinstance(fp, dict) else {}
    return classes


def own_class(root: str | os.PathLike, budget: str) -> tuple[str, bool]:
    """This machine's class (its native or forced kernel variant, on the CPU) and whether ``root`` holds
    ``budget`` baselines of that class: where it does not, time is gated side by side (continuous.py)."""
    from .machine import this_machine
    from .measure import kernel_variant

    _, machine_class = this_machine(kernel_variant()[0])
    return machine_class, machine_class in known_classes(root, budget)


def nearest_class(fp: dict, known: dict[str, dict]) -> str | None:
    """The known class most like ``fp``: same CPU architecture first, then same kernel variant, same
    vendor, same threads, same torch (ties: by name, so the choice is stable)."""
    def likeness(name):
        other = known[name]
        cpu, other_cpu = fp.get("cpu") or {}, other.get("cpu") or {}
        return (cpu.get("arch") == other_cpu.get("arch"), fp.get("kernel_variant") == other.get("kernel_variant"),
                cpu.get("vendor") == other_cpu.get("vendor"), fp.get("threads") == other.get("threads"),
                fp.get("torch") == other.get("torch"))

    return max(sorted(known), key=likeness) if known else None


def load_baseline(path: str | os.PathLike) -> dict:
    """Read and check one baseline file; BaselineError names the file and the command that makes it."""
    path = Path(path)
    budget = path.parents[2].name if len(path.parents) > 2 else None  # <budget>/<class>/<arch>/<slug>.json
    fix = f"make it from a complete, green run with `{update_command(budget)}`"
    if not path.is_file():
        raise BaselineError(f"baseline {path} does not exist; {fix}")
    try:
        doc = read_json(path, "baseline")
    except ValueError as e:
        raise BaselineError(f"{e}; {fix}") from e
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
        if not (is_finite(value) and is_finite(tol) and tol >= 0):
            raise BaselineError(f"baseline {path}: metric {metric!r} needs a finite value and a tolerance >= 0, "
                                f"got {value!r} and {tol!r}; {fix}")
        lo, hi, open_lo = _BOUNDS[metric]
        if value < lo or (open_lo and value == lo) or (hi is not None and value > hi):
            bounds = f"> {lo}" if open_lo else f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise BaselineError(f"baseline {path}: metric {metric!r} value must be {bounds}, got {value!r}; {fix}")
        # A flipped direction would silently turn the gate around, so it must agree with ours.
        if entry.get("better") != better:
            raise BaselineError(f"baseline {path}: metric {metric!r} has better={entry.get('better')!r}, "
                                f"expected {better!r}; {fix}")
    return doc


def format_metric(metric: str, x: float) -> str:
    """A metric value for people: bytes in B/KiB/MiB/GiB, everything else with 3 decimals."""
    if metric not in _BYTE_METRICS or not is_finite(x):
        return f"{x:.3f}" if is_finite(x) else str(x)
    for unit, size in (("GiB", 1024**3), ("MiB", MiB), ("KiB", KiB)):
        if abs(x) >= size:
            return f"{x / size:.2f} {unit}"
    return f"{x:.0f} B"


# Floors of the tolerance rule: (absolute floor, fraction of median floor, cap as fraction of median or None).
_TOLERANCE_FLOORS = {
    "accuracy": (0.03, 0.0, None),
    "peak_memory_bytes": (1 * MiB, 0.10, None),
    "model_size_bytes": (1 * KiB, 0.01, None),
    "time_ratio_vs_dense": (0.0, 0.15, 0.40),
    "realised_sparsity": (0.002, 0.0, None),
    "ledger_bytes": (1 * KiB, 0.01, None),
}
# Multiples of the runs' spread (max - min) in the tolerance; 3 unless named. The time ratio's is smaller:
# the gate judges it by its interval's near end, which already carries the noise within a run.
_SPREAD_MULTIPLE = {"time_ratio_vs_dense": 2.0}


def tolerance_rule(metric: str, values: list[float]) -> float:
    """Turn repeated measurements of one metric into a tolerance well above their spread.

    spread = max - min over the runs (0 for one run), m = median; the tolerance is

    - accuracy: max(0.03, 3 * spread). Fixed-seed runs barely differ, but thread scheduling and
      torch versions move a small test split by a point or two; 3 points is a real loss.
    - peak_memory_bytes: max(10% of m, 1 MiB, 3 * spread). Allocator and memray noise is a few percent
      (and about a MiB of arenas on tiny models); a mask or gradient kept dense costs far more.
    - model_size_bytes: max(1% of m, 1 KiB, 3 * spread). Deterministic; the 1 KiB absorbs the
      torch.save container varying across torch versions; int64 indices or dense storage cost far more.
    - time_ratio_vs_dense: min(max(15% of m, 2 * spread), 40% of m), judged by the interval's near end.
      Leave-one-out A/A over five grid runs (docs/time-gate.md) false-alarmed nowhere at this rule, nor at
      a 5% floor with 2 x spread or at 15% with 1.5 x spread, but did at 10% with 1.5 x spread; the 40% cap
      keeps a 1.5x slowdown failing however noisy the runs that made the baseline were (update_baselines
      warns when capped).
    - ledger_bytes: max(1% of m, 1 KiB, 3 * spread). Counted from the tensors, deterministic; a mask,
      index or optimizer state kept dense costs far more.
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
    tol = max(absolute, fraction * abs(median), _SPREAD_MULTIPLE.get(metric, 3.0) * spread)
    if cap is not None:
        tol = min(tol, cap * abs(median))
    return tol


def _cells_of(results_dir: Path, budget: str) -> dict[tuple[str, str], tuple[Path, Result]]:
    """(arch, scheme) -> (file, result) for one complete, green run of the given budget."""
    cells = {}
    for path, result in scan_results(results_dir):
        if isinstance(result, ValueError):
            raise BaselineError(f"refusing to update baselines: {result}") from result
        cell = (result.arch, result.scheme)
        if not result.ok:
            raise BaselineError(f"refusing to update baselines: {path} ({result.cell}) has status "
                                f"{result.status!r}; baselines come only from a complete, green run")
        if result.budget != budget:
            raise BaselineError(f"refusing to update baselines: {path} is budget {result.budget!r}, not {budget!r}")
        if cell in cells:
            raise BaselineError(f"refusing to update baselines: {result.cell} appears twice in {results_dir} "
                                f"({cells[cell][0]} and {path}); give each repeated run its own directory")
        cells[cell] = (path, result)
    if not cells:
        raise BaselineError(f"refusing to update baselines: no result documents in {results_dir}")
    return cells


def _settings_of(result: Result) -> dict[str, object]:
    """What must agree between the runs a baseline is made from (per architecture)."""
    settings = dict(result.budget_settings)
    model = {k: v for k, v in result.model.items() if k != "parameters"}  # sparse layers store fewer
    return {"seed": result.seed, "budget_settings.seconds": settings.pop("seconds", None),
            "steps": settings.get("arch_steps", result.steps), "budget_settings": settings,
            "model sizes": model, "dataset": result.dataset}


def _check_same_settings(runs: list[dict[tuple[str, str], tuple[Path, Result]]]) -> None:
    """Refuse, in one line naming the field, runs made with other settings: a different seed, step count,
    budget, model size or data would widen the tolerances until the gate stops gating. A wall-clock
    (``--seconds``) run is refused outright: its step count, so its accuracy, depends on the machine."""
    seen: dict[str, dict[str, tuple[object, Path]]] = {}  # arch -> field -> (value, first file)
    for run in runs:
        for path, result in run.values():
            fields = _settings_of(result)
            if fields["budget_settings.seconds"] is not None:
                raise BaselineError(f"refusing to update baselines: {path} was trained for --seconds "
                                    f"{fields['budget_settings.seconds']} (a wall-clock budget); baselines come "
                                    f"only from fixed-step runs")
            for name, value in fields.items():
                key = "seed" if name == "seed" else f"{result.arch}:{name}"
                first = seen.setdefault(key, {}).setdefault(name, (value, path))
                if first[0] != value:
                    name, was, now = _first_difference(name, first[0], value)
                    raise BaselineError(f"refusing to update baselines: {name} differs: {was!r} in {first[1]}, "
                                        f"{now!r} in {path}; baselines come from runs with the same settings")


def _first_difference(name: str, a, b) -> tuple[str, object, object]:
    """The innermost key where two settings differ, e.g. ``budget_settings.arch_training.lr``."""
    while isinstance(a, dict) and isinstance(b, dict):
        key = next((k for k in sorted(set(a) | set(b), key=str) if a.get(k) != b.get(k)), None)
        if key is None:
            break
        name, a, b = f"{name}.{key}", a.get(key), b.get(key)
    return name, a, b


def _baseline_doc(budget: str, results: list[Result]) -> tuple[dict, list[str]]:
    """The baseline of one cell from its repeated runs, and warnings about noisy metrics."""
    first, metrics, spread, warnings = results[0], {}, {}, []
    for metric, better in GATED_METRICS.items():
        values = [getattr(r, metric) for r in results]
        value, tol = statistics.median(values), tolerance_rule(metric, values)
        spread[metric] = max(values) - min(values)
        if metric in _BYTE_METRICS:
            value, tol = round(value), math.ceil(tol)  # whole bytes read better and diff cleanly
        else:
            value, tol = round(value, 6), round(tol, 6)
        cap = _TOLERANCE_FLOORS[metric][2]
        if cap is not None and _SPREAD_MULTIPLE.get(metric, 3.0) * spread[metric] > cap * abs(value):
            warnings.append(f"warning: {first.cell} {metric}: runs spread by "
                            f"{format_metric(metric, spread[metric])}, tolerance capped at {cap:.0%} of the median; "
                            f"the gate may be flaky on this machine")
        metrics[metric] = {"value": value, "tolerance": tol, "better": better}
    # each run's own 95% interval, beside the spread across runs that the tolerance came from
    metrics["time_ratio_vs_dense"]["intervals"] = [r.time_ratio_interval for r in results if r.time_ratio_interval]
    doc = {
        "schema_version": SCHEMA_VERSION, "budget": budget, "arch": first.arch, "scheme": first.scheme,
        "machine_class": first.machine_class, "metrics": metrics,
        "made_from": {"runs": len(results), "spread": spread, "env": first.env, "commit": first.env.get("commit")},
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
        readable = isinstance(before, dict) and is_finite(before.get("value")) and is_finite(before.get("tolerance"))
        if not readable or (before["value"], before["tolerance"]) != (e["value"], e["tolerance"]):
            changed.append(f"  {m}: {show(m, before) if readable else 'none'} -> {show(m, e)}")
    return [f"updated {path}:"] + changed if changed else [f"unchanged {path}"]


def update_baselines(results_dirs: list[Path] | Path, baselines_root: str | os.PathLike, budget: str,
                     expected_cells: list[Cell] | None = None) -> list[str]:
    """Rewrite the baselines of ``budget`` for the machine class the runs ran on, from complete, green
    runs; return what changed, one line per item.

    Several directories are repeated runs of the same grid: value = median, tolerance by ``tolerance_rule``
    over their spread. Refuses (BaselineError) if a run lacks an expected cell (by default every run must
    hold the same cells), if any result is not ok or of another budget, or if the runs come from more
    than one machine class, or if the runs' settings differ. The class directory is replaced as a whole
    (``_swap_in_class``): a failure or a kill at any point leaves all old or all new baselines.
    """
    dirs = [Path(results_dirs)] if isinstance(results_dirs, (str, os.PathLike)) else [Path(d) for d in results_dirs]
    if not dirs:
        raise BaselineError("refusing to update baselines: no results directory given")
    runs = [_cells_of(d, budget) for d in dirs]

    classes = {}  # machine class -> a directory holding it
    for d, run in zip(dirs, runs, strict=True):
        for _, result in run.values():
            classes.setdefault(result.machine_class, d)
    if len(classes) > 1:
        raise BaselineError("refusing to update baselines: env.machine_class differs: "
                            + ", ".join(f"{c} (in {d})" for c, d in sorted(classes.items(), key=str))
                            + "; baselines belong to one machine class, update each from its own runs")
    machine_class = next(iter(classes))
    _check_same_settings(runs)

    if expected_cells is not None:
        wanted = {(c.arch, str(c.scheme)) for c in expected_cells}
        for d, run in zip(dirs, runs, strict=True):
            missing = [f"{a} {s}" for a, s in sorted(wanted - set(run))]
            if missing:
                raise BaselineError(f"refusing to update baselines: {d} is incomplete, missing {', '.join(missing)}; "
                                    f"run the whole grid first")
        keep = [c for c in runs[0] if c in wanted]
    else:
        keep = list(runs[0])
        for d, run in zip(dirs[1:], runs[1:], strict=True):
            if set(run) != set(runs[0]):
                diff = sorted(set(run) ^ set(runs[0]))
                raise BaselineError(f"refusing to update baselines: {dirs[0]} and {d} hold different cells "
                                    f"({', '.join(' '.join(c) for c in diff)}); every run must be the complete grid")

    planned, lines = [], []  # planned: (target, new doc, old doc or None)
    for cell in sorted(keep):
        results = [run[cell][1] for run in runs]
        new, warnings = _baseline_doc(budget, results)
        target = baseline_path(baselines_root, budget, machine_class, cell[0], results[0].file_slug)
        try:
            old = json.loads(target.read_text(encoding="utf-8")) if target.exists() else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = {}  # a corrupt old baseline is simply replaced
        planned.append((target, new, old))
        lines += _describe_change(target, old, new) + warnings
    first = runs[0][keep[0]][1] if keep else next(iter(runs[0].values()))[1]
    marker = class_dir(baselines_root, budget, machine_class) / MACHINE_FILE
    planned.append((marker, {"machine_class": machine_class, "fingerprint": first.env.get("machine"),
                             "cpu": first.env.get("cpu")}, None))
    lines.append(f"machine class {machine_class}: {marker}")

    recover(baselines_root, budget)
    _swap_in_class(Path(baselines_root) / budget, machine_class, planned)
    return lines


# --- all-or-nothing class directories ------------------------------------------------------------------------
#
# An update builds the complete new class directory beside the live one, ``.<class>.new``, and writes
# ``COMPLETE`` into it last. Then: rename ``<class>`` -> ``.<class>.old``, ``.<class>.new`` -> ``<class>``,
# delete ``.<class>.old``. Whatever step a SIGKILL stops, ``recover`` (run by every command that reads or
# writes baselines) finishes the swap if the new directory was complete and drops it otherwise, so readers
# see all old or all new baselines, never a mix. Readers skip dot-directories (not file-safe names).

COMPLETE = ".complete"


def _work_dirs(budget_dir: Path, machine_class: str) -> tuple[Path, Path, Path]:
    return budget_dir / machine_class, budget_dir / f".{machine_class}.new", budget_dir / f".{machine_class}.old"


def _locked_budget(budget_dir: Path):
    """One update or recovery of a budget at a time: an exclusive lock on the budget directory itself,
    made first if missing so that ``locked`` takes the directory and leaves no lock file."""
    budget_dir.mkdir(parents=True, exist_ok=True)
    return locked(budget_dir)


def _leftovers(budget_dir: Path) -> bool:
    try:
        return any(p.name.startswith(".") and p.name.endswith((".new", ".old", ".tmp")) for p in budget_dir.iterdir()) \
            or any(budget_dir.glob(f"*/{COMPLETE}")) or any(budget_dir.glob("*/**/.*.tmp"))
    except OSError:
        return False


def _swap_in(budget_dir: Path, live: Path, new: Path, old: Path) -> None:
    """Put a complete ``new`` class directory in place of ``live`` (moved aside to ``old``): two renames,
    the window between them covered by ``recover``, which rolls a complete ``new`` forward."""
    if live.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(live, old)
    os.rename(new, live)
    fsync_dir(budget_dir)


def recover(root: str | os.PathLike, budget: str) -> list[str]:
    """Finish or undo an update that was killed, and remove the temp files it left; returns what it did."""
    if not is_safe_name(budget):
        return []
    budget_dir = Path(root) / budget
    if not budget_dir.is_dir() or not _leftovers(budget_dir):
        return []

    done = []
    with _locked_budget(budget_dir):
        for work in sorted(budget_dir.glob(".*.new")) + sorted(budget_dir.glob(".*.old")):
            machine_class = work.name[1:].rsplit(".", 1)[0]
            live, new, old = _work_dirs(budget_dir, machine_class)
            if not work.exists():
                continue  # handled with its sibling
            if new.is_dir() and (new / COMPLETE).is_file():  # roll forward
                _swap_in(budget_dir, live, new, old)
                done.append(f"completed the interrupted update of {live}")
            elif new.exists():  # roll back: the new directory never became complete
                shutil.rmtree(new)
                done.append(f"dropped the incomplete update of {live}")
            if old.exists():
                if live.exists():
                    shutil.rmtree(old)
                else:  # cannot happen by the update's order, but never lose the only copy
                    os.rename(old, live)
            (live / COMPLETE).unlink(missing_ok=True)
        for marker in budget_dir.glob(f"*/{COMPLETE}"):  # killed after the swap, before the marker went
            marker.unlink()
        done += [f"removed orphan temp file {p}" for p in clean_orphans(budget_dir, older_than_s=0)]
    return done


def _swap_in_class(budget_dir: Path, machine_class: str, planned: list[tuple[Path, dict, dict | None]]) -> None:
    """Write ``planned`` (targets under ``budget_dir/<class>``) as one new class directory, all or nothing:
    the files of the live class that the update does not rewrite are carried over."""
    live, new, old = _work_dirs(budget_dir, machine_class)
    with _locked_budget(budget_dir):
        if new.exists():
            shutil.rmtree(new)
        try:
            if live.is_dir():
                shutil.copytree(live, new, ignore=shutil.ignore_patterns(COMPLETE, ".*.tmp"))
            else:
                new.mkdir(parents=True)
            for target, doc, _ in planned:
                dest = new / target.relative_to(live)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(write_json_temp(dest, doc), dest)
            for d in {new / t.relative_to(live).parent for t, _, _ in planned} | {new}:
                fsync_dir(d)
            os.replace(write_json_temp(new / COMPLETE, {"machine_class": machine_class}), new / COMPLETE)
            fsync_dir(new)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        # from here on the update is decided: a crash is rolled forward by recover()
        _swap_in(budget_dir, live, new, old)
        if old.exists():
            shutil.rmtree(old)
        (live / COMPLETE).unlink(missing_ok=True)
