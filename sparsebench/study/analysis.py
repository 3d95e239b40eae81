"""Numbers the study report shows, from the point documents: accuracy means and spreads, cost rows,
break-even sparsity, Pareto fronts, and the generated sentences. Pure functions of the documents'
data: each document's strings are parsed once, here, into pattern values (``patterns.Pattern``) and
``CostResult`` values; accuracy summaries are keyed by (arch, pattern value) and each cost row holds
its pattern value under ``pattern``.

Conventions: ``time_ratio`` is the scheme's median step time over dense's, interleaved in one
process (above 1: slower); ``speedup = 1 / time_ratio``. Spread is the sample standard deviation
over seeds (n - 1 in the denominator); with one seed there is none. Accuracy deltas are paired by
seed (pattern minus dense with the same seed), in percentage points.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from ..patterns import Pattern, parse_pattern
from ..schemes import parse_scheme
from .cost_result import CostResult


def mean_spread(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def accuracy_summary(docs: dict[str, dict]) -> dict[tuple[str, Pattern], dict]:
    """(arch, pattern) -> mean, std and n of accuracy, and the paired delta against dense in points."""
    acc: dict[tuple[str, Pattern], dict[int, float]] = defaultdict(dict)
    for doc in docs.values():
        if doc["point"]["kind"] == "accuracy" and doc["status"] == "ok":
            p = doc["point"]
            acc[(p["arch"], parse_pattern(p["pattern"]))][p["seed"]] = doc["value"]["result"]["accuracy"]
    dense_of = {arch: by_seed for (arch, pattern), by_seed in acc.items() if not pattern.sparse}
    out = {}
    for (arch, pattern), by_seed in acc.items():
        mean, std = mean_spread(list(by_seed.values()))
        dense = dense_of.get(arch, {})
        deltas = [100 * (a - dense[s]) for s, a in by_seed.items() if s in dense]
        d_mean, d_std = mean_spread(deltas) if deltas else (None, None)
        out[(arch, pattern)] = {"mean": mean, "std": std, "n": len(by_seed), "delta": d_mean, "delta_std": d_std}
    return out


def cost_results(docs: dict[str, dict]) -> list[tuple[dict, CostResult]]:
    """(point description, its CostResult) of every measured cost point."""
    return [(doc["point"], CostResult.from_dict(doc["value"], f"{doc['key']}: value")) for doc in docs.values()
            if doc["point"]["kind"] == "cost" and doc["status"] == "ok"]


def cost_rows(docs: dict[str, dict]) -> list[dict]:
    """One flat row per measured cost point, ordered by arch, size, family, sparsity, representation.
    ``scheme`` is the scheme's text, ``pattern`` its pattern value, ``level`` its target sparsity."""
    rows = []
    for p, v in cost_results(docs):
        scheme = parse_scheme(p["scheme"])
        saving = v.ledger["dense_total"] - v.ledger["total"]
        peak_saving = v.peak_memory_bytes["dense"] - v.peak_memory_bytes["scheme"]
        rows.append({
            "arch": p["arch"], "size": p["size"], "scheme": p["scheme"], "pattern": scheme.pattern,
            "family": scheme.pattern.family, "level": scheme.target_sparsity, "rep": scheme.representation,
            "speedup": v.speedup, "time_ratio": v.time_ratio, "peak_ratio": v.peak_ratio,
            "peak": v.peak_memory_bytes["scheme"], "dense_peak": v.peak_memory_bytes["dense"],
            "ledger": v.ledger["total"], "dense_ledger": v.ledger["dense_total"],
            "ledger_share": peak_saving / saving if saving > 0 else None,
            "size_ratio": v.model_size_bytes["scheme"] / v.model_size_bytes["dense"],
            "inference_speedup": v.inference["scheme_samples_per_s"] / v.inference["dense_samples_per_s"],
            "chosen": v.representations, "batch_size": v.batch_size,
        })
    return sorted(rows, key=lambda r: (r["arch"], r["size"], r["family"], r["level"], r["rep"]))


def break_even(series: list[tuple[float, float]]) -> dict:
    """The sparsity from which a representation trains at least as fast as dense.

    ``series``: (sparsity, time_ratio) pairs. The break-even is the lowest sparsity S* such that the
    ratio is <= 1 at every measured level >= S*, linearly interpolated between the last level above 1
    and the next one. ``kind``: "interpolated"; "at_or_below" (already <= 1 at the lowest level
    measured: S* <= that level); "never" (still > 1 at the highest level: S* > it); "none" (no data)."""
    series = sorted(series)
    if not series:
        return {"kind": "none", "sparsity": None}
    above = [i for i, (_, r) in enumerate(series) if r > 1]
    if not above:
        return {"kind": "at_or_below", "sparsity": series[0][0]}
    last = above[-1]
    if last == len(series) - 1:
        return {"kind": "never", "sparsity": series[-1][0]}
    (s_a, r_a), (s_b, r_b) = series[last], series[last + 1]
    return {"kind": "interpolated", "sparsity": s_a + (r_a - 1) * (s_b - s_a) / (r_a - r_b)}


def break_even_text(b: dict) -> str:
    return {"interpolated": f"{b['sparsity']:.2f}", "at_or_below": f"<= {b['sparsity']:.2f}",
            "never": f"> {b['sparsity']:.2f}" if b["sparsity"] is not None else "-", "none": "-"}[b["kind"]]


def break_even_table(rows: list[dict]) -> dict[tuple[str, str, str, str], dict]:
    """(arch, size, family, rep) -> break_even over that family's levels (families with a level only)."""
    series: dict[tuple, list] = defaultdict(list)
    for r in rows:
        if r["pattern"].level is not None:
            series[(r["arch"], r["size"], r["family"], r["rep"])].append((r["level"], r["time_ratio"]["total"]))
    return {key: break_even(s) | {"levels": len(s)} for key, s in series.items()}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower or equal x and higher or equal y, one strictly),
    ordered by x: lower cost, higher accuracy is better."""
    front = []
    for i, (x, y) in enumerate(points):
        beaten = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def fastest(rows: list[dict]) -> dict[tuple[str, str, Pattern], dict]:
    """(arch, size, pattern) -> the row of the representation with the highest speed-up."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["arch"], r["size"], r["pattern"])
        if key not in best or r["speedup"] > best[key]["speedup"]:
            best[key] = r
    return best


def describe_pattern(pattern: Pattern) -> str:
    """``block:16x16:0.9`` -> ``block 16x16 at 90%``; ``nm:2:4`` -> ``2:4 N:M``; ``dense`` -> ``dense``."""
    if pattern.level is None:
        params = pattern.family.removeprefix(pattern.name).removeprefix(":")  # the fixed pattern's parameters
        return f"{params} N:M" if pattern.name == "nm" else pattern.family
    return f"{pattern.family.replace(':', ' ')} at {pattern.level:.0%}"


def sentence(row: dict, accuracy: dict | None) -> str:
    """'on this machine, block 16x16 at 90% trains 2.4x faster than dense at the reference size (bsr_cpp),
    costs 1.3 ± 0.4 points of accuracy, and uses 0.71x the peak memory'."""
    s = row["speedup"]
    speed = f"trains {s:.2f}x faster than dense" if s >= 1 else f"trains {1 / s:.2f}x slower than dense"
    text = f"on this machine, {describe_pattern(row['pattern'])} {speed} at the {row['size']} size ({row['rep']})"
    if accuracy and accuracy.get("delta") is not None:
        cost = -accuracy["delta"]
        spread = f" ± {accuracy['delta_std']:.1f}" if accuracy.get("delta_std") is not None else ""
        verb = "costs" if cost >= 0 else "gains"
        text += f", {verb} {abs(cost):.1f}{spread} points of accuracy (n={accuracy['n']})"
    return text + f", and uses {row['peak_ratio']:.2f}x the peak memory."


def as_chosen(rows: list[dict]) -> dict[tuple[str, str, Pattern], dict]:
    """(arch, size, pattern) -> the row of ``auto`` (what a user would pick: the fastest representation
    within dense's memory) where it was measured, else of the fastest representation."""
    best = fastest(rows)
    for r in rows:
        if r["rep"] == "auto":
            best[(r["arch"], r["size"], r["pattern"])] = r
    return best


def sentences(rows: list[dict], acc: dict, size: str, level: float = 0.9) -> list[str]:
    """One sentence per (arch, pattern at ``level`` or without a level) at ``size``, for ``auto`` (else the
    fastest representation: see ``as_chosen``)."""
    out = []
    for (arch, sz, pattern), row in sorted(as_chosen(rows).items(), key=lambda kv: (*kv[0][:2], str(kv[0][2]))):
        if sz == size and (pattern.level is None or abs(pattern.level - level) < 1e-9):
            out.append(f"{arch}: " + sentence(row, acc.get((arch, pattern))))
    return out
