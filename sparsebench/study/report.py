"""STUDY.md and its plots, generated from the study's point documents (every number from a run)."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from ..results import MiB
from . import analysis
from .plots import write_plots

MEMORY_TARGET_REPS = ("csr", "bsr_cpp", "auto")  # the memory targets: peak <= dense at S >= 0.5
LEDGER_SHARE_TARGET = 0.7  # ... and at S = 0.9 at least 70% of the ledger saving reaches the peak


def _machines(docs: dict) -> list[str]:
    """One line per (architecture, machine): "this machine" in a sentence about an architecture is its line."""
    seen = {}
    for doc in docs.values():
        env = doc.get("env") or {}
        if env:
            name = (f"{env.get('cpu', '?')}, {env.get('threads', '?')} threads, kernels {env.get('kernel_variant')}, "
                    f"torch {env.get('torch')}, {env.get('device')} (class {env.get('machine_class')})")
            seen.setdefault((doc["point"]["arch"], name), set()).add(env.get("commit"))
    return [f"{arch}: {m}; commit {', '.join(sorted(c for c in commits if c))}"
            for (arch, m), commits in sorted(seen.items())]


SEQUENCE_LENGTH_WHY = (
    "The reference transformer is costed at 256 tokens, its own context length (`REFERENCE_TRANSFORMER.seq_len`, "
    "to which its reviews are cut and padded), batch 16: 4096 tokens a step, the token count of the layer "
    "benchmark (`docs/layers.md`), so both time the same products. A shorter length would shrink the "
    "activations and so raise the weights' share of the peak (flattering sparse storage); a longer one the opposite.")


def _budgets(docs: dict) -> str:
    names = sorted({d["point"]["budget"] for d in docs.values() if d["point"]["kind"] == "accuracy"})
    return ", ".join(f"`{n}`" for n in names) or "(none)"


def _sizes(docs: dict) -> list[str]:
    """One line per (size, arch): the model and batch its cost points used, from the documents."""
    seen = {}
    for p, v in analysis.cost_results(docs):
        model = {k: x for k, x in v.model.items() if k != "vocab_size"}
        seen.setdefault((p["size"], p["arch"]), f"batch {v.batch_size}, " + ", ".join(
            f"{k} {x}" for k, x in model.items()))
    return [f"- `{size}` {arch}: {text}" for (size, arch), text in sorted(seen.items())]


def _pm(mean, std, fmt=".3f", scale=1.0) -> str:
    if mean is None:
        return "-"
    return f"{mean * scale:{fmt}}" + (f" ± {std * scale:{fmt}}" if std is not None else "")


def _by_arch_then_pattern(items):
    return sorted(items, key=lambda kv: (kv[0][0], kv[0][1].sparse, str(kv[0][1])))


def accuracy_table(acc: dict) -> str:
    rows = [[arch, s["model"], f"{s['budget']} ({s['training']})", str(pattern), s["n"], _pm(s["mean"], s["std"]),
             _pm(s["delta"], s["delta_std"], ".1f"), _pm(*s["train_time_s"], ".0f")]
            for (arch, pattern), s in _by_arch_then_pattern(acc.items())]
    return tabulate(rows, ["arch", "model", "budget", "pattern", "seeds", "test accuracy (mean ± std)",
                           "vs dense (points, paired)", "training s (mean ± std)"], tablefmt="github")


def time_to_accuracy_md(tta: dict, acc: dict) -> str:
    """Per (arch, pattern): each target's seconds and multiple of dense's time, or "not reached"."""
    drops = sorted({d for row in tta.values() for d in row})
    header = ["arch", "model, budget", "pattern", "seeds"]
    for d in drops:
        header += [f"s to dense - {d:g} pt", f"x dense (- {d:g} pt)"]
    body = []
    for (arch, pattern), row in _by_arch_then_pattern(tta.items()):
        s = acc.get((arch, pattern), {})
        line = [arch, f"{s.get('model', '?')}, {s.get('budget', '?')}", str(pattern), row[drops[0]]["n"]]
        for d in drops:
            t = row[d]
            if t["reached"] == 0:
                line += ["not reached", "-"]
                continue
            some = "" if t["reached"] == t["n"] else f" ({t['reached']} of {t['n']})"
            line += [_pm(*t["seconds"], ".0f") + some, "-" if t["multiple"] is None else _pm(*t["multiple"], ".2f")]
        body.append(line)
    return tabulate(body, header, tablefmt="github")


def methods_md(rows: list[dict]) -> str:
    """The method comparison (``analysis.method_rows``): accuracy, time to accuracy, whole-run training time,
    and the mask updates' cost."""
    drops = analysis.TARGET_DROPS
    header = ["arch", "model", "method", "seeds", "test accuracy", "vs dense (points)",
              *[f"s to dense - {d:g} pt (x dense)" for d in drops], "training s (whole run)", "updates",
              "update ms per step"]
    body = []
    for r in rows:
        line = [r["arch"], r["model"], r["method"], r["n"], _pm(r["mean"], r["std"]),
                _pm(*r["delta"], ".1f") if r["delta"] else "-"]
        for d in drops:
            t = (r["tta"] or {}).get(d)
            if not t or t["reached"] == 0:
                line.append("not reached" if t else "-")
                continue
            some = "" if t["reached"] == t["n"] else f", {t['reached']} of {t['n']}"
            multiple = "" if t["multiple"] is None else f" ({_pm(*t['multiple'], '.2f')}x{some})"
            line.append(_pm(*t["seconds"], ".0f") + multiple)
        line += [_pm(*r["train_time_s"], ".0f"), r["updates"], _pm(*r["overhead_s_per_step"], ".1f", 1e3)]
        body.append(line)
    return tabulate(body, header, tablefmt="github")


def best_method_sentence(rows: list[dict], arch: str) -> str | None:
    """Which method reached dense's final accuracy minus 1 point (else 3) soonest on this machine; else
    which ended most accurate. One sentence, or None without rows for ``arch``."""
    mine = [r for r in rows if r["arch"] == arch]
    if not mine:
        return None
    for drop in analysis.TARGET_DROPS:
        reached = [r for r in mine if r["tta"] and r["tta"][drop]["reached"] == r["tta"][drop]["n"] > 0]
        if reached:
            best = min(reached, key=lambda r: r["tta"][drop]["seconds"][0])
            return (f"{arch} ({best['model']}): on this machine `{best['method']}` reaches dense's final accuracy "
                    f"minus {drop:g} point{'s' if drop != 1 else ''} soonest, after "
                    f"{best['tta'][drop]['seconds'][0]:.0f} s of training (n={best['n']} seed"
                    f"{'s' if best['n'] != 1 else ''}).")
    best = max(mine, key=lambda r: r["mean"])
    return (f"{arch} ({best['model']}): no method reaches dense's final accuracy minus "
            f"{max(analysis.TARGET_DROPS):g} points in every seed; `{best['method']}` ends most accurate "
            f"({best['mean']:.3f}, n={best['n']}, {best['train_time_s'][0]:.0f} s of training).")


def break_even_md(rows: list[dict]) -> str:
    table = analysis.break_even_table(rows)
    reps = sorted({k[3] for k in table})
    groups = sorted({k[:3] for k in table})
    speed = {(r["arch"], r["size"], r["family"], r["rep"]): r for r in rows}

    def cell(key):
        if key not in table:
            return ""
        if table[key]["levels"] == 1:  # one level measured (masked's cost does not depend on S): no crossing
            r = speed[key]
            lo, hi, _ = r["speedup_interval"]
            return f"({r['speedup']:.2f}x [{lo:.2f}-{hi:.2f}] at {r['level']:.2f} only)"
        early, late = (analysis.break_even_text(b) for b in table[key]["interval"])
        return f"{analysis.break_even_text(table[key])} [{early}, {late}]"

    body = [[arch, size, fam] + [cell((arch, size, fam, r)) for r in reps] for arch, size, fam in groups]
    return tabulate(body, ["arch", "size", "pattern"] + reps, tablefmt="github")


def _chosen(row: dict) -> str:
    if row["rep"] != "auto":
        return ""
    counts: dict[str, int] = {}
    for rep in row["chosen"].values():
        counts[rep] = counts.get(rep, 0) + 1
    return ", ".join(f"{rep} {n}" for rep, n in sorted(counts.items()))


def cost_table(rows: list[dict]) -> str:
    body = [[r["arch"], r["size"], r["scheme"], f"{r['speedup']:.2f}",
             "{:.2f}-{:.2f}".format(*r["speedup_interval"][:2]), f"{r['time_ratio']['forward']:.2f}",
             f"{r['time_ratio']['backward']:.2f}", f"{r['time_ratio']['optimizer']:.2f}",
             f"{r['peak'] / MiB:.1f} / {r['dense_peak'] / MiB:.1f}", f"{r['peak_ratio']:.2f}",
             f"{r['ledger'] / MiB:.2f} / {r['dense_ledger'] / MiB:.2f}",
             "-" if r["ledger_share"] is None else f"{r['ledger_share']:.0%}", f"{r['size_ratio']:.2f}",
             f"{r['inference_speedup']:.2f}", _chosen(r)] for r in rows]
    return tabulate(body, ["arch", "size", "scheme", "speed-up", "95% CI", "fwd x", "bwd x", "opt x",
                           "peak MiB (dense)", "peak x", "ledger MiB (dense)", "ledger saving in peak", "model size x",
                           "inference speed-up", "auto chose (layers)"], tablefmt="github")


def memory_targets(rows: list[dict]) -> tuple[str, int, int]:
    """The memory targets per cell: peak <= dense (S >= 0.5), ledger saving in the peak >= 70% (S = 0.9)."""
    body, met, total = [], 0, 0
    for r in rows:
        if r["rep"] not in MEMORY_TARGET_REPS or r["level"] < 0.5:
            continue
        ok_peak = r["peak_ratio"] <= 1.0
        share_target = abs(r["level"] - 0.9) < 1e-9
        ok_share = (r["ledger_share"] or 0) >= LEDGER_SHARE_TARGET if share_target else None
        ok = ok_peak and ok_share is not False
        met, total = met + ok, total + 1
        body.append([r["arch"], r["size"], r["scheme"], f"{r['peak_ratio']:.2f}", "yes" if ok_peak else "**no**",
                     "-" if r["ledger_share"] is None else f"{r['ledger_share']:.0%}",
                     {None: "", True: "yes", False: "**no**"}[ok_share]])
    return (tabulate(body, ["arch", "size", "scheme", "peak / dense", "peak <= dense", "ledger saving in peak",
                            ">= 70% (S = 0.9)"], tablefmt="github"), met, total)


def build_study_report(docs: dict, problems: list[str], out_dir: Path, command: str) -> Path:
    """Write ``out_dir/STUDY.md`` and the plots; return the STUDY.md path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    acc = analysis.accuracy_summary(docs)
    tta = analysis.time_to_accuracy_table(docs)
    rows = analysis.cost_rows(docs)
    plots = write_plots(rows, acc, out_dir, analysis.accuracy_points_of(docs))
    sizes = sorted({r["size"] for r in rows}, key=lambda s: (s != "reference", s))
    lines = ["# The study: where sparsity pays", "",
             f"Generated by `{command}` from {len(docs)} point documents. Every number below comes from those "
             "documents; rerun the command to regenerate this file and its plots.", "",
             "Measured on (per architecture; \"this machine\" in a sentence about an architecture is its own):",
             *[f"- {m}" for m in _machines(docs)], "",
             f"Accuracy: the {_budgets(docs)} budget, trained once per (arch, pattern, sparsity, seed) with "
             "`PATTERN@auto` (each layer the fastest valid representation here within dense's memory, what a user "
             "would pick for speed; every representation computes the same function), on the whole test split; "
             "its learning curve on a fixed slice of it (`sparsebench.curves`), training seconds only. Spread: "
             "the sample standard deviation over seeds (none with one seed); deltas against dense are paired by "
             "seed, in percentage points. Cost: per (arch, "
             "size, scheme), a fresh dense and a fresh scheme model stepped interleaved in one process on the same"
             " batch; speed-up = dense's median step time / the scheme's (above 1: faster); fwd/bwd/opt x = the "
             "scheme's phase time over dense's (above 1: slower); peak = memray's peak heap of a separate untimed "
             "pass (build, optimizer, steps) taken after the process is warm.", "", "Sizes costed:", *_sizes(docs), ""]
    if any(r["size"] == "reference" and r["arch"] == "transformer" for r in rows):
        lines += [SEQUENCE_LENGTH_WHY, ""]
    if rows:
        lines += ["## In a sentence", ""]
        for size in sizes:
            lines += [f"- {s}" for s in analysis.sentences(rows, acc, size, tta=tta)]
        levels = sorted({r["level"] for r in rows if r.get("level") is not None}) or [0.0]
        lines += ["", "## Break-even sparsity (training step time)", "",
                  "The lowest sparsity from which the representation trains at least as fast as dense "
                  f"(interpolated between measured levels; `<= {levels[0]:.2f}`: already at the lowest level "
                  f"measured; `> {levels[-1]:.2f}`: not even at the highest). In brackets: the break-evens of the "
                  "ends of each level's 95% interval (paired bootstrap over the interleaved steps), earliest first; "
                  "a point measured at one level only shows its speed-up and that interval.", "",
                  break_even_md(rows), ""]
    if "speedup_vs_sparsity.png" in plots:
        lines += ["![speed-up vs sparsity](speedup_vs_sparsity.png)", ""]
    if acc:
        lines += ["## Accuracy", "", accuracy_table(acc), ""]
        if "accuracy_vs_sparsity.png" in plots:
            lines += ["![accuracy vs sparsity](accuracy_vs_sparsity.png)", ""]
    if tta:
        drops = " and ".join(f"{d:g}" for d in analysis.TARGET_DROPS)
        lines += ["## Time to accuracy", "",
                  f"Training seconds on this machine until the learning curve first reaches dense's final curve "
                  f"accuracy minus {drops} points (per seed, against the same seed's dense), and that time as a "
                  "multiple of dense's own; `not reached`: the pattern's curve never got there. The resolution is "
                  "the curve's spacing (one evaluation every so many steps).", "", time_to_accuracy_md(tta, acc), ""]
        if "accuracy_vs_time.png" in plots:
            lines += ["![accuracy vs training time](accuracy_vs_time.png)", ""]
    methods = analysis.method_rows(docs)
    if methods:
        lines += ["## When the mask is chosen", "",
                  "Static patterns (mask fixed at initialisation) against the same pattern pruned gradually "
                  "(`gmp`, `oneshot`) or moved during training (`set`, `rigl`), and `erk` layer-wise sparsity, all "
                  f"trained with `@auto` on the {_budgets(docs)} budget. Training seconds are the whole run's, "
                  "a gradual schedule's dense phase and every mask update included; update ms per step: the mask "
                  "updates and RigL's dense gradients, over every training step.", "",
                  *[f"- {s}" for s in (best_method_sentence(methods, a) for a in sorted({r['arch'] for r in methods}))
                    if s], "", methods_md(methods), ""]
    if "pareto_time.png" in plots:
        lines += ["## Pareto fronts", "", "Each pattern at its fastest representation for that size; accuracy "
                  f"from the {_budgets(docs)} budget, on the model each panel's title names.", "",
                  "![accuracy vs step time](pareto_time.png)", "",
                  "![accuracy vs peak memory](pareto_memory.png)", ""]
    if rows:
        table, met, total = memory_targets(rows)
        lines += ["## Peak memory against dense (the memory targets)", "",
                  f"`csr`, `bsr_cpp` and `auto` at S >= 0.5: peak training memory <= dense, and at S = 0.9 at "
                  f"least 70% of the ledger's saving reaching the peak. Met by {met} of {total} cells.", "", table, "",
                  "## Cost per point", "", f"{len(rows)} points.", "",
                  cost_table(rows), ""]
    skipped = [f"- {d['key']}: {d['reason']}" for d in docs.values() if d["status"] != "ok"]
    if skipped or problems:
        lines += ["## Not in this report", "", *skipped, *[f"- {p}" for p in problems], ""]
    path = out_dir / "STUDY.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
