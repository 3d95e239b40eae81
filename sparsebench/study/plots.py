"""The study's PNG plots, from ``analysis``'s numbers (matplotlib's object API, no pyplot state).

A representation's colour is its place in ``schemes.STORES`` in a qualitative colormap, so every
registered representation has one, the same in every plot."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from ..schemes import STORES
from .analysis import fastest, pareto_front

PLOTS = ("accuracy_vs_sparsity.png", "speedup_vs_sparsity.png", "pareto_time.png", "pareto_memory.png")
_PALETTE = colormaps["tab10" if len(STORES) <= 10 else "tab20"]
REP_COLOURS = {rep: _PALETTE(i % _PALETTE.N) for i, rep in enumerate(STORES)}
FAMILY_STYLES = ["o-", "s--", "^-.", "D:", "v-"]


def _grid(n_rows: int, n_cols: int, width: float = 5.5, height: float = 4.0):
    fig = Figure(figsize=(width * n_cols, height * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    return fig, axes


def accuracy_vs_sparsity(acc: dict, path: Path) -> None:
    archs = sorted({a for a, _ in acc})
    fig, axes = _grid(1, max(1, len(archs)))
    for ax, arch in zip(axes[0], archs, strict=False):
        series = defaultdict(list)
        for (a, pattern), s in acc.items():
            if a != arch:
                continue
            if not pattern.sparse:
                ax.axhline(s["mean"], color="black", lw=1, label="dense")
                if s["std"]:
                    ax.axhspan(s["mean"] - s["std"], s["mean"] + s["std"], color="black", alpha=0.1)
                continue
            series[pattern.family].append((pattern.target_sparsity, s["mean"], s["std"] or 0.0))
        for (label, pts), style in zip(sorted(series.items()), FAMILY_STYLES * 3, strict=False):
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=style, capsize=3,
                        label=label)
        ax.set(title=f"{arch}: accuracy vs sparsity (mean ± std over seeds)", xlabel="sparsity",
               ylabel="test accuracy")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def speedup_vs_sparsity(rows: list[dict], path: Path) -> None:
    panels = sorted({(r["arch"], r["size"]) for r in rows})
    fig, axes = _grid(max(1, (len(panels) + 1) // 2), 2)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (arch, size) in zip(axes.flat, panels, strict=False):
        series = defaultdict(list)
        for r in rows:
            if (r["arch"], r["size"]) == (arch, size):
                series[(r["family"], r["rep"])].append((r["level"], r["speedup"]))
        families = sorted({f for f, _ in series})
        for (fam, rep), pts in sorted(series.items()):
            pts.sort()
            style = FAMILY_STYLES[families.index(fam) % len(FAMILY_STYLES)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=REP_COLOURS.get(rep), label=f"{fam}@{rep}",
                    ms=4)
        ax.axhline(1.0, color="black", lw=1.2, label="break-even (dense speed)")
        ax.set_yscale("log")
        ax.set(title=f"{arch}, {size} size: training speed-up vs dense", xlabel="sparsity",
               ylabel="speed-up (dense step time / scheme's)")
        ax.legend(fontsize=6, ncol=2)
    fig.savefig(path, dpi=110)


def pareto(rows: list[dict], acc: dict, path: Path, metric: str, xlabel: str) -> None:
    """Accuracy (ci budget, mean ± std) against a cost ratio vs dense, per (arch, size): each pattern
    at its fastest representation; the front (nothing cheaper is as accurate) joined by a line."""
    best = fastest(rows)
    panels = sorted({(a, s) for a, s, _ in best})
    fig, axes = _grid(max(1, (len(panels) + 1) // 2), 2)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (arch, size) in zip(axes.flat, panels, strict=False):
        dense = next((s for (a, pattern), s in acc.items() if a == arch and not pattern.sparse), None)
        pts, labels, errs = [(1.0, dense["mean"])] if dense is not None else [], [], []
        if pts:
            labels.append("dense")
            errs.append(dense["std"] or 0.0)
        for (a, s, pattern), r in sorted(best.items(), key=lambda kv: (*kv[0][:2], str(kv[0][2]))):
            if (a, s) == (arch, size) and (arch, pattern) in acc:
                x = r["time_ratio"]["total"] if metric == "time" else r["peak_ratio"]
                pts.append((x, acc[(arch, pattern)]["mean"]))
                labels.append(f"{pattern}@{r['rep']}")
                errs.append(acc[(arch, pattern)]["std"] or 0.0)
        if not pts:
            continue
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=errs, fmt="o", color="tab:blue", capsize=2, ms=4)
        for (x, y), label in zip(pts, labels, strict=True):
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="tab:red", label="Pareto front")
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set(title=f"{arch}: accuracy vs {xlabel} ({size} size)", xlabel=f"{xlabel} / dense",
               ylabel="test accuracy")
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def write_plots(rows: list[dict], acc: dict, out_dir: Path) -> list[str]:
    """Every plot there is data for; returns the file names written."""
    written = []
    if acc:
        accuracy_vs_sparsity(acc, out_dir / PLOTS[0])
        written.append(PLOTS[0])
    if rows:
        speedup_vs_sparsity(rows, out_dir / PLOTS[1])
        written.append(PLOTS[1])
    if rows and acc:
        pareto(rows, acc, out_dir / PLOTS[2], "time", "training step time")
        pareto(rows, acc, out_dir / PLOTS[3], "memory", "peak training memory")
        written += [PLOTS[2], PLOTS[3]]
    return written
