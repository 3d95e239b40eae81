"""Make the sparse kernels of a source tree FACTOR times slower, to show that the time gate catches it.

    python tools/inject_slowdown.py TREE [--factor 1.5]

Every call into the csr, bsr_cpp and direct-conv kernels (forward, and the backward each op registers
with autograd) busy-waits (FACTOR - 1) times its own wall time after it returns: the kernels take FACTOR
times as long, the work they do is unchanged, and so is every other number a cell records. Edits the
tree in place (use a copy, e.g. a worktree of a throwaway branch); refuses a tree it has edited already.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MARK = "# injected slowdown (tools/inject_slowdown.py)"
SLOWED = '''
{mark}
def _slowed(fn, factor={factor}):
    import time

    def slow(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        until = time.perf_counter() + (factor - 1) * (time.perf_counter() - start)
        while time.perf_counter() < until:
            pass
        return out

    return slow
'''
FORWARDS = ("csr_linear", "csr_mm", "csr_sddmm", "bsr_linear", "bsr_linear_forward", "bsr_linear_input_grad",
            "bsr_linear_weight_grad", "sparse_conv2d")
BACKWARDS = ("bsr_backward", "csr_backward", "conv_backward")


def inject(tree: Path, factor: float) -> None:
    init, ops = tree / "sparsebench" / "kernels" / "__init__.py", tree / "sparsebench" / "kernels" / "ops.py"
    init_text, ops_text = init.read_text(), ops.read_text()
    if MARK in init_text or MARK in ops_text:
        raise SystemExit(f"{tree} is slowed already")
    wrap = "\n".join(f"{name} = _slowed({name})" for name in FORWARDS)
    init.write_text(init_text + SLOWED.format(mark=MARK, factor=factor) + wrap + "\n")
    for name in BACKWARDS:
        old = f", _{name}, setup_context="
        if ops_text.count(old) != 1:
            raise SystemExit(f"{ops}: expected one registration of _{name}; update this tool")
        ops_text = ops_text.replace(old, f", _slowed(_{name}), setup_context=")
    head, sep, rest = ops_text.partition("\nops = ")
    ops.write_text(head + SLOWED.format(mark=MARK, factor=factor) + sep + rest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree", type=Path, help="a sparsebench source tree (a copy: it is edited in place)")
    parser.add_argument("--factor", type=float, default=1.5, help="how many times slower (default 1.5)")
    args = parser.parse_args()
    if args.factor <= 1:
        parser.error("--factor must be above 1")
    inject(args.tree, args.factor)
    print(f"{args.tree}: csr, bsr_cpp and direct-conv kernels now take {args.factor}x their time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
