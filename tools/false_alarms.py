"""The gate's false-alarm rate on unchanged code (A/A), both ways the gate judges time, and what the
changes and intervals say about the tolerances.

    python tools/false_alarms.py --runs 5 -- --budget ci --schemes random:0.9@csr   # side by side
    python tools/false_alarms.py --report-only    # rewrite docs/time-gate.md from the runs already made

Side by side: each run is ``sparsebench continuous HEAD HEAD`` (arguments after ``--`` go to it) into
``results/aa/run<i>/``; the page lists every cell's change (HEAD's time ratio over BASE's) with its 95%
interval per run, the cells that alarmed, and the widest change seen, against ``continuous.TIME_TOLERANCE``.

Stored baselines: the grid run N times into ``results/grid-runs/run<i>/`` (``pytest benchmarks/test_grid.py
--results-dir ...``); leave one out: each run is gated, by the gate itself, against baselines made by
``update_baselines`` from the other runs, so a run is never judged against numbers it helped make.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "results" / "aa"
GRID_RUNS = ROOT / "results" / "grid-runs"
FLOORS = (0.05, 0.10, 0.15, 0.20, 0.25)  # candidate floors of the stored-baseline time tolerance
MULTIPLES = (1.0, 1.5, 2.0, 3.0)  # candidate multiples of the runs' spread in it
SLOWDOWN = ROOT / "results" / "slowdown"  # a side-by-side run with kernels made slower (inject_slowdown.py)
# runs of the same code from other sessions, gated against all of GRID_RUNS
OTHER_RUNS = ROOT / "results" / "grid-other"


def run(i: int, args: list[str]) -> None:
    out = RUNS / f"run{i}"
    command = [sys.executable, "-m", "sparsebench", "continuous", "HEAD", "HEAD", "--out", str(out), *args]
    print(f"A/A run {i}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=ROOT)  # exit 1 is an alarm, which is what is counted here


def side_by_side(command: str) -> list[str]:
    from sparsebench.continuous import MIN_GATED_PAIRS, TIME_TOLERANCE

    docs = []
    for path in sorted(RUNS.glob("run*/comparison.json"), key=lambda p: int(p.parent.name[3:])):
        doc = json.loads(path.read_text())
        if doc.get("errors"):
            raise SystemExit(f"{path}: the run had errors ({doc['errors'][0]}); rerun it")
        docs.append((path.parent.name, doc))
    if not docs:
        return ["## Side by side (`sparsebench continuous`)", "",
                f"No A/A runs under {RUNS}; run this tool without --report-only first.", ""]
    classes = {d["machine_class"] for _, d in docs}
    commits = {d["base"]["commit"][:12] for _, d in docs}
    cells: dict[str, list[str]] = {}
    alarms, widest = [], 0.0
    for name, doc in docs:
        for v in doc["verdicts"]:
            if v["metric"] != "time_ratio_vs_dense":
                if not v["ok"]:
                    alarms.append(f"{name} {v['cell']} {v['metric']}")
                continue
            change = v["head"] / v["base"]
            ci = v["line"].split("[95% CI ")[1].split("]")[0]
            widest = max(widest, abs(change - 1))
            cells.setdefault(v["cell"], []).append(f"x{change:.3f} [{ci}]" + ("" if v["ok"] else " ALARM"))
            if not v["ok"]:
                alarms.append(f"{name} {v['cell']} time")
    header = "| cell | " + " | ".join(n for n, _ in docs) + " |"
    rows = [header, "|" + " --- |" * (len(docs) + 1)]
    rows += [f"| {cell} | " + " | ".join(changes) + " |" for cell, changes in cells.items()]
    budget = {d["budget"] for _, d in docs}
    first = docs[0][1]
    archs = " ".join(dict.fromkeys(a for a, _ in first["cells"]))
    schemes = " ".join(dict.fromkeys(s for _, s in first["cells"]))
    made = f"python tools/false_alarms.py --runs {len(docs)} -- --budget {first['budget']} --archs {archs} " \
           f"--schemes {schemes}"
    return [
        "## Side by side (`sparsebench continuous`)", "",
        f"Measured by `{made}` (results/aa/, not committed); this section rewritten by `{command}`.", "",
        f"{len(docs)} side-by-side runs of commit {', '.join(sorted(commits))} "
        f"against itself, budget {', '.join(sorted(budget))}, on machine class {', '.join(sorted(classes))}.", "",
        "Each entry: HEAD's time ratio against dense over BASE's (both the same code, run as two processes, "
        "alternating), and the 95% interval of that change. A time alarm needs the whole interval above "
        f"x{1 + TIME_TOLERANCE:.2f} (`continuous.TIME_TOLERANCE` = {TIME_TOLERANCE}); with fewer than "
        f"{MIN_GATED_PAIRS} timed pairs a side (`continuous.MIN_GATED_PAIRS`) the change is shown, not gated.", "",
        *rows, "",
        f"False alarms: {len(alarms)} in {sum(len(c) for c in cells.values())} cell comparisons"
        + (f" ({', '.join(alarms)})." if alarms else "."),
        f"Largest change of unchanged code: {100 * widest:.1f}% (the tolerance is {100 * TIME_TOLERANCE:.0f}%).", ""]


def describe_other(d: Path) -> str:
    """Where a run of another session came from: its commit and when it ran (its files' times)."""
    import datetime

    from sparsebench.results import scan_results

    found = scan_results(d)
    commits = sorted({r.env.get("commit") for _, r in found if not isinstance(r, ValueError)})
    when = max(p.stat().st_mtime for p, _ in found)
    made = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return f"a run of commit {', '.join(commits)} made {made:%Y-%m-%d %H:%M} UTC"


def stored(command: str) -> list[str]:
    """Leave one out over the grid runs: each run gated against baselines made from the others."""
    import tempfile

    from sparsebench.baselines import baseline_path, load_baseline, update_baselines
    from sparsebench.gate import check_dir
    from sparsebench.results import scan_results

    dirs = sorted((d for d in GRID_RUNS.glob("run*") if (d / ".done").is_file()), key=lambda d: int(d.name[3:]))
    if len(dirs) < 3:
        return ["## Stored baselines", "", f"Fewer than 3 complete grid runs under {GRID_RUNS}; none judged.", ""]
    results = {d.name: [r for _, r in scan_results(d)] for d in dirs}
    first = next(iter(results.values()))
    budget, machine_class = first[0].budget, first[0].machine_class
    cells: dict[str, list[str]] = {}
    alarms, judged, masked = [], [], []  # judged: (lower end / value, tolerance / value, spread / value) per comparison
    other = sorted(d for d in OTHER_RUNS.glob("*") if d.is_dir())
    plan = [(d, [o for o in dirs if o != d]) for d in dirs] + [(d, dirs) for d in other]
    for d, made_from in plan:
        with tempfile.TemporaryDirectory() as root:
            update_baselines(made_from, root, budget)
            report = check_dir(d, root, budget)
            alarms += [f"{d.name} {line}" for line in report.lines() if not line.startswith(("NOTE", "gate P"))]
            for _, r in scan_results(d):
                entry = load_baseline(baseline_path(root, budget, machine_class, r.arch, r.file_slug))
                base, value = entry["metrics"]["time_ratio_vs_dense"], entry["metrics"]["time_ratio_vs_dense"]["value"]
                ci = r.time_ratio_interval  # its lower end is what the gate judges a slowdown by
                judged.append((ci["low"] / value, base["tolerance"] / value,
                               entry["made_from"]["spread"]["time_ratio_vs_dense"] / value))
                cells.setdefault(f"{r.arch} {r.scheme}", []).append(
                    f"x{r.time_ratio_vs_dense / value:.3f} [{ci['low'] / value:.3f}-{ci['high'] / value:.3f}]")
                if r.representation == "masked":  # dense's arithmetic: what the measurement-fault rule reads
                    masked.append((r.time_ratio_vs_dense, ci["high"], f"{d.name} {r.cell}"))
    from sparsebench.baselines import _SPREAD_MULTIPLE, _TOLERANCE_FLOORS

    _, floor_now, time_cap = _TOLERANCE_FLOORS["time_ratio_vs_dense"]
    k_now = _SPREAD_MULTIPLE.get("time_ratio_vs_dense", 3.0)
    from sparsebench.gate import FAULT_BIAS

    widest = max(near - 1 for near, _, _ in judged)
    low, high = min(masked), min(masked, key=lambda m: m[1])
    tolerances = [tol for _, tol, _ in judged]
    floors = []  # time alarms had the rule had another floor and spread multiple
    for floor in FLOORS:
        hits = [sum(near > 1 + min(max(floor, k * spread), time_cap) for near, _, spread in judged) for k in MULTIPLES]
        floors.append(f"| {100 * floor:.0f}% | " + " | ".join(map(str, hits)) + " |")
    header = "| cell | " + " | ".join([d.name for d in dirs] + [f"{d.name} (all {len(dirs)})" for d in other]) + " |"
    rows = [header, "|" + " --- |" * (len(dirs) + len(other) + 1)]
    rows += [f"| {cell} | " + " | ".join(changes) + " |" for cell, changes in sorted(cells.items())]
    return [
        "## Stored baselines (the gate of `nox -s bench`)", "",
        f"Measured by {len(dirs)} runs of `pytest benchmarks/test_grid.py -p no:randomly --budget ci "
        f"--results-dir results/grid-runs/run<i>` (not committed); this section rewritten by `{command}`.", "",
        f"Leave one out: each run gated by `gate.check_dir` against baselines that `update_baselines` made from "
        f"the other {len(dirs) - 1} runs; budget {budget}, machine class {machine_class}, "
        f"commit {', '.join(sorted({str(r.env.get('commit')) for rs in results.values() for r in rs}))}."
        + ("".join(f" `{d.name}`: {describe_other(d)}, gated against baselines from all {len(dirs)} runs."
                   for d in other)), "",
        "Each entry: the run's time ratio against dense over the baseline's value, and its 95% interval over "
        "the same value. A time alarm needs the interval's lower end above 1 + the baseline's tolerance; "
        f"those tolerances were {100 * min(tolerances):.0f}% to {100 * max(tolerances):.0f}% of the value "
        f"(`tolerance_rule`: the floor, or {k_now:g} x the spread of the runs the baseline came from, "
        "whichever is larger).", "",
        *rows, "",
        f"False alarms (every gated metric): {len(alarms)} in {len(judged)} cell comparisons"
        + (":" if alarms else "."), *[f"- {a}" for a in alarms], *([""] if alarms else []),
        f"Largest slowdown at the interval's lower end (what the gate judges): {100 * widest:.1f}%.", "",
        "The same comparisons had the time ratio's tolerance been min(max(floor, k x spread), "
        f"{100 * time_cap:.0f}%) of the value (spread: max - min of the runs the baseline came from), time alarms "
        f"(`tolerance_rule` now: floor {100 * floor_now:.0f}%, k = {k_now:g}):", "",
        "| floor | " + " | ".join(f"k = {k:g}" for k in MULTIPLES) + " |", "| --- |" + " --- |" * len(MULTIPLES),
        *floors, "",
        f"Masked cells (dense's arithmetic, so never truly faster than dense; {len(masked)} above): the lowest "
        f"time ratio {low[0]:.3f} ({low[2]}), the lowest upper end of an interval {high[1]:.3f} ({high[2]}). "
        f"A `FAULT` needs the upper end below {1 - FAULT_BIAS:.2f} (`gate.FAULT_BIAS` = {FAULT_BIAS}).", ""]


def slowdown() -> list[str]:
    """A side-by-side run of a commit against itself with its kernels made 1.5x slower
    (tools/inject_slowdown.py), each side gated against the committed baselines of this class."""
    from sparsebench.cell import Cell
    from sparsebench.gate import check_dir
    from sparsebench.results import scan_results

    if not (SLOWDOWN / "comparison.json").is_file():
        return []
    doc = json.loads((SLOWDOWN / "comparison.json").read_text())
    out = ["## A 1.5x kernel slowdown against the stored baselines", "",
           f"The side-by-side run of `tools/inject_slowdown.py`'s demonstration (BASE {doc['base']['commit'][:12]}, "
           f"HEAD the same with csr and bsr_cpp kernels 1.5x slower; results/slowdown/, not committed), each side's "
           f"results gated by `gate.check_dir` against the committed baselines of class {doc['machine_class']}:", ""]
    for side in ("base", "head"):
        cells = [Cell.parse(r.arch, r.scheme) for _, r in scan_results(SLOWDOWN / side)]
        lines = [x for x in check_dir(SLOWDOWN / side, ROOT / "baselines", doc["budget"], cells).lines()
                 if not x.startswith("NOTE")]
        out += [f"{side.upper()}:", "", "```", *lines, "```", ""]
    return out


def peak_across_classes() -> list[str]:
    """This class's median peak memory over the grid runs beside every committed class's baseline value."""
    import statistics

    from sparsebench.baselines import baseline_path, known_classes, load_baseline
    from sparsebench.results import scan_results

    dirs = sorted(d for d in GRID_RUNS.glob("run*") if (d / ".done").is_file())
    if not dirs:
        return []
    peaks: dict[tuple[str, str, str], list[float]] = {}
    for d in dirs:
        for _, r in scan_results(d):
            peaks.setdefault((r.arch, r.scheme, r.file_slug), []).append(r.peak_memory_bytes)
            budget, here = r.budget, r.machine_class
    root = ROOT / "baselines"
    others = [c for c in known_classes(root, budget) if c != here]
    rows = ["| cell | here (median MiB) | " + " | ".join(others) + " |", "|" + " --- |" * (len(others) + 2)]
    worst = 0.0
    for (arch, scheme, slug), values in sorted(peaks.items()):
        m = statistics.median(values)
        ratios = []
        for c in others:
            path = baseline_path(root, budget, c, arch, slug)
            if not path.is_file():
                ratios.append("-")
                continue
            ratio = load_baseline(path)["metrics"]["peak_memory_bytes"]["value"] / m
            worst = max(worst, abs(ratio - 1))
            ratios.append(f"x{ratio:.3f}")
        rows.append(f"| {arch} {scheme} | {m / 2**20:.1f} | " + " | ".join(ratios) + " |")
    return ["## Peak memory across machine classes", "",
            f"On a class without baselines the gate judges peak memory against the nearest class's. Each entry: "
            f"that class's committed baseline value over this class's median of the {len(dirs)} grid runs above "
            f"({here}).", "", *rows, "",
            f"Largest difference between classes: {100 * worst:.1f}% (the peak-memory tolerance's floor is 10%).", ""]


def page(command: str) -> str:
    sys.path.insert(0, str(ROOT))
    head = ["# The time gate on unchanged code (A/A)", "",
            "How often the gate fails code that did not change, measured both ways it judges time.", ""]
    return "\n".join(head + side_by_side(command) + stored(command) + slowdown() + peak_across_classes())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="A/A runs to make (default 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "time-gate.md")
    parser.add_argument("--report-only", action="store_true", help="write the page from the runs already made")
    parser.add_argument("continuous_args", nargs=argparse.REMAINDER, help="after --: arguments of continuous")
    args = parser.parse_args()
    rest = [a for a in args.continuous_args if a != "--"]
    if not args.report_only:
        have = len(list(RUNS.glob("run*/comparison.json")))
        for i in range(have, have + args.runs):
            run(i, rest)
    command = "python tools/false_alarms.py --report-only"
    args.out.write_text(page(command) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
