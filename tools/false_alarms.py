"""The time gate's false-alarm rate on unchanged code: repeated side-by-side runs of a commit against
itself (A/A), and what their time changes and intervals say about the tolerance.

    python tools/false_alarms.py --runs 5 --out docs/time-gate.md -- --budget ci --schemes random:0.9@csr
    python tools/false_alarms.py --report-only --out docs/time-gate.md    # rewrite the page from the runs

Each run is ``sparsebench continuous HEAD HEAD`` (arguments after ``--`` go to it) into
``results/aa/run<i>/``; the page lists every cell's change (HEAD's time ratio over BASE's) with its 95%
interval per run, the cells that alarmed, and the widest change seen, against ``continuous.TIME_TOLERANCE``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "results" / "aa"


def run(i: int, args: list[str]) -> None:
    out = RUNS / f"run{i}"
    command = [sys.executable, "-m", "sparsebench", "continuous", "HEAD", "HEAD", "--out", str(out), *args]
    print(f"A/A run {i}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=ROOT)  # exit 1 is an alarm, which is what is counted here


def page(command: str) -> str:
    sys.path.insert(0, str(ROOT))
    from sparsebench.continuous import TIME_TOLERANCE

    docs = []
    for path in sorted(RUNS.glob("run*/comparison.json"), key=lambda p: int(p.parent.name[3:])):
        doc = json.loads(path.read_text())
        if doc.get("errors"):
            raise SystemExit(f"{path}: the run had errors ({doc['errors'][0]}); rerun it")
        docs.append((path.parent.name, doc))
    if not docs:
        raise SystemExit(f"no A/A runs under {RUNS}; run this tool without --report-only first")
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
    return "\n".join([
        "# The time gate on unchanged code (A/A)", "",
        f"Measured by `{made}` (results/aa/, not committed); this page rewritten by `{command}`.", "",
        f"{len(docs)} side-by-side runs of commit {', '.join(sorted(commits))} "
        f"against itself, budget {', '.join(sorted(budget))}, on machine class {', '.join(sorted(classes))}.", "",
        "Each entry: HEAD's time ratio against dense over BASE's (both the same code, run as two processes, "
        "alternating), and the 95% interval of that change. A time alarm needs the whole interval above "
        f"x{1 + TIME_TOLERANCE:.2f} (`continuous.TIME_TOLERANCE` = {TIME_TOLERANCE}).", "",
        *rows, "",
        f"False alarms: {len(alarms)} in {sum(len(c) for c in cells.values())} cell comparisons"
        + (f" ({', '.join(alarms)})." if alarms else "."),
        f"Largest change of unchanged code: {100 * widest:.1f}% (the tolerance is {100 * TIME_TOLERANCE:.0f}%).", ""])


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
