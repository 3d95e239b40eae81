"""The Scheme value: a sparsity pattern (with its parameters), when its mask is chosen, how S is
spread over the layers, and a representation.

Syntax: ``PATTERN[:PARAMS]*[/SCHEDULE][/DISTRIBUTION][@REPRESENTATION]``, e.g. ``dense``,
``random:0.5``, ``magnitude:0.9@csr``, ``block:4x4:0.5@bsr``, ``nm:2:4@semi``,
``magnitude:0.9/gmp``, ``random:0.9/rigl/erk@csr``, ``block:16x16:0.9/rigl@bsr_cpp``. The schedule
defaults to ``static`` (the mask fixed at initialisation), the distribution to ``uniform``, the
representation to ``masked``; defaults are not written. ``str(scheme)`` gives the canonical string
back; ``scheme.slug`` is a file- and pytest-id-safe form (``block4x4-0.5-bsr``,
``random-0.9-rigl-erk-csr``). Each pattern's syntax lives with the pattern (``patterns.PATTERNS``),
each schedule's with the schedule (``schedules.SCHEDULES``); which representation can store which
scheme is ``STORES`` below.

A Scheme is valid by construction, and validating one needs neither torch nor any representation
module: what a representation can store is decided from the scheme alone (what it can run on this
machine, for this layer, is the representation's ``check_layer``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from .distributions import DISTRIBUTIONS
from .patterns import NM, Block, Magnitude, Pattern, parse_pattern
from .schedules import STATIC, Static, parse_schedule

DEFAULT_REPRESENTATION = "masked"


def _square_blocks(scheme: Scheme) -> str | None:
    assert isinstance(scheme.pattern, Block)  # Stores.patterns admits only block patterns here
    r, c = scheme.pattern.block
    if r != c:
        return (f"torch's CPU BSR kernels (MKL) take only square blocks, not {r}x{c}; use a square block such as "
                f"{max(r, c)}x{max(r, c)}, or '{scheme.with_representation('csr')}'")
    return None


def _two_of_four(scheme: Scheme) -> str | None:
    if not isinstance(scheme.pattern, NM) or scheme.pattern.nm != (2, 4):
        return "semi stores only 2:4 sparsity; write 'nm:2:4@semi'"
    return None


@dataclass(frozen=True)
class Stores:
    """What one representation can store, from the scheme alone."""

    patterns: frozenset[str] | None = None  # pattern names it stores; None = every sparse pattern
    dense: bool = False  # whether it also stores the dense pattern (only `masked`, the reference)
    rule: Callable[[Scheme], str | None] | None = None  # a further limit: why it refuses, and the fix

    def refusal(self, scheme: Scheme) -> str | None:
        """Why this representation cannot store ``scheme`` (with the fix), or None if it can."""
        if not scheme.pattern.sparse:
            return None if self.dense else "a dense weight has nothing to store sparsely; write 'dense'"
        if self.patterns is not None and scheme.pattern.name not in self.patterns:
            return (f"representation {scheme.representation!r} stores only {', '.join(sorted(self.patterns))} "
                    f"patterns; use '{scheme.with_representation('csr')}' or "
                    f"'{scheme.with_representation('masked')}' instead")
        return self.rule(scheme) if self.rule else None


# Every representation name a scheme may carry. The keys match representations.REPRESENTATIONS,
# plus the selection policies (sparsify picks a representation per layer; not storages of their own):
# `auto`, the fastest that trains within dense's memory; `fastest`, the fastest whatever its memory.
STORES: dict[str, Stores] = {
    "masked": Stores(dense=True),
    "csr": Stores(),
    "bsr": Stores(frozenset({"block"}), rule=_square_blocks),
    "bsr_cpp": Stores(frozenset({"block"})),  # its own kernels: any block shape
    "semi": Stores(frozenset({"nm"}), rule=_two_of_four),
    "sparseprop": Stores(),  # the published peer's kernels (element-wise CSR-like): any pattern
    "auto": Stores(),
    "fastest": Stores(),
}


def _timing_refusal(scheme: Scheme) -> str | None:
    """Why the pattern cannot take the scheme's schedule or distribution (with the fix), or None."""
    pattern, schedule = scheme.pattern, scheme.schedule
    if schedule.dynamic and pattern.unit is None:
        what = "dense has nothing to prune" if not pattern.sparse else f"{pattern.family} fixes which weights it keeps"
        return f"schedule '{schedule}' moves single weights or blocks, and {what}; use random, magnitude or block"
    if schedule.starts_dense and not isinstance(pattern, (Magnitude, Block)):
        return (f"'{schedule}' prunes by magnitude; write 'magnitude:{pattern.level:g}/{schedule}' "
                "(or a block pattern, pruned by block norm)")
    if scheme.distribution != "uniform" and pattern.unit != (1, 1):
        return (f"distribution '{scheme.distribution}' spreads single weights; use it with random or magnitude, "
                "or drop it for the uniform distribution")
    return None


@dataclass(frozen=True)
class Scheme:
    pattern: Pattern  # the pattern value, e.g. patterns.Block(4, 4, 0.5)
    representation: str = DEFAULT_REPRESENTATION
    schedule: Static = STATIC  # when the mask is chosen (schedules.py); static: at initialisation
    distribution: str = "uniform"  # how S is spread over the layers (distributions.py)

    def __post_init__(self):
        stores = STORES.get(self.representation)
        if stores is None:
            raise ValueError(f"scheme '{self}': unknown representation {self.representation!r}; "
                             f"choose one of {', '.join(sorted(STORES))}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"scheme '{self}': unknown distribution {self.distribution!r}; "
                             f"choose one of {', '.join(DISTRIBUTIONS)}")
        why = stores.refusal(self) or _timing_refusal(self)
        if why:
            raise ValueError(f"scheme '{self}': {why}")

    def _timing_parts(self, schedule_text: str) -> list[str]:
        """The schedule (as ``schedule_text``) and distribution, each only where it is not the default."""
        return ([schedule_text] if self.schedule.dynamic else []) + \
               ([self.distribution] if self.distribution != "uniform" else [])

    @property
    def timing(self) -> str:
        """The ``/SCHEDULE/DISTRIBUTION`` suffix (empty for the defaults)."""
        return "".join(f"/{p}" for p in self._timing_parts(str(self.schedule)))

    def __str__(self) -> str:
        if self.representation == DEFAULT_REPRESENTATION:
            return f"{self.pattern}{self.timing}"
        return f"{self.pattern}{self.timing}@{self.representation}"

    @property
    def slug(self) -> str:
        """File-safe id: ``dense``, ``random-0.5-csr``, ``block4x4-0.5-bsr``, ``nm2of4-masked``,
        ``random-0.9-rigl-erk-csr``."""
        body = "-".join([self.pattern.slug, *([self.timing_slug] if self.timing_slug else [])])
        if not self.pattern.sparse and self.representation == DEFAULT_REPRESENTATION:
            return body
        return f"{body}-{self.representation}"

    @property
    def timing_slug(self) -> str:
        """The file-safe form of ``timing``: ``rigl-erk``, ``gmp`` (empty for the defaults)."""
        return "-".join(self._timing_parts(self.schedule.slug))

    @property
    def static(self) -> Scheme:
        """The same pattern, distribution and representation with its mask fixed at initialisation."""
        return replace(self, schedule=STATIC)

    @property
    def target_sparsity(self) -> float:
        """The fraction of weights the pattern aims to zero in each pruned layer."""
        return self.pattern.target_sparsity

    def with_representation(self, representation: str) -> Scheme:
        """The same scheme in another representation (ValueError if that one cannot store it)."""
        return replace(self, representation=representation)


def parse_scheme(text: str | Scheme) -> Scheme:
    """Parse ``PATTERN[:PARAMS][/SCHEDULE][/DISTRIBUTION][@REPRESENTATION]`` into a Scheme; ValueError
    names what is wrong. A Scheme is returned as it is."""
    if isinstance(text, Scheme):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty scheme; write e.g. 'dense', 'random:0.5', 'block:4x4:0.5@bsr', 'nm:2:4', "
                         "'magnitude:0.9/gmp'")
    text = text.strip()
    body, _, representation = text.partition("@")
    pattern_text, *timing = body.split("/")
    schedule, distribution = None, None
    for part in timing:
        if part in DISTRIBUTIONS:
            if distribution is not None:
                raise ValueError(f"scheme {text!r}: two distributions ({distribution!r}, {part!r}); give one")
            distribution = part
        else:
            if schedule is not None:
                raise ValueError(f"scheme {text!r}: two schedules ({schedule}, {part!r}); give one")
            schedule = parse_schedule(part, text)
    return Scheme(parse_pattern(pattern_text, text), representation or DEFAULT_REPRESENTATION,
                  schedule or STATIC, distribution or "uniform")
