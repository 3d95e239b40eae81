"""The Scheme value: a sparsity pattern, its parameters and a representation.

Syntax: ``PATTERN[:PARAMS]*[@REPRESENTATION]``, e.g. ``dense``, ``random:0.5``,
``magnitude:0.9@csr``, ``block:4x4:0.5@bsr``, ``nm:2:4@semi``. The representation defaults
to ``masked``. ``str(scheme)`` gives the canonical string back; ``scheme.slug`` is a
file- and pytest-id-safe form (``block4x4-0.5-bsr``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_REPRESENTATION = "masked"


@dataclass(frozen=True)
class Scheme:
    pattern: str  # a key of patterns.PATTERNS
    sparsity: float | None = None  # fraction zeroed, for random / magnitude / block
    block: tuple[int, int] | None = None  # (rows, cols), for block
    nm: tuple[int, int] | None = None  # (n kept, m group), for nm
    representation: str = DEFAULT_REPRESENTATION

    def __str__(self) -> str:
        if self.pattern == "dense":
            body = "dense"
        elif self.pattern == "block":
            body = f"block:{self.block[0]}x{self.block[1]}:{_fmt(self.sparsity)}"
        elif self.pattern == "nm":
            body = f"nm:{self.nm[0]}:{self.nm[1]}"
        else:
            body = f"{self.pattern}:{_fmt(self.sparsity)}"
        if self.representation == DEFAULT_REPRESENTATION:
            return body
        return f"{body}@{self.representation}"

    @property
    def slug(self) -> str:
        """File-safe id: ``dense``, ``random-0.5-csr``, ``block4x4-0.5-bsr``, ``nm2of4-masked``."""
        if self.pattern == "dense":
            return "dense" if self.representation == DEFAULT_REPRESENTATION else f"dense-{self.representation}"
        if self.pattern == "block":
            head = f"block{self.block[0]}x{self.block[1]}-{_fmt(self.sparsity)}"
        elif self.pattern == "nm":
            head = f"nm{self.nm[0]}of{self.nm[1]}"
        else:
            head = f"{self.pattern}-{_fmt(self.sparsity)}"
        return f"{head}-{self.representation}"

    @property
    def target_sparsity(self) -> float:
        """The fraction of weights the pattern aims to zero in each pruned layer."""
        if self.pattern == "dense":
            return 0.0
        if self.pattern == "nm":
            return 1.0 - self.nm[0] / self.nm[1]
        return float(self.sparsity)

    def with_representation(self, representation: str) -> Scheme:
        return Scheme(self.pattern, self.sparsity, self.block, self.nm, representation)


def _fmt(x: float) -> str:
    """Shortest text that reads back as the same float: 0.5 -> '0.5', 0.0 -> '0'."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def _sparsity(text: str, scheme: str) -> float:
    try:
        s = float(text)
    except ValueError:
        raise ValueError(f"scheme {scheme!r}: sparsity {text!r} is not a number; write e.g. 0.5") from None
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ValueError(f"scheme {scheme!r}: sparsity {s} is outside [0, 1); "
                         "give the fraction of weights to zero, e.g. 0.9")
    return s


def _int(text: str, what: str, scheme: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"scheme {scheme!r}: {what} {text!r} must be a positive whole number")
    return int(text)


def parse_scheme(text: str) -> Scheme:
    """Parse ``PATTERN[:PARAMS][@REPRESENTATION]`` into a Scheme; ValueError names what is wrong."""
    from .patterns import PATTERNS  # late: patterns import this module
    from .representations import REPRESENTATIONS

    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty scheme; write e.g. 'dense', 'random:0.5', 'block:4x4:0.5@bsr', 'nm:2:4'")
    text = text.strip()
    body, _, rep = text.partition("@")
    rep = rep or DEFAULT_REPRESENTATION
    if rep not in REPRESENTATIONS:
        raise ValueError(f"scheme {text!r}: unknown representation {rep!r}; "
                         f"choose one of {', '.join(sorted(REPRESENTATIONS))}")
    name, *params = body.split(":")
    if name not in PATTERNS:
        raise ValueError(f"scheme {text!r}: unknown pattern {name!r}; choose one of {', '.join(sorted(PATTERNS))}")
    usage = PATTERNS[name].syntax
    if len(params) != PATTERNS[name].n_params:
        raise ValueError(f"scheme {text!r}: pattern {name!r} is written {usage!r}")
    if name == "dense":
        scheme = Scheme("dense", representation=rep)
    elif name == "block":
        dims = params[0].lower().split("x")
        if len(dims) != 2:
            raise ValueError(f"scheme {text!r}: block size {params[0]!r} must be RxC, e.g. 4x4 "
                             f"(pattern is written {usage!r})")
        block = (_int(dims[0], "block rows", text), _int(dims[1], "block cols", text))
        scheme = Scheme("block", _sparsity(params[1], text), block=block, representation=rep)
    elif name == "nm":
        n, m = _int(params[0], "N", text), _int(params[1], "M", text)
        if n > m:
            raise ValueError(f"scheme {text!r}: N={n} > M={m}; N weights are kept out of every M, "
                             "so N must be at most M (e.g. nm:2:4)")
        scheme = Scheme("nm", nm=(n, m), representation=rep)
    else:
        scheme = Scheme(name, _sparsity(params[0], text), representation=rep)
    REPRESENTATIONS[rep].check_scheme(scheme)
    return scheme
