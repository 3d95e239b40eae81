"""The study's PNG plots, from ``analysis``'s numbers (matplotlib's object API, no pyplot state).

Readable at a glance: a pattern family has one colour in every plot (``family_colour``), so a scheme
looks the same everywhere; a panel shows one representation or one family, so its legend stays short
(at most about eight entries); ratio axes are logarithmic with plain ticks (0.5x, 1x, 2x); points are
told apart by colour and marker, not by text labels that could overlap. Every title names the model
and budget its numbers were measured on."""

from __future__ import annotations

import zlib
from collections import defaultdict
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from .analysis import fastest, pareto_front

PLOTS = ("accuracy_vs_sparsity.png", "speedup_vs_sparsity.png", "pareto_time.png", "pareto_memory.png",
         "accuracy_vs_time.png")
# the study's default families, each its own colour; any other family gets one from the palette by its name
FAMILY_COLOURS = {"dense": "black", "random": "tab:blue", "magnitude": "tab:orange", "block:4x4": "tab:green",
                  "block:16x16": "tab:red", "nm:2:4": "tab:purple"}
_SPARE = [colormaps["tab10"](i) for i in (5, 6, 7, 8, 9)]  # brown, pink, grey, olive, cyan
LEVEL_MARKERS = {0.5: "o", 0.75: "s", 0.9: "^", 0.95: "D"}
LEVEL_STYLES = {0.5: ":", 0.75: "-.", 0.9: "-", 0.95: "--"}
MAX_LEGEND = 8  # above this many lines, a panel is split by family


def family_colour(family: str):
    return FAMILY_COLOURS.get(family) or _SPARE[zlib.crc32(family.encode()) % len(_SPARE)]


def _marker(level: float | None) -> str:
    return "*" if level is None else LEVEL_MARKERS.get(level, "P")


def _grid(n_panels: int, n_cols: int, width: float = 5.2, height: float = 3.9):
    n_cols = max(1, min(n_cols, n_panels))
    n_rows = max(1, -(-n_panels // n_cols))
    fig = Figure(figsize=(width * n_cols, height * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def ratio_axis(ax, values: list[float], axis: str = "y") -> None:
    """A logarithmic ratio axis with plain ticks (0.5x, 1x, 2x) spanning ``values`` and 1."""
    finite = [v for v in values if v and v > 0] + [1.0]
    lo, hi = min(finite) / 1.15, max(finite) * 1.15
    candidates = (0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 10, 20)
    ticks = [t for t in candidates if lo <= t <= hi]
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    (ax.set_ylim if axis == "y" else ax.set_xlim)(lo, hi)
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    target.set_minor_locator(NullLocator())


def _label(pattern) -> str:
    return "dense" if not pattern.sparse else str(pattern)


def accuracy_vs_sparsity(acc: dict, path: Path) -> None:
    archs = sorted({a for a, _ in acc})
    fig, axes = _grid(len(archs), 2)
    for ax, arch in zip(axes, archs, strict=False):
        series = defaultdict(list)
        meta = None
        for (a, pattern), s in acc.items():
            if a != arch:
                continue
            meta = meta or s
            if not pattern.sparse:
                ax.axhline(s["mean"], color="black", lw=1, label="dense")
                if s["std"]:
                    ax.axhspan(s["mean"] - s["std"], s["mean"] + s["std"], color="black", alpha=0.1)
                continue
            series[pattern.family].append((pattern.target_sparsity, s["mean"], s["std"] or 0.0))
        for family, pts in sorted(series.items()):
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt="o-", capsize=3,
                        color=family_colour(family), label=family, ms=4)
        ax.set(title=f"{arch}: {meta['model']}\n{meta['budget']} budget ({meta['training']}); mean ± std over seeds",
               xlabel="sparsity", ylabel="test accuracy")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def speedup_vs_sparsity(rows: list[dict], path: Path) -> None:
    """One panel per (arch, size, representation): each family's speed-up against sparsity."""
    panels = sorted({(r["arch"], r["size"], r["rep"]) for r in rows})
    reps = sorted({r["rep"] for r in rows})
    fig, axes = _grid(len(panels), len(reps))
    for ax, (arch, size, rep) in zip(axes, panels, strict=False):
        series = defaultdict(list)
        mine = [r for r in rows if (r["arch"], r["size"], r["rep"]) == (arch, size, rep)]
        for r in mine:
            series[r["family"]].append((r["level"], r["speedup"]))
        for family, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=family_colour(family), label=family, ms=4)
        ax.axhline(1.0, color="black", lw=1.0, label="dense speed")
        ratio_axis(ax, [r["speedup"] for r in mine])
        ax.set(title=f"{arch} @{rep}, {size} size\n{mine[0]['model']}, batch {mine[0]['batch_size']}",
               xlabel="sparsity", ylabel="training speed-up vs dense")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def pareto(rows: list[dict], acc: dict, path: Path, metric: str, xlabel: str) -> None:
    """Accuracy (mean ± std over seeds) against a cost ratio vs dense, per (arch, size): each pattern at its
    fastest representation, coloured by family, its marker by sparsity; the front (nothing cheaper is as
    accurate) joined by a line."""
    best = fastest(rows)
    panels = sorted({(a, s) for a, s, _ in best})
    fig, axes = _grid(len(panels), 2)
    levels_seen = set()
    for ax, (arch, size) in zip(axes, panels, strict=False):
        dense = next(((p, s) for (a, p), s in acc.items() if a == arch and not p.sparse), None)
        pts, styles = [], []
        if dense is not None:
            pts.append((1.0, dense[1]["mean"], dense[1]["std"] or 0.0))
            styles.append(("dense", None))
        model = None
        for (a, s, pattern), r in sorted(best.items(), key=lambda kv: (*kv[0][:2], str(kv[0][2]))):
            if (a, s) == (arch, size) and (arch, pattern) in acc:
                x = r["time_ratio"]["total"] if metric == "time" else r["peak_ratio"]
                pts.append((x, acc[(arch, pattern)]["mean"], acc[(arch, pattern)]["std"] or 0.0))
                styles.append((pattern.family, pattern.level))
                model = r["model"]
        if not pts:
            continue
        families_done = set()
        for (x, y, err), (family, level) in zip(pts, styles, strict=True):
            levels_seen.add(level)
            ax.errorbar([x], [y], yerr=[err], fmt=_marker(level) if family != "dense" else "o", capsize=2, ms=6,
                        color=family_colour(family), label=None if family in families_done else family)
            families_done.add(family)
        front = pareto_front([(x, y) for x, y, _ in pts])
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="grey", lw=1, label="Pareto front")
        ax.axvline(1.0, color="black", lw=0.8)
        ratio_axis(ax, [p[0] for p in pts], axis="x")
        some = next((s for (a, _), s in acc.items() if a == arch), {})
        ax.set(title=f"{arch}: cost at the {size} size ({model})\naccuracy: {some.get('budget')} budget, "
                     f"{some.get('model')}", xlabel=f"{xlabel} / dense", ylabel="test accuracy")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    handles = [Line2D([], [], ls="", marker=_marker(lv), color="grey", label=f"S = {lv:g}")
               for lv in sorted(v for v in levels_seen if v is not None)]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, title="sparsity")
    fig.savefig(path, dpi=110)


def accuracy_vs_time(curves: dict, acc: dict, path: Path) -> None:
    """Curve-slice accuracy against training seconds, dense and each pattern, one panel per arch (per
    (arch, family) when an arch has more than ``MAX_LEGEND`` patterns). ``curves``: (arch, pattern) ->
    seed -> result document; each seed is one line."""
    archs = sorted({a for a, _ in curves})
    panels = []
    for arch in archs:
        patterns = [p for a, p in curves if a == arch]
        families = sorted({p.family for p in patterns if p.sparse})
        if len(patterns) <= MAX_LEGEND:
            panels.append((arch, None))
        else:
            panels += [(arch, f) for f in families]
    fig, axes = _grid(len(panels), 2)
    for ax, (arch, family) in zip(axes, panels, strict=False):
        labelled = set()
        for (a, pattern), by_seed in sorted(curves.items(), key=lambda kv: (kv[0][1].sparse, str(kv[0][1]))):
            if a != arch or (family is not None and pattern.sparse and pattern.family != family):
                continue
            for result in by_seed.values():
                points = (result.get("curve") or {}).get("points") or []
                if not points:
                    continue
                label = _label(pattern)
                style = "-" if pattern.level is None else LEVEL_STYLES.get(pattern.level, "-")
                ax.plot([p["seconds"] for p in points], [p["accuracy"] for p in points], style, marker=".",
                        color=family_colour(pattern.family if pattern.sparse else "dense"), lw=1.2,
                        label=None if label in labelled else label)
                labelled.add(label)
        some = next((s for (a, _), s in acc.items() if a == arch), {})
        ax.set(title=f"{arch}{'' if family is None else ' ' + family}: {some.get('model')}\n"
                     f"{some.get('budget')} budget ({some.get('training')}); each line one seed",
               xlabel="training seconds on this machine", ylabel="accuracy on the curve slice")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def write_plots(rows: list[dict], acc: dict, out_dir: Path, curves: dict | None = None) -> list[str]:
    """Every plot there is data for; returns the file names written."""
    written = []
    if acc and any(p.sparse and p.level is not None for _, p in acc):
        accuracy_vs_sparsity(acc, out_dir / PLOTS[0])
        written.append(PLOTS[0])
    if rows:
        speedup_vs_sparsity(rows, out_dir / PLOTS[1])
        written.append(PLOTS[1])
    if rows and acc:
        pareto(rows, acc, out_dir / PLOTS[2], "time", "training step time")
        pareto(rows, acc, out_dir / PLOTS[3], "memory", "peak training memory")
        written += [PLOTS[2], PLOTS[3]]
    if curves and any((r.get("curve") or {}).get("points") for by_seed in curves.values() for r in by_seed.values()):
        accuracy_vs_time(curves, acc, out_dir / PLOTS[4])
        written.append(PLOTS[4])
    return written
