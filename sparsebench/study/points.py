"""The study's sweep (a frozen dataclass) and the points it expands to.

An **accuracy point** is (arch, pattern, seed) on the accuracy budget; a **cost point** is (arch, size,
scheme), where the size is a budget's model and batch (``ci``, ``reference``). Points are plain values
with a stable ``key`` (their document's path under the study directory) and a ``describe()`` that
their document repeats, so a document can be checked against the point that asked for it.

The default cost subset (what fits in an hour on 2 cores; ``--all`` lifts it):
- ``auto`` at every (pattern, sparsity): the representation a user would pick;
- ``csr``, ``bsr`` and ``bsr_cpp`` at the subset levels (S = 0.5 and 0.9) and for ``nm:2:4``;
- ``masked`` once per pattern, at S = 0.9: it stores the dense weight and a mask whatever S is,
  so its time and memory do not depend on S;
- ``magnitude`` at the ``ci`` size only: its cost is that of ``random`` at the same S (the same
  unstructured layout; only which weights are kept differs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..schemes import Scheme, parse_scheme

FAMILIES = ("random", "magnitude", "block:4x4", "block:16x16")  # patterns with a sparsity level
LEVELS = (0.5, 0.75, 0.9, 0.95)
FIXED = ("nm:2:4",)  # patterns whose sparsity is fixed by their syntax
REPRESENTATIONS = ("masked", "csr", "bsr", "bsr_cpp", "auto")
SUBSET_LEVELS = (0.5, 0.9)
MASKED_LEVEL = 0.9
COST_BUDGETS = {"ci": ("ci", "reference"), "smoke": ("smoke",)}  # accuracy budget -> the sizes costed
DEFAULT_LEVELS = {"ci": LEVELS, "smoke": SUBSET_LEVELS}  # accuracy budget -> its default sparsity levels


@dataclass(frozen=True)
class Sweep:
    archs: tuple[str, ...] = ("cnn", "transformer")
    families: tuple[str, ...] = FAMILIES
    levels: tuple[float, ...] = LEVELS
    fixed: tuple[str, ...] = FIXED
    representations: tuple[str, ...] = REPRESENTATIONS
    seeds: int = 1
    budget: str = "ci"  # the accuracy budget
    sizes: tuple[str, ...] = ("ci", "reference")  # the budgets whose model sizes and batch are costed
    all_costs: bool = False  # every representation at every point and size, not the default subset
    accuracy: bool = True
    cost: bool = True

    def patterns(self) -> list[str]:
        """Canonical pattern strings: dense, each family at each level, the fixed patterns."""
        out = ["dense"] + [str(parse_scheme(f"{f}:{s}")) for f in self.families for s in self.levels]
        return out + [str(parse_scheme(p)) for p in self.fixed]


def family(pattern: str) -> str:
    """``block:4x4:0.9`` -> ``block:4x4``; a pattern without a sparsity parameter is its own family."""
    scheme = parse_scheme(pattern)
    return pattern.rpartition(":")[0] if scheme.pattern.level is not None else pattern


def level(pattern: str) -> float:
    return parse_scheme(pattern).target_sparsity


@dataclass(frozen=True)
class AccuracyPoint:
    arch: str
    pattern: str  # canonical, without a representation
    seed: int
    budget: str
    kind = "accuracy"

    @property
    def training_scheme(self) -> str:
        """The scheme it trains with: ``fastest`` (per layer the fastest valid representation here,
        whatever its memory: every representation computes the same function); dense stays dense."""
        return self.pattern if not parse_scheme(self.pattern).pattern.sparse else f"{self.pattern}@fastest"

    @property
    def key(self) -> str:
        return f"accuracy/{self.budget}/{self.arch}/{parse_scheme(self.pattern).pattern.slug}-seed{self.seed}"

    def describe(self) -> dict:
        return {"kind": self.kind, "arch": self.arch, "pattern": self.pattern, "seed": self.seed,
                "budget": self.budget, "training_scheme": self.training_scheme}

    def path(self, out_dir: str | os.PathLike) -> Path:
        return Path(out_dir) / f"{self.key}.json"


@dataclass(frozen=True)
class CostPoint:
    arch: str
    size: str  # the budget whose model sizes, batch and timing steps are used
    scheme: str  # canonical PATTERN@REPRESENTATION
    seed: int = 0
    kind = "cost"

    @property
    def key(self) -> str:
        return f"cost/{self.size}/{self.arch}/{parse_scheme(self.scheme).slug}"

    def describe(self) -> dict:
        return {"kind": self.kind, "arch": self.arch, "size": self.size, "scheme": self.scheme, "seed": self.seed}

    def path(self, out_dir: str | os.PathLike) -> Path:
        return Path(out_dir) / f"{self.key}.json"


def representations_for(pattern: str, representations) -> list[str]:
    """The representations that can store ``pattern`` (schemes.STORES decides; ``semi`` is left to
    its own machines: it is CUDA-only)."""
    out = []
    for rep in representations:
        try:
            Scheme(parse_scheme(pattern).pattern, rep)
        except ValueError:
            continue
        out.append(rep)
    return out


def in_default_subset(pattern: str, rep: str, size: str) -> bool:
    """Whether the default (not ``--all``) cost sweep measures ``pattern@rep`` at ``size`` (module doc)."""
    if family(pattern) == "magnitude" and size != "ci":
        return False
    fixed = parse_scheme(pattern).pattern.level is None
    if rep == "auto":
        return True
    if rep == "masked":
        return fixed or level(pattern) == MASKED_LEVEL
    return fixed or level(pattern) in SUBSET_LEVELS


def accuracy_points(sweep: Sweep) -> list[AccuracyPoint]:
    if not sweep.accuracy:
        return []
    return [AccuracyPoint(arch, pattern, seed, sweep.budget)
            for arch in sweep.archs for pattern in sweep.patterns() for seed in range(sweep.seeds)]


def cost_points(sweep: Sweep) -> list[CostPoint]:
    if not sweep.cost:
        return []
    points = []
    for size in sweep.sizes:
        for arch in sweep.archs:
            for pattern in sweep.patterns()[1:]:  # dense is the reference inside every cost point
                for rep in representations_for(pattern, sweep.representations):
                    if sweep.all_costs or in_default_subset(pattern, rep, size):
                        points.append(CostPoint(arch, size, str(Scheme(parse_scheme(pattern).pattern, rep))))
    return points
