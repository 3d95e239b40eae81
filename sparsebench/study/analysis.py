"""Numbers the study report shows, from the point documents: accuracy means and spreads, cost rows,
break-even sparsity, Pareto fronts, and the generated sentences. Pure functions of the documents'
data: each document's strings are parsed once, here, into pattern values (``patterns.Pattern``) and
``CostResult`` values; accuracy summaries are keyed by (arch, pattern value) and each cost row holds
its pattern value under ``pattern``.

Time to accuracy: per seed, the target is dense's final accuracy on the curve slice (the same seed's
dense) minus 1 and minus 3 points; a pattern's time is the training seconds of its first curve point
at or above the target (curves.py), and its multiple is that over dense's own time to the target.

Every model is named by ``model_label`` (its layers and width, from the documents), so a sentence says
which model each of its numbers was measured on.

Conventions: ``time_ratio`` is the scheme's median step time over dense's, interleaved in one
process (above 1: slower); ``speedup = 1 / time_ratio``. Spread is the sample standard deviation
over seeds (n - 1 in the denominator); with one seed there is none. Accuracy deltas are paired by
seed (pattern minus dense with the same seed), in percentage points.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from ..curves import check_curve, final_accuracy, time_to_accuracy
from ..patterns import Pattern, parse_pattern
from ..schemes import parse_scheme
from ..timing import ratio_interval
from .cost_result import CostResult

TARGET_DROPS = (1.0, 3.0)  # time-to-accuracy targets: dense's final curve accuracy minus these points


def mean_spread(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def model_label(arch: str, model: dict) -> str:
    """A model in a few words from its description (``Arch.describe``): ``2 x d64 transformer, 256 tokens``,
    ``CNN 64-128-256, fc 512``."""
    if "d_model" in model:
        return f"{model['layers']} x d{model['d_model']} transformer, {model['seq_len']} tokens"
    if "conv_filters" in model:
        return f"CNN {'-'.join(map(str, model['conv_filters']))}, fc {model['fc'][1]}"
    return arch


def _training_label(result: dict) -> str:
    """``batch 64, 8 epochs`` or ``batch 32, 600 steps``: how long the result trained."""
    training = result["budget_settings"]["arch_training"]
    length = f"{training['epochs']} epochs" if training.get("epochs") else f"{result['steps']} steps"
    return f"batch {training['batch_size']}, {length}"


def accuracy_points_of(docs: dict[str, dict]) -> dict[tuple[str, Pattern], dict[int, dict]]:
    """(arch, pattern) -> seed -> the measured accuracy point's grid result document (masks fixed at
    initialisation; ``method_rows`` compares the rest)."""
    out: dict[tuple[str, Pattern], dict[int, dict]] = defaultdict(dict)
    for doc in docs.values():
        if doc["point"]["kind"] == "accuracy" and doc["status"] == "ok" and not doc["point"].get("timing"):
            p = doc["point"]
            out[(p["arch"], parse_pattern(p["pattern"]))][p["seed"]] = doc["value"]["result"]
    return out


def accuracy_summary(docs: dict[str, dict]) -> dict[tuple[str, Pattern], dict]:
    """(arch, pattern) -> mean, std and n of accuracy, the paired delta against dense in points, and what
    it was measured on: ``budget``, ``model`` (``model_label``) and ``training`` (batch and length)."""
    results = accuracy_points_of(docs)
    dense_of = {arch: by_seed for (arch, pattern), by_seed in results.items() if not pattern.sparse}
    out = {}
    for (arch, pattern), by_seed in results.items():
        mean, std = mean_spread([r["accuracy"] for r in by_seed.values()])
        dense = dense_of.get(arch, {})
        deltas = [100 * (r["accuracy"] - dense[s]["accuracy"]) for s, r in by_seed.items() if s in dense]
        d_mean, d_std = mean_spread(deltas) if deltas else (None, None)
        some = next(iter(by_seed.values()))
        out[(arch, pattern)] = {"mean": mean, "std": std, "n": len(by_seed), "delta": d_mean, "delta_std": d_std,
                                "budget": some["budget"], "model": model_label(arch, some["model"]),
                                "training": _training_label(some),
                                "train_time_s": mean_spread([r["train_time_s"] for r in by_seed.values()])}
    return out


def time_to_accuracy_table(docs: dict[str, dict], drops=TARGET_DROPS) -> dict[tuple[str, Pattern], dict]:
    """(arch, pattern) -> drop -> the time to dense's final curve accuracy minus ``drop`` points, paired by
    seed: ``seconds`` and ``multiple`` (of dense's time) as (mean, std) over the seeds that reached it,
    ``reached`` and ``n`` (seeds with a curve and a dense of the same seed), ``target`` (mean over seeds)."""
    results = accuracy_points_of(docs)
    curves = {key: {seed: check_curve(r["curve"], f"{key[0]} {key[1]} seed {seed}: curve")
                    for seed, r in by_seed.items() if r.get("curve")} for key, by_seed in results.items()}
    dense_of = {arch: by_seed for (arch, pattern), by_seed in curves.items() if not pattern.sparse}
    out = {}
    for (arch, pattern), by_seed in curves.items():
        row = _tta_row(by_seed, dense_of.get(arch, {}), drops)
        if row is not None:
            out[(arch, pattern)] = row
    return out


def _tta_row(by_seed: dict[int, list[dict]], dense: dict[int, list[dict]], drops) -> dict | None:
    """drop -> time to dense's final curve accuracy minus ``drop`` points, paired by seed (None: no dense seed)."""
    seeds = [s for s in by_seed if s in dense]
    if not seeds:
        return None
    row = {}
    for drop in drops:
        targets = {s: final_accuracy(dense[s]) - drop / 100 for s in seeds}
        times = {s: time_to_accuracy(by_seed[s], targets[s]) for s in seeds}
        reached = [s for s in seeds if times[s] is not None]
        multiples = [times[s] / time_to_accuracy(dense[s], targets[s]) for s in reached
                     if time_to_accuracy(dense[s], targets[s])]
        row[drop] = {"n": len(seeds), "reached": len(reached), "target": statistics.fmean(targets.values()),
                     "seconds": mean_spread([times[s] for s in reached]) if reached else None,
                     "multiple": mean_spread(multiples) if multiples else None}
    return row


def method_rows(docs: dict[str, dict], drops=TARGET_DROPS) -> list[dict]:
    """The comparison of when masks are chosen, per arch: every accuracy point with a ``timing`` (a schedule or
    a distribution) and the static patterns it moves (the same pattern, mask fixed at initialisation), each
    with accuracy (mean, std, n; paired delta in points), time to accuracy (``tta``, as ``_tta_row``), the
    whole run's training seconds, and the mask updates' cost (``overhead_s_per_step``: updates and RigL's
    dense gradients, per training step; ``updates`` per run). Ordered by arch, then as first measured."""
    by: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for doc in docs.values():
        p = doc["point"]
        if p["kind"] == "accuracy" and doc["status"] == "ok":
            by[(p["arch"], p["pattern"] + p.get("timing", ""))][p["seed"]] = doc["value"]["result"]
    moved = {(arch, str(parse_scheme(label).pattern)) for (arch, label) in by if "/" in label}
    dense_of = {arch: by_seed for (arch, label), by_seed in by.items() if label == "dense"}
    rows = []
    for (arch, label), by_seed in by.items():
        if "/" not in label and (arch, label) not in moved:
            continue
        dense = dense_of.get(arch, {})
        mean, std = mean_spread([r["accuracy"] for r in by_seed.values()])
        deltas = [100 * (r["accuracy"] - dense[s]["accuracy"]) for s, r in by_seed.items() if s in dense]
        updates = [r.get("mask_updates") or {} for r in by_seed.values()]
        curves = {s: check_curve(r["curve"], f"{arch} {label} seed {s}: curve") for s, r in by_seed.items()
                  if r.get("curve")}
        dense_curves = {s: check_curve(r["curve"], f"{arch} dense seed {s}: curve") for s, r in dense.items()
                        if r.get("curve")}
        rows.append({"arch": arch, "method": label, "n": len(by_seed), "mean": mean, "std": std,
                     "delta": mean_spread(deltas) if deltas else None,
                     "train_time_s": mean_spread([r["train_time_s"] for r in by_seed.values()]),
                     "tta": _tta_row(curves, dense_curves, drops),
                     "overhead_s_per_step": mean_spread([u.get("overhead_s_per_step", 0.0) for u in updates]),
                     "updates": max(u.get("updates", 0) for u in updates),
                     "model": model_label(arch, next(iter(by_seed.values()))["model"])})
    return sorted(rows, key=lambda r: r["arch"])


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
            "chosen": v.representations, "batch_size": v.batch_size, "model": model_label(p["arch"], v.model),
            "speedup_interval": speedup_interval(v.time_s["dense"]["totals"], v.time_s["scheme"]["totals"]),
        })
    return sorted(rows, key=lambda r: (r["arch"], r["size"], r["family"], r["level"], r["rep"]))


def speedup_interval(dense: list[float], scheme: list[float]) -> tuple[float, float, int]:
    """The 95% interval of the speed-up over dense (``timing.ratio_interval`` of the interleaved pairs,
    inverted) and the pair count; NaNs with fewer than 2 pairs."""
    try:
        low, high = ratio_interval(dense, scheme)
    except ValueError:
        return float("nan"), float("nan"), len(dense)
    return 1 / high, 1 / low, len(dense)


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
    """(arch, size, family, rep) -> break_even over that family's levels (families with a level only), with
    ``interval``: the break-evens of the time ratios' 95% interval ends (the lower end of each level's
    interval gives the earliest break-even, the upper end the latest)."""
    series: dict[tuple, list] = defaultdict(list)
    for r in rows:
        if r["pattern"].level is not None:
            lo, hi, _ = r["speedup_interval"]
            series[(r["arch"], r["size"], r["family"], r["rep"])].append((r["level"], r["time_ratio"]["total"],
                                                                           1 / hi, 1 / lo))
    return {key: break_even([(lvl, t) for lvl, t, _, _ in s]) | {"levels": len(s), "interval": (
        break_even([(lvl, t) for lvl, _, t, _ in s]), break_even([(lvl, t) for lvl, _, _, t in s]))}
        for key, s in series.items()}


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


def seconds_text(mean_std) -> str:
    mean, std = mean_std
    return f"{mean:.0f}" + (f" ± {std:.0f}" if std is not None else "") + " s"


def _points_text(delta: float, delta_std: float | None, n: int) -> str:
    verb = "costs" if delta <= 0 else "gains"
    spread = f" ± {delta_std:.1f}" if delta_std is not None else ""
    return f"{verb} {abs(delta):.1f}{spread} points of final test accuracy (n={n} seed{'s' * (n != 1)})"


def time_to_accuracy_text(entry: dict | None, drop: float = TARGET_DROPS[0]) -> str | None:
    """'reaches dense's final accuracy minus 1 point in 310 s, 0.85x dense's time' or 'never reaches ...'."""
    if not entry or drop not in entry:
        return None
    t = entry[drop]
    goal = f"dense's final accuracy minus {drop:g} point{'s' * (drop != 1)} ({t['target']:.3f} on the curve slice)"
    if t["reached"] == 0:
        return f"never reaches {goal} (not reached in {t['n']} seed{'s' * (t['n'] != 1)})"
    text = f"reaches {goal} in {seconds_text(t['seconds'])} of training"
    if t["multiple"] is not None:
        mean, std = t["multiple"]
        text += f", {mean:.2f}x" + (f" ± {std:.2f}" if std is not None else "") + " dense's time"
    if t["reached"] < t["n"]:
        text += f" ({t['reached']} of {t['n']} seeds reach it)"
    return text


def sentence(row: dict, accuracy: dict | None, tta: dict | None = None) -> str:
    """One row of cost at one size, with the accuracy of the same pattern, each number naming the model
    and budget it was measured on; accuracy measured on another model than the one timed says so."""
    s, (lo, hi, n) = row["speedup"], row["speedup_interval"]
    speed = f"trains {s:.2f}x faster than dense" if s >= 1 else f"trains {1 / s:.2f}x slower than dense"
    text = (f"{describe_pattern(row['pattern'])} ({row['rep']}) {speed} per step at the {row['size']} size "
            f"({row['model']}, batch {row['batch_size']}; median of {n} interleaved steps, speed-up 95% CI "
            f"{lo:.2f}x to {hi:.2f}x) and uses {row['peak_ratio']:.2f}x dense's peak memory")
    if not accuracy or accuracy.get("delta") is None:
        return text + "; no accuracy was measured for it."
    where = f"the {accuracy['budget']} budget ({accuracy['model']}, {accuracy['training']})"
    if accuracy["model"] != row["model"]:
        text += (f"; the {row['size']} size has no accuracy (it needs the `full` budget, on a GPU), but on a "
                 f"smaller model, {where}, it")
    else:
        text += f"; trained under {where} it"
    tta_text = time_to_accuracy_text(tta)
    if tta_text:
        text += f" {tta_text}, and"
    return text + f" {_points_text(accuracy['delta'], accuracy['delta_std'], accuracy['n'])}."


def as_chosen(rows: list[dict]) -> dict[tuple[str, str, Pattern], dict]:
    """(arch, size, pattern) -> the row of ``auto`` (what a user would pick: the fastest representation
    within dense's memory) where it was measured, else of the fastest representation."""
    best = fastest(rows)
    for r in rows:
        if r["rep"] == "auto":
            best[(r["arch"], r["size"], r["pattern"])] = r
    return best


def sentences(rows: list[dict], acc: dict, size: str, level: float = 0.9, tta: dict | None = None) -> list[str]:
    """One sentence per (arch, pattern at ``level`` or without a level) at ``size``, for ``auto`` (else the
    fastest representation: see ``as_chosen``); ``tta``: ``time_to_accuracy_table``'s, for its phrase."""
    out = []
    for (arch, sz, pattern), row in sorted(as_chosen(rows).items(), key=lambda kv: (*kv[0][:2], str(kv[0][2]))):
        if sz == size and (pattern.level is None or abs(pattern.level - level) < 1e-9):
            out.append(f"{arch}: on this machine, " + sentence(row, acc.get((arch, pattern)),
                                                              (tta or {}).get((arch, pattern))))
    return out
