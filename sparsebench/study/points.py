"""The study's sweep (a frozen dataclass) and the points it expands to.

An **accuracy point** is (arch, pattern, seed) on the accuracy budget; a **cost point** is (arch, size,
scheme), where the size is a budget's model and batch (``ci``, ``reference``). Points are plain values
holding a pattern value (``patterns.Pattern``) or a ``Scheme``, with a stable ``key`` (their
document's path under the study directory) and a ``describe()`` that their document repeats (in the
patterns' and schemes' canonical strings), so a document can be checked against the point that asked
for it.

The representations costed are every name ``schemes.STORES`` knows but those in ``NOT_COSTED``, so a
new representation is costed as soon as it is registered. The default cost subset (``--all`` lifts it):
- ``auto`` at every (pattern, sparsity): the representation a user would pick;
- every other representation (``csr``, ``bsr``, ``bsr_cpp``) at the subset levels (S = 0.5 and 0.9)
  and for ``nm:2:4``;
- ``masked`` once per pattern, at S = 0.9: it stores the dense weight and a mask whatever S is,
  so its time and memory do not depend on S;
- ``magnitude`` at the ``ci`` size only: its cost is that of ``random`` at the same S (the same
  unstructured layout; only which weights are kept differs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..patterns import Pattern, parse_pattern
from ..schemes import STORES, Scheme

FAMILIES = ("random", "magnitude", "block:4x4", "block:16x16")  # patterns with a sparsity level
LEVELS = (0.5, 0.75, 0.9, 0.95)
FIXED: tuple[Pattern, ...] = (parse_pattern("nm:2:4"),)  # patterns whose sparsity is fixed by their syntax
DENSE: Pattern = parse_pattern("dense")
# representation names (schemes.STORES) the study does not cost, and why
NOT_COSTED = {"semi": "CUDA only (2:4 tensor cores): its cost points would be skipped on every CPU",
              "fastest": "a policy (the fastest whatever its memory); auto, what a user would pick, is costed"}
REPRESENTATIONS = tuple(name for name in STORES if name not in NOT_COSTED)  # masked csr bsr bsr_cpp auto
SUBSET_LEVELS = (0.5, 0.9)
MASKED_LEVEL = 0.9
# accuracy budget -> the sizes costed. `converge` costs its own size only: its time to accuracy and its
# cost then describe one model, and the reference sizes are costed by the `ci` study.
COST_BUDGETS = {"ci": ("ci", "reference"), "converge": ("converge",), "smoke": ("smoke",)}
# accuracy budget -> its default sparsity levels; `converge` trains each cell for minutes, so one level
CONVERGE_LEVEL = 0.9
DEFAULT_LEVELS = {"ci": LEVELS, "converge": (CONVERGE_LEVEL,), "smoke": SUBSET_LEVELS}
# accuracy budget -> the representations costed by default (absent: every one in REPRESENTATIONS)
DEFAULT_REPRESENTATIONS = {"converge": ("auto",)}


@dataclass(frozen=True)
class Sweep:
    archs: tuple[str, ...] = ("cnn", "transformer")
    families: tuple[str, ...] = FAMILIES  # pattern families, each swept over ``levels``
    levels: tuple[float, ...] = LEVELS
    fixed: tuple[Pattern, ...] = FIXED
    representations: tuple[str, ...] = REPRESENTATIONS
    seeds: int = 1
    budget: str = "ci"  # the accuracy budget
    sizes: tuple[str, ...] = ("ci", "reference")  # the budgets whose model sizes and batch are costed
    all_costs: bool = False  # every representation at every point and size, not the default subset
    accuracy: bool = True
    cost: bool = True

    def patterns(self) -> list[Pattern]:
        """Dense, each family at each level, the fixed patterns."""
        return [DENSE, *(parse_pattern(f"{f}:{s}") for f in self.families for s in self.levels), *self.fixed]


def _require(value, kind, what: str) -> None:
    if not isinstance(value, kind):
        raise TypeError(f"{what} must be a {kind.__name__} value, got {value!r}")


@dataclass(frozen=True)
class AccuracyPoint:
    arch: str
    pattern: Pattern  # without a representation
    seed: int
    budget: str
    kind = "accuracy"

    def __post_init__(self):
        _require(self.pattern, Pattern, "an accuracy point's pattern")

    @property
    def training_scheme(self) -> Scheme:
        """The scheme it trains with: ``auto``, the representation a user would pick for speed (per layer
        the fastest valid one within dense's memory; every representation computes the same function, so
        the accuracy is the pattern's and the wall-clock is what a user would see); dense stays dense."""
        return Scheme(self.pattern, "auto") if self.pattern.sparse else Scheme(self.pattern)

    @property
    def key(self) -> str:
        return f"accuracy/{self.budget}/{self.arch}/{self.pattern.slug}-seed{self.seed}"

    def describe(self) -> dict:
        return {"kind": self.kind, "arch": self.arch, "pattern": str(self.pattern), "seed": self.seed,
                "budget": self.budget, "training_scheme": str(self.training_scheme)}

    def path(self, out_dir: str | os.PathLike) -> Path:
        return Path(out_dir) / f"{self.key}.json"


@dataclass(frozen=True)
class CostPoint:
    arch: str
    size: str  # the budget whose model sizes, batch and timing steps are used
    scheme: Scheme
    seed: int = 0
    kind = "cost"

    def __post_init__(self):
        _require(self.scheme, Scheme, "a cost point's scheme")

    @property
    def key(self) -> str:
        return f"cost/{self.size}/{self.arch}/{self.scheme.slug}"

    def describe(self) -> dict:
        return {"kind": self.kind, "arch": self.arch, "size": self.size, "scheme": str(self.scheme), "seed": self.seed}

    def path(self, out_dir: str | os.PathLike) -> Path:
        return Path(out_dir) / f"{self.key}.json"


def representations_for(pattern: Pattern, representations) -> list[str]:
    """The representations of ``representations`` that can store ``pattern`` (schemes.STORES decides)."""
    out = []
    for rep in representations:
        try:
            Scheme(pattern, rep)
        except ValueError:
            continue
        out.append(rep)
    return out


def in_default_subset(pattern: Pattern, rep: str, size: str) -> bool:
    """Whether the default (not ``--all``) cost sweep measures ``pattern@rep`` at ``size`` (module doc)."""
    if pattern.family == "magnitude" and size != "ci":
        return False
    fixed = pattern.level is None
    if rep == "auto":
        return True
    if rep == "masked":
        return fixed or pattern.level == MASKED_LEVEL
    return fixed or pattern.level in SUBSET_LEVELS


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
                        points.append(CostPoint(arch, size, Scheme(pattern, rep)))
    return points
