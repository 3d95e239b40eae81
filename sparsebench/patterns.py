"""Sparsity patterns: small immutable values, each owning its string syntax and its mask.

``PATTERNS`` maps a pattern's name to its class. A class parses its parameters
(``Block.parse(["4x4", "0.5"], text)``), prints its canonical string (``block:4x4:0.5``) and its
file-safe slug (``block4x4-0.5``), states its target sparsity, checks that it fits a layer, and
makes the layer's mask. Nothing else in the tree learns a pattern's name.

A mask is a bool tensor of the weight's shape, True = weight kept. A weight of more than two
dimensions (a conv kernel) is seen as the matrix ``(out, in * kh * kw)``.

Rounding rule (the one rule used everywhere): of ``n`` units (weights, or blocks for ``block``),
``n_zero = min(floor(S * n + 0.5), n - 1)`` are zeroed: S*n rounded half up, but never every
unit, so no layer is cut off entirely. ``nm`` needs no rounding: exactly N of every M are kept.

torch is imported inside the mask makers only, so a scheme string can be parsed and validated
without it (``schemes`` imports this module; this module imports nothing from sparsebench).

Every pattern implements ``Pattern`` (below): its ``family`` (the pattern without its sparsity
level, ``block:4x4``) and ``level`` (that sparsity, or None where the syntax fixes it) are what a
study sweeps over, so nothing else takes a pattern's string apart.

Adding a pattern: one frozen dataclass below implementing ``Pattern``, and one entry in ``PATTERNS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@runtime_checkable
class Pattern(Protocol):
    """What every sparsity pattern is: an immutable value with a string syntax and a mask rule."""

    name: ClassVar[str]  # its key in PATTERNS: "block"
    syntax: ClassVar[str]  # how it is written, for messages: "block:RxC:S"
    sparse: ClassVar[bool]  # False only for dense: nothing to prune

    @property
    def family(self) -> str:
        """The pattern without its sparsity level (``block:4x4``); a pattern without one is its own family."""

    @property
    def level(self) -> float | None:
        """The sparsity parameter S, or None where the syntax fixes the sparsity (dense, nm)."""

    @property
    def slug(self) -> str:
        """File-safe form: ``block4x4-0.5``."""

    @property
    def target_sparsity(self) -> float:
        """The fraction of weights it aims to zero in each pruned layer."""

    def check_shape(self, shape2d: tuple[int, int], layer: str) -> None:
        """ValueError naming ``layer`` and the fix when the pattern cannot fit a weight matrix of this shape."""

    @property
    def unit(self) -> tuple[int, int] | None:
        """The (rows, cols) a mask update moves as one (1x1: single weights; a block), or None where the
        pattern's structure admits no drop and grow (dense, N:M)."""

    def make(self, w2d: torch.Tensor, gen: torch.Generator, n_zero: int | None = None) -> torch.Tensor:
        """The bool mask (True = kept) of a 2-D weight; ``n_zero`` units zeroed instead of the level's
        count where a layer-wise distribution (``distributions``) gives one."""


def n_zeroed(sparsity: float, n: int) -> int:
    """How many of ``n`` units a sparsity S zeroes: S*n rounded half up, at most n - 1."""
    if n <= 0:
        return 0
    return min(math.floor(sparsity * n + 0.5), n - 1)


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The 2-D view of a weight: ``(out, in * kh * kw)`` for conv kernels."""
    return weight.reshape(weight.shape[0], -1)


def fmt(x: float) -> str:
    """Shortest text that reads back as the same float: 0.5 -> '0.5', 0.0 -> '0'."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def parse_sparsity(text: str, scheme: str) -> float:
    try:
        s = float(text)
    except ValueError:
        raise ValueError(f"scheme {scheme!r}: sparsity {text!r} is not a number; write e.g. 0.5") from None
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ValueError(f"scheme {scheme!r}: sparsity {s} is outside [0, 1); "
                         "give the fraction of weights to zero, e.g. 0.9")
    return s


def parse_count(text: str, what: str, scheme: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"scheme {scheme!r}: {what} {text!r} must be a positive whole number")
    return int(text)


def _order_keys(flat: torch.Tensor) -> torch.Tensor:
    """int32 keys ordered as the float32 values are (equal values, -0.0 and +0.0 included, equal keys)."""
    import torch

    flat = flat.float().contiguous()
    bits = flat.view(torch.int32)
    if not bool((bits < 0).any()):  # no sign bit set (uniform, |w|, block norms): the bits order them
        return bits
    bits = (flat + 0.0).view(torch.int32)  # -0.0 -> +0.0: a sort sees them as equal
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def keep_largest(scores: torch.Tensor, n_zero: int) -> torch.Tensor:
    """Bool mask of ``scores``' shape keeping all but the ``n_zero`` smallest (ties: lower index zeroed first).

    The same mask as a stable sort's first ``n_zero`` indices, found without sorting: a bisection
    over the values' int32 keys finds the ``n_zero``-th smallest ``t``; everything below ``t`` goes,
    and of the entries equal to ``t`` the lowest-indexed ones make up the count. A sort of a large
    layer's scores holds 12 bytes per weight (values and int64 order); this holds one."""
    import torch

    flat = scores.reshape(-1)
    if not n_zero:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    keys = _order_keys(flat)
    lo, hi = int(keys.min()), int(keys.max())
    while lo < hi:  # smallest t with at least n_zero keys <= t
        mid = (lo + hi) // 2
        if int(torch.count_nonzero(keys <= mid)) >= n_zero:
            hi = mid
        else:
            lo = mid + 1
    mask = keys > lo
    tied = (keys == lo).nonzero().reshape(-1)  # in index order
    mask[tied[n_zero - int(torch.count_nonzero(keys < lo)):]] = True
    return mask.reshape(scores.shape)


def unit_scores(scores2d: torch.Tensor, unit: tuple[int, int]) -> torch.Tensor:
    """Per-unit sums of a (rows, cols) score matrix: itself for 1x1 units, block sums for RxC."""
    r, c = unit
    if (r, c) == (1, 1):
        return scores2d
    rows, cols = scores2d.shape
    return scores2d.reshape(rows // r, r, cols // c, c).sum(dim=(1, 3))


def expand_units(unit_mask: torch.Tensor, unit: tuple[int, int]) -> torch.Tensor:
    """The element mask of a unit mask: each RxC unit's value repeated over its block."""
    r, c = unit
    if (r, c) == (1, 1):
        return unit_mask
    return unit_mask.repeat_interleave(r, dim=0).repeat_interleave(c, dim=1)


class _AnyShape:
    """A pattern that fits every weight matrix."""

    def check_shape(self, shape2d: tuple[int, int], layer: str) -> None:
        pass


class _Levelled:
    """A pattern with a sparsity parameter ``sparsity``: its level, and the fraction it aims to zero."""

    sparsity: float

    @property
    def level(self) -> float:
        return float(self.sparsity)

    @property
    def target_sparsity(self) -> float:
        return float(self.sparsity)


@dataclass(frozen=True)
class Dense(_AnyShape):
    """No sparsity: the reference."""

    name: ClassVar[str] = "dense"
    syntax: ClassVar[str] = "dense"
    sparse: ClassVar[bool] = False  # nothing to prune: sparsify leaves the model as it is

    @classmethod
    def parse(cls, params: list[str], text: str) -> Dense:
        return cls()

    def __str__(self) -> str:
        return "dense"

    @property
    def family(self) -> str:
        return "dense"

    @property
    def level(self) -> None:
        return None

    @property
    def slug(self) -> str:
        return "dense"

    @property
    def target_sparsity(self) -> float:
        return 0.0

    @property
    def unit(self) -> None:
        return None

    def make(self, w2d: torch.Tensor, gen: torch.Generator, n_zero: int | None = None) -> torch.Tensor:
        return keep_largest(w2d.detach(), 0)


@dataclass(frozen=True)
class Random(_Levelled, _AnyShape):
    """Unstructured: a fraction ``sparsity`` of the weights zeroed, chosen uniformly from the seed."""

    sparsity: float
    name: ClassVar[str] = "random"
    syntax: ClassVar[str] = "random:S"
    sparse: ClassVar[bool] = True

    @classmethod
    def parse(cls, params: list[str], text: str) -> Random:
        return cls(parse_sparsity(params[0], text))

    def __str__(self) -> str:
        return f"{self.name}:{fmt(self.sparsity)}"

    @property
    def family(self) -> str:
        return self.name

    @property
    def slug(self) -> str:
        return f"{self.name}-{fmt(self.sparsity)}"

    @property
    def unit(self) -> tuple[int, int]:
        return (1, 1)

    def count(self, w2d: torch.Tensor, n_zero: int | None) -> int:
        return n_zeroed(self.sparsity, w2d.numel()) if n_zero is None else n_zero

    def make(self, w2d: torch.Tensor, gen: torch.Generator, n_zero: int | None = None) -> torch.Tensor:
        import torch

        scores = torch.rand(w2d.shape, generator=gen)  # uniform: every weight equally likely to go
        return keep_largest(scores, self.count(w2d, n_zero)).to(w2d.device)


@dataclass(frozen=True)
class Magnitude(Random):
    """Unstructured: the fraction ``sparsity`` of smallest-magnitude weights zeroed."""

    name: ClassVar[str] = "magnitude"
    syntax: ClassVar[str] = "magnitude:S"

    def make(self, w2d: torch.Tensor, gen: torch.Generator, n_zero: int | None = None) -> torch.Tensor:
        return keep_largest(w2d.detach().abs(), self.count(w2d, n_zero))


@dataclass(frozen=True)
class Block(_Levelled):
    """RxC blocks, each all kept or all zero; the fraction ``sparsity`` of blocks with the
    smallest L1 norm is zeroed (magnitude pruning at block granularity)."""

    rows: int
    cols: int
    sparsity: float
    name: ClassVar[str] = "block"
    syntax: ClassVar[str] = "block:RxC:S"
    sparse: ClassVar[bool] = True

    @classmethod
    def parse(cls, params: list[str], text: str) -> Block:
        dims = params[0].lower().split("x")
        if len(dims) != 2:
            raise ValueError(f"scheme {text!r}: block size {params[0]!r} must be RxC, e.g. 4x4 "
                             f"(pattern is written {cls.syntax!r})")
        return cls(parse_count(dims[0], "block rows", text), parse_count(dims[1], "block cols", text),
                   parse_sparsity(params[1], text))

    @property
    def block(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    def __str__(self) -> str:
        return f"block:{self.rows}x{self.cols}:{fmt(self.sparsity)}"

    @property
    def family(self) -> str:
        return f"block:{self.rows}x{self.cols}"

    @property
    def slug(self) -> str:
        return f"block{self.rows}x{self.cols}-{fmt(self.sparsity)}"

    def check_shape(self, shape2d: tuple[int, int], layer: str) -> None:
        r, c = self.block
        if shape2d[0] % r or shape2d[1] % c:
            raise ValueError(
                f"layer {layer!r}: block {r}x{c} does not tile its {shape2d[0]}x{shape2d[1]} weight matrix; "
                f"choose a block whose rows divide {shape2d[0]} and whose cols divide {shape2d[1]}, "
                f"or leave this layer dense (sparsify(..., keep_dense=[{layer!r}, ...]))"
            )

    @property
    def unit(self) -> tuple[int, int]:
        return self.block

    def make(self, w2d: torch.Tensor, gen: torch.Generator, n_zero: int | None = None) -> torch.Tensor:
        norms = unit_scores(w2d.detach().abs(), self.block)
        keep_blocks = keep_largest(norms, n_zeroed(self.sparsity, norms.numel()) if n_zero is None else n_zero)
        return expand_units(keep_blocks, self.block)


@dataclass(frozen=True)
class NM:
    """In every group of M consecutive weights along the input dimension, the N largest are kept."""

    n: int
    m: int
    name: ClassVar[str] = "nm"
    syntax: ClassVar[str] = "nm:N:M"
    sparse: ClassVar[bool] = True

    @classmethod
    def parse(cls, params: list[str], text: str) -> NM:
        n, m = parse_count(params[0], "N", text), parse_count(params[1], "M", text)
        if n > m:
            raise ValueError(f"scheme {text!r}: N={n} > M={m}; N weights are kept out of every M, "
                             "so N must be at most M (e.g. nm:2:4)")
        return cls(n, m)

    @property
    def nm(self) -> tuple[int, int]:
        return (self.n, self.m)

    def __str__(self) -> str:
        return f"nm:{self.n}:{self.m}"

    @property
    def family(self) -> str:
        return str(self)

    @property
    def level(self) -> None:
        return None

    @property
    def slug(self) -> str:
        return f"nm{self.n}of{self.m}"

    @property
    def target_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def check_shape(self, shape2d: tuple[int, int], layer: str) -> None:
        if shape2d[1] % self.m:
            raise ValueError(
                f"layer {layer!r}: N:M groups of M={self.m} do not divide its input dimension {shape2d[1]}; "
                f"choose an M that divides {shape2d[1]} (e.g. nm:2:4), "
                f"or leave this layer dense (sparsify(..., keep_dense=[{layer!r}, ...]))"
            )

    @property
    def unit(self) -> None:
        return None

    def make(self, w2d: torch.Tensor, gen: torch.Generator, n_zero: int | None = None) -> torch.Tensor:
        rows, cols = w2d.shape
        groups = w2d.detach().abs().reshape(rows, cols // self.m, self.m)
        top = groups.topk(self.n, dim=-1).indices
        return groups.new_zeros(groups.shape).bool().scatter_(-1, top, True).reshape(rows, cols)


PATTERNS: dict[str, type[Pattern]] = {cls.name: cls for cls in (Dense, Random, Magnitude, Block, NM)}


def parse_pattern(body: str, text: str | None = None) -> Pattern:
    """The pattern value written ``body`` (``block:4x4:0.5``); ``text`` is the whole scheme, for messages."""
    text = body if text is None else text
    name, *params = body.split(":")
    if name not in PATTERNS:
        raise ValueError(f"scheme {text!r}: unknown pattern {name!r}; choose one of {', '.join(sorted(PATTERNS))}")
    cls = PATTERNS[name]
    if len(params) != cls.syntax.count(":"):
        raise ValueError(f"scheme {text!r}: pattern {name!r} is written {cls.syntax!r}")
    return cls.parse(params, text)


def make_mask(weight: torch.Tensor, pattern, seed: int = 0, layer: str = "weight",
              n_zero: int | None = None) -> torch.Tensor:
    """Bool mask of ``weight``'s shape (True = kept) for ``pattern``: a Scheme, a pattern value, or
    a scheme string (its ``@representation`` does not change the mask).

    ``seed`` only matters for ``random``; the others are deterministic functions of the weight.
    ``n_zero``: how many units (weights, or blocks) to zero, where a layer-wise distribution sets it.
    Raises ValueError naming ``layer`` if the pattern does not fit the weight's shape.
    """
    import torch

    if isinstance(pattern, str):
        pattern = parse_pattern(pattern.strip().partition("@")[0], pattern)
    if not isinstance(pattern, Pattern):  # a Scheme: its pattern value
        pattern = pattern.pattern
    w2d = as_matrix(weight)
    pattern.check_shape(tuple(w2d.shape), layer)
    gen = torch.Generator().manual_seed(int(seed))
    return pattern.make(w2d, gen, n_zero).reshape(weight.shape)
