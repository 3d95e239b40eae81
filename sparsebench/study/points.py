"""The study's sweep (a frozen dataclass) and the points it expands to.

An **accuracy point** is (arch, pattern, seed) on the accuracy budget, with an optional ``timing``
(``/rigl/erk``: when its mask is chosen and how S is spread, ``schedules.py``); a **cost point** is (arch, size,
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
from ..schemes import STORES, Scheme, parse_scheme

FAMILIES = ("random", "magnitude", "block:4x4", "block:16x16")  # patterns with a sparsity level
LEVELS = (0.5, 0.75, 0.9, 0.95)
FIXED: tuple[Pattern, ...] = (parse_pattern("nm:2:4"),)  # patterns whose sparsity is fixed by their syntax
DENSE: Pattern = parse_pattern("dense")
# representation names (schemes.STORES) the study does not cost, and why
NOT_COSTED = {"semi": "CUDA only (2:4 tensor cores): its cost points would be skipped on every CPU",
              "fastest": "a policy (the fastest whatever its memory); auto, what a user would pick, is costed"}
REPRESENTATIONS = tuple(name for name in STORES if name not in NOT_COSTED)  # masked csr bsr bsr_cpp sparseprop auto
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
# the methods compared by `--methods default`: FAMILY/SCHEDULE[/DISTRIBUTION], each trained at the sweep's
# levels beside the static patterns (static random, magnitude and block 16x16 are the sweep's own)
METHODS = ("random/erk", "magnitude/gmp", "magnitude/oneshot", "random/set", "random/set/erk", "random/rigl",
           "random/rigl/erk", "block:16x16/rigl")


def method_scheme(method: str, level: float) -> Scheme:
    """``random/rigl/erk`` at level 0.9 -> the scheme ``random:0.9/rigl/erk`` (ValueError naming what is wrong)."""
    family, sep, timing = method.partition("/")
    if not sep or not timing:
        raise ValueError(f"method {method!r}: write FAMILY/SCHEDULE[/DISTRIBUTION], e.g. random/rigl, magnitude/gmp")
    return parse_scheme(f"{family}:{level}/{timing}")


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
    methods: tuple[str, ...] = ()  # FAMILY/SCHEDULE[/DISTRIBUTION]: accuracy points whose masks move

    def __post_init__(self):
        for method in self.methods:
            for level in self.levels:
                method_scheme(method, level)  # refuse a bad method before anything trains

    def method_schemes(self) -> list[Scheme]:
        """Each method at each level (without a representation)."""
        return [method_scheme(m, s) for m in self.methods for s in self.levels]

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
    timing: str = ""  # e.g. "/rigl/erk" (schemes.Scheme.timing); empty: the mask fixed at initialisation
    kind = "accuracy"

    def __post_init__(self):
        _require(self.pattern, Pattern, "an accuracy point's pattern")
        if self.timing:
            parse_scheme(f"{self.pattern}{self.timing}")  # ValueError where the pattern cannot take it

    @property
    def training_scheme(self) -> Scheme:
        """The scheme it trains with: ``auto``, the representation a user would pick for speed (per layer
        the fastest valid one within dense's memory; every representation computes the same function, so
        the accuracy is the pattern's and the wall-clock is what a user would see); dense stays dense."""
        if not self.pattern.sparse:
            return Scheme(self.pattern)
        return parse_scheme(f"{self.pattern}{self.timing}@auto")

    @property
    def key(self) -> str:
        timing = self.training_scheme.timing_slug
        return f"accuracy/{self.budget}/{self.arch}/{self.pattern.slug}{'-' + timing if timing else ''}-seed{self.seed}"

    def describe(self) -> dict:
        described = {"kind": self.kind, "arch": self.arch, "pattern": str(self.pattern), "seed": self.seed,
                     "budget": self.budget, "training_scheme": str(self.training_scheme)}
        return described | ({"timing": self.timing} if self.timing else {})

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
    static = [AccuracyPoint(arch, pattern, seed, sweep.budget)
              for arch in sweep.archs for pattern in sweep.patterns() for seed in range(sweep.seeds)]
    moving = [AccuracyPoint(arch, scheme.pattern, seed, sweep.budget, scheme.timing)
              for arch in sweep.archs for scheme in sweep.method_schemes() for seed in range(sweep.seeds)]
    return static + moving


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
