"""The default grid (SPEC §1 / the harness issue) and running it cell by cell, each result
written atomically as soon as it exists, so a crash loses at most the cell in flight."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path

from .budgets import Budget
from .representations import RepresentationUnavailable
from .results import SCHEMA_VERSION, result_path, write_json_atomic
from .schemes import parse_scheme

DEFAULT_ARCHS = ("cnn", "transformer")
DEFAULT_SCHEMES = (
    "dense",
    "random:0.5@masked",
    "random:0.5@csr",
    "block:4x4:0.5@masked",
    "block:4x4:0.5@bsr",
    "nm:2:4@masked",
    "magnitude:0.5@masked",
)


def default_cells(archs: Iterable[str] = DEFAULT_ARCHS,
                  schemes: Iterable[str] = DEFAULT_SCHEMES) -> list[tuple[str, str]]:
    """(arch, canonical scheme) of every cell, schemes parsed up front so a typo fails at once."""
    return [(arch, str(parse_scheme(s))) for arch in archs for s in schemes]


def skipped_result(arch: str, scheme: str, budget: Budget, reason: str) -> dict:
    s = parse_scheme(scheme)
    return {"schema_version": SCHEMA_VERSION, "status": "skipped", "reason": reason, "arch": arch,
            "scheme": str(s), "slug": s.slug, "budget": budget.name}


def run_one(arch: str, scheme: str, budget: Budget, seed: int = 0, data_dir=None, device=None,
            progress: bool = True) -> dict:
    """Run a cell; a representation this machine cannot run gives a 'skipped' document with the reason."""
    from .train import run_cell  # late: imports torch-heavy modules only when a cell runs

    try:
        return run_cell(arch, scheme, budget, seed=seed, data_dir=data_dir, device=device, progress=progress)
    except RepresentationUnavailable as why:
        return skipped_result(arch, scheme, budget, str(why))


def run_grid(cells: list[tuple[str, str]], budget: Budget, out_dir: Path, seed: int = 0, data_dir=None,
             device=None, progress: bool = True) -> list[Path]:
    paths = []
    start = time.perf_counter()
    for i, (arch, scheme) in enumerate(cells, 1):
        path = result_path(out_dir, arch, parse_scheme(scheme).slug)
        t0 = time.perf_counter()
        doc = run_one(arch, scheme, budget, seed, data_dir, device, progress)
        write_json_atomic(path, doc)
        paths.append(path)
        if progress:
            what = (f"acc {doc['accuracy']:.3f}, time x{doc['time_ratio_vs_dense']:.2f} of dense"
                    if doc["status"] == "ok" else f"skipped: {doc['reason']}")
            print(f"[{i}/{len(cells)}] {arch} {scheme}: {what} ({time.perf_counter() - t0:.0f} s, "
                  f"{time.perf_counter() - start:.0f} s total) -> {path}", file=sys.stderr, flush=True)
    return paths
