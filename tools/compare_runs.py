"""Compare two grid results directories cell by cell, in the metrics that do not depend on timing:
accuracy, realised sparsity, model size, ledger and final loss must be equal; peak memory is shown as
the difference.

    python tools/compare_runs.py BEFORE_DIR AFTER_DIR      # e.g. two commits' grids, same seed

Prints a Markdown table and a summary line; exits 1 if a cell differs or has no document after.
"""

import json
import sys
from pathlib import Path

EXACT = ("accuracy", "realised_sparsity", "model_size_bytes", "ledger_bytes", "final_loss")
HEADER = ("| arch | scheme | accuracy | realised sparsity | model size (B) | ledger (B) | peak before (B) "
          "| peak after - before (B) |\n| --- | --- | --- | --- | --- | --- | --- | --- |")


def shown(before: dict, after: dict, key: str, fmt: str = "{}") -> str:
    """One value where both runs agree, else ``before / after``."""
    if before[key] == after[key]:
        return fmt.format(before[key])
    return f"{before[key]} / {after[key]}"


def main(before_dir: Path, after_dir: Path) -> int:
    print(HEADER)
    compared = identical = 0
    missing, worst = [], 0.0
    for path in sorted(before_dir.glob("*/*.json")):
        other = after_dir / path.parent.name / path.name
        if not other.is_file():
            missing.append(f"{path.parent.name}/{path.name}")
            continue
        a, b = json.loads(path.read_text()), json.loads(other.read_text())
        compared += 1
        differs = [k for k in EXACT if a.get(k) != b.get(k)]
        identical += not differs
        delta = b["peak_memory_bytes"] - a["peak_memory_bytes"]
        worst = max(worst, abs(delta) / a["peak_memory_bytes"])
        print(f"| {a['arch']} | {a['scheme']} | {shown(a, b, 'accuracy')} | "
              f"{shown(a, b, 'realised_sparsity', '{:.6f}')} | {shown(a, b, 'model_size_bytes')} | "
              f"{shown(a, b, 'ledger_bytes')} | {a['peak_memory_bytes']} | {delta:+d} |"
              + (f" differs: {', '.join(differs)}" if differs else ""))
    for name in missing:
        print(f"missing after: {name}")
    print(f"\n{compared} cells compared; {identical} identical in {', '.join(EXACT)}; "
          f"peak memory within {100 * worst:.4f}%")
    return 1 if missing or identical != compared else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/compare_runs.py BEFORE_DIR AFTER_DIR")
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
