"""The report: one table row per cell and three trade-off plots, from a results directory.

Writes ``report.md`` and ``accuracy_vs_sparsity.png``, ``accuracy_vs_train_time.png``,
``accuracy_vs_peak_memory.png``. Results from several machines merge: rows get a machine column.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure  # the object API: no pyplot, no global backend, Agg when saving PNG
from tabulate import tabulate

from .results import KiB, MiB, Result, is_finite, load_results
from .schemes import DEFAULT_REPRESENTATION, parse_scheme

PLOTS = ("accuracy_vs_sparsity.png", "accuracy_vs_train_time.png", "accuracy_vs_peak_memory.png")


def machine(doc: Result) -> str:
    """Where a result was measured, e.g. ``cpu x2 (AMD EPYC 7B13, avx2)`` or ``cuda (NVIDIA H100)``."""
    env = doc.env or {}
    name = env.get("gpu") if env.get("device", "cpu") != "cpu" and env.get("gpu") else env.get("cpu")
    threads = f" x{env['threads']}" if env.get("device", "cpu") == "cpu" and env.get("threads") else ""
    variant = f", {env['kernel_variant']}" if env.get("device", "cpu") == "cpu" and env.get("kernel_variant") else ""
    return f"{env.get('device', '?')}{threads} ({name or 'unknown'}{variant})"


def cell_order(doc: Result) -> tuple:
    """Dense first, then by pattern, sparsity, scheme (so representations of one pattern sit together)."""
    scheme = parse_scheme(doc.scheme)
    return (scheme.pattern.sparse, scheme.pattern.name, scheme.target_sparsity, doc.scheme, doc.seed or 0)


def series_label(doc: Result) -> str:
    """The scheme without its sparsity, so one pattern+representation is one line across sparsities.

    ``block:4x4:0.5@bsr`` -> ``block:4x4@bsr``; ``nm:2:4`` stays (it has no sparsity parameter).
    """
    scheme = parse_scheme(doc.scheme)
    family = scheme.pattern.family
    return family if scheme.representation == DEFAULT_REPRESENTATION else f"{family}@{scheme.representation}"


def _num(x, fmt: str, scale: float = 1.0):
    return format(x / scale, fmt) if is_finite(x) else None


def _pair(a, b, scale: float, fmt: str = ".1f"):
    a, b = _num(a, fmt, scale), _num(b, fmt, scale)
    return None if a is None else f"{a} / {b}" if b is not None else a


def _row(doc: Result) -> list:
    if not doc.ok:
        return [doc.arch, doc.scheme, f"{doc.status}: {doc.reason or ''}".strip(": ")] + [None] * 7
    return [
        doc.arch,
        doc.scheme,
        _num(doc.accuracy, ".3f"),
        _num(doc.realised_sparsity, ".3f"),
        _num(doc.train_time_s, ".1f"),
        _num(doc.time_ratio_vs_dense, ".2f"),
        _num(doc.inference_samples_per_s, ".0f"),
        _num(doc.peak_memory_bytes, ".1f", MiB),
        _pair(doc.model_size_bytes, doc.dense_model_size_bytes, KiB),
        _pair(doc.ledger_bytes, doc.ledger.get("dense_total"), MiB, ".2f"),
    ]


HEADERS = ["arch", "scheme", "accuracy", "realised sparsity", "train s", "time x dense", "infer samples/s",
           "peak MiB", "model KiB (dense)", "ledger MiB (dense)"]


def build_table(docs: list[Result]) -> str:
    """The github-format table: rows grouped by machine (when several) and arch, dense first."""
    machines = sorted({machine(d) for d in docs})
    seeds = {d.seed for d in docs}
    docs = sorted(docs, key=lambda d: (machine(d), d.arch, cell_order(d)))
    headers = list(HEADERS)
    rows = [_row(d) for d in docs]
    if len(seeds) > 1:  # repeated runs of a cell differ only by seed; say which row is which
        headers.insert(2, "seed")
        rows = [r[:2] + [d.seed] + r[2:] for r, d in zip(rows, docs, strict=True)]
    if len(machines) > 1:
        headers.insert(0, "machine")
        rows = [[machine(d)] + r for r, d in zip(rows, docs, strict=True)]
    # Numbers are pre-formatted strings (fixed decimals per column); align them right as numbers would be.
    align = ["left" if h in ("machine", "arch", "scheme") else "right" for h in headers]
    return tabulate(rows, headers=headers, tablefmt="github", missingval="-", disable_numparse=True, colalign=align)


def _summary(docs: list[Result], results_dir: Path) -> str:
    def values(get):
        found = sorted({str(v) for d in docs if (v := get(d)) is not None})
        return ", ".join(found) if found else "unknown"

    env = lambda key: lambda d: (d.env or {}).get(key)
    return (f"{len(docs)} cells from `{results_dir}`; budget {values(lambda d: d.budget)}; "
            f"machine {'; '.join(sorted({machine(d) for d in docs}))}; torch {values(env('torch'))}; "
            f"commit {values(env('commit'))}")


def _axes_per_arch(archs: list[str]):
    fig = Figure(figsize=(5.5 * len(archs), 4.2), layout="constrained")
    axes = fig.subplots(1, len(archs), squeeze=False)[0]
    return fig, dict(zip(archs, axes, strict=True))


def _label(doc: Result, several_machines: bool) -> str:
    return f"{doc.scheme} [{machine(doc)}]" if several_machines else doc.scheme


def plot_accuracy_vs_sparsity(docs: list[Result], path: Path) -> None:
    """One line per pattern+representation across sparsities, one subplot per arch."""
    archs = sorted({d.arch for d in docs})
    fig, axes = _axes_per_arch(archs)
    several = len({machine(d) for d in docs}) > 1
    for arch, ax in axes.items():
        series = defaultdict(list)
        for d in docs:
            if d.arch == arch:
                key = f"{series_label(d)} [{machine(d)}]" if several else series_label(d)
                series[key].append((d.realised_sparsity, d.accuracy))
        for name, points in sorted(series.items()):
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="*" if name.startswith("dense") else "o", label=name)
        ax.set(title=arch, xlabel="realised sparsity (all weights)", ylabel="test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def plot_accuracy_vs(docs: list[Result], path: Path, x_key: str, xlabel: str, scale: float = 1.0) -> None:
    """One labelled point per scheme, one subplot per arch."""
    archs = sorted({d.arch for d in docs})
    fig, axes = _axes_per_arch(archs)
    several = len({machine(d) for d in docs}) > 1
    for arch, ax in axes.items():
        for d in docs:
            if d.arch == arch:
                x, y = getattr(d, x_key) / scale, d.accuracy
                ax.plot([x], [y], marker="*" if d.pattern == "dense" else "o", linestyle="")
                ax.annotate(_label(d, several), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set(title=arch, xlabel=xlabel, ylabel="test accuracy")
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def build_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> str:
    """Load the results under ``results_dir``, write report.md and the PNGs into ``out_dir``; return the markdown.

    ValueError if there are no result documents (an empty report would hide a broken run).
    """
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    docs = load_results(results_dir)
    if not docs:
        raise ValueError(f"no result documents under {results_dir}; run the grid first (nox -s bench) "
                         f"or point the report at the directory it wrote")
    ok = [d for d in docs if d.ok]
    out_dir.mkdir(parents=True, exist_ok=True)
    made_by = f"Generated by `sparsebench report {results_dir} --out {out_dir}` from the result documents; do not edit."
    text = f"# sparsebench report\n\n{made_by}\n\n{_summary(docs, results_dir)}\n\n{build_table(docs)}\n"
    if ok:
        plot_accuracy_vs_sparsity(ok, out_dir / PLOTS[0])
        plot_accuracy_vs(ok, out_dir / PLOTS[1], "train_time_s", "training time (s)")
        plot_accuracy_vs(ok, out_dir / PLOTS[2], "peak_memory_bytes", "peak memory (MiB)", MiB)
        text += "\n" + "\n".join(f"![{p[:-4].replace('_', ' ')}]({p})" for p in PLOTS) + "\n"
    else:
        text += "\nNo cell finished with status ok, so there are no plots.\n"
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    return text
