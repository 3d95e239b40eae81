"""``python -m sparsebench.kernels build [--variant V | --all]``: build the kernel library ahead of
time, so that no first build falls inside a timed region. ``_worker V`` is the child process a
build runs in (see build_cache.py)."""

from __future__ import annotations

import argparse
import sys

from . import build_cache, isa
from .errors import KernelsUnavailable


def _worker(v: str) -> int:
    import torch

    so = build_cache.compile_in_this_process(v)
    torch.ops.load_library(str(so))  # torch's load did this already; repeated for a relinked file
    if torch.ops.sparse_linear.isa() != v:
        print(f"error: built library is the {torch.ops.sparse_linear.isa()} variant, expected {v}", file=sys.stderr)
        return 1
    from . import loader, ops  # noqa: F401

    problem = loader._smoke_test()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsebench.kernels", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build and verify the kernel library ahead of time")
    b.add_argument("--variant", choices=isa.VARIANTS, help="default: this process's variant")
    b.add_argument("--all", action="store_true", help="every variant this CPU runs")
    w = sub.add_parser("_worker")
    w.add_argument("variant", choices=isa.VARIANTS)
    args = parser.parse_args(argv)
    if args.command == "_worker":
        return _worker(args.variant)
    try:
        variants = isa.supported_variants() if args.all else [args.variant or isa.variant()]
        for v in variants:
            if v not in isa.supported_variants():
                raise KernelsUnavailable(f"variant {v} cannot run on this CPU")
            print(f"{v}: {build_cache.ensure_built(v)}")
    except KernelsUnavailable as err:
        print(f"sparsebench: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
