"""The Scheme value: a sparsity pattern (with its parameters) and a representation.

Syntax: ``PATTERN[:PARAMS]*[@REPRESENTATION]``, e.g. ``dense``, ``random:0.5``,
``magnitude:0.9@csr``, ``block:4x4:0.5@bsr``, ``nm:2:4@semi``. The representation defaults
to ``masked``. ``str(scheme)`` gives the canonical string back; ``scheme.slug`` is a
file- and pytest-id-safe form (``block4x4-0.5-bsr``). Each pattern's syntax lives with the
pattern (``patterns.PATTERNS``); which representation can store which scheme is ``STORES`` below.

A Scheme is valid by construction, and validating one needs neither torch nor any representation
module: what a representation can store is decided from the scheme alone (what it can run on this
machine, for this layer, is the representation's ``check_layer``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .patterns import NM, Block, Pattern, parse_pattern

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
    "auto": Stores(),
    "fastest": Stores(),
}


@dataclass(frozen=True)
class Scheme:
    pattern: Pattern  # the pattern value, e.g. patterns.Block(4, 4, 0.5)
    representation: str = DEFAULT_REPRESENTATION

    def __post_init__(self):
        stores = STORES.get(self.representation)
        if stores is None:
            raise ValueError(f"scheme '{self}': unknown representation {self.representation!r}; "
                             f"choose one of {', '.join(sorted(STORES))}")
        why = stores.refusal(self)
        if why:
            raise ValueError(f"scheme '{self}': {why}")

    def __str__(self) -> str:
        if self.representation == DEFAULT_REPRESENTATION:
            return str(self.pattern)
        return f"{self.pattern}@{self.representation}"

    @property
    def slug(self) -> str:
        """File-safe id: ``dense``, ``random-0.5-csr``, ``block4x4-0.5-bsr``, ``nm2of4-masked``."""
        if not self.pattern.sparse and self.representation == DEFAULT_REPRESENTATION:
            return self.pattern.slug
        return f"{self.pattern.slug}-{self.representation}"

    @property
    def target_sparsity(self) -> float:
        """The fraction of weights the pattern aims to zero in each pruned layer."""
        return self.pattern.target_sparsity

    def with_representation(self, representation: str) -> Scheme:
        """The same pattern in another representation (ValueError if that one cannot store it)."""
        return Scheme(self.pattern, representation)


def parse_scheme(text: str | Scheme) -> Scheme:
    """Parse ``PATTERN[:PARAMS][@REPRESENTATION]`` into a Scheme; ValueError names what is wrong.
    A Scheme is returned as it is."""
    if isinstance(text, Scheme):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty scheme; write e.g. 'dense', 'random:0.5', 'block:4x4:0.5@bsr', 'nm:2:4'")
    text = text.strip()
    body, _, representation = text.partition("@")
    return Scheme(parse_pattern(body, text), representation or DEFAULT_REPRESENTATION)
