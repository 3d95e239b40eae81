"""Sparsity patterns: a registry from a pattern's name to the function that makes its mask.

A mask is a bool tensor of the weight's shape, True = weight kept. A weight of more than two
dimensions (a conv kernel) is seen as the matrix ``(out, in * kh * kw)``.

Rounding rule (the one rule used everywhere): of ``n`` units (weights, or blocks for ``block``),
``n_zero = min(floor(S * n + 0.5), n - 1)`` are zeroed: S*n rounded half up, but never every
unit, so no layer is cut off entirely. ``nm`` needs no rounding: exactly N of every M are kept.

Adding a pattern: write ``make_<name>(weight2d, scheme, generator) -> mask2d``, and add one
``Pattern`` entry to ``PATTERNS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .schemes import Scheme, parse_scheme


def n_zeroed(sparsity: float, n: int) -> int:
    """How many of ``n`` units a sparsity S zeroes: S*n rounded half up, at most n - 1."""
    if n <= 0:
        return 0
    return min(math.floor(sparsity * n + 0.5), n - 1)


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The 2-D view of a weight: ``(out, in * kh * kw)`` for conv kernels."""
    return weight.reshape(weight.shape[0], -1)


def _keep_largest(scores: torch.Tensor, n_zero: int) -> torch.Tensor:
    """Bool mask of ``scores``' shape keeping all but the ``n_zero`` smallest (ties: lower index zeroed first)."""
    flat = scores.reshape(-1)
    mask = torch.ones(flat.numel(), dtype=torch.bool, device=scores.device)
    if n_zero:
        # stable sort makes ties deterministic
        order = torch.sort(flat.float(), stable=True).indices
        mask[order[:n_zero]] = False
    return mask.reshape(scores.shape)


def make_dense(w: torch.Tensor, scheme: Scheme, gen: torch.Generator) -> torch.Tensor:
    return torch.ones(w.shape, dtype=torch.bool, device=w.device)


def make_random(w: torch.Tensor, scheme: Scheme, gen: torch.Generator) -> torch.Tensor:
    scores = torch.rand(w.shape, generator=gen)  # uniform: every weight equally likely to go
    return _keep_largest(scores, n_zeroed(scheme.sparsity, w.numel())).to(w.device)


def make_magnitude(w: torch.Tensor, scheme: Scheme, gen: torch.Generator) -> torch.Tensor:
    return _keep_largest(w.detach().abs(), n_zeroed(scheme.sparsity, w.numel()))


def make_block(w: torch.Tensor, scheme: Scheme, gen: torch.Generator) -> torch.Tensor:
    """Blocks with the smallest L1 norm are zeroed (magnitude pruning at block granularity)."""
    r, c = scheme.block
    rows, cols = w.shape
    norms = w.detach().abs().reshape(rows // r, r, cols // c, c).sum(dim=(1, 3))
    keep_blocks = _keep_largest(norms, n_zeroed(scheme.sparsity, norms.numel()))
    return keep_blocks.repeat_interleave(r, dim=0).repeat_interleave(c, dim=1)


def make_nm(w: torch.Tensor, scheme: Scheme, gen: torch.Generator) -> torch.Tensor:
    """In each group of M consecutive weights along the input dimension, keep the N largest."""
    n, m = scheme.nm
    rows, cols = w.shape
    groups = w.detach().abs().reshape(rows, cols // m, m)
    top = torch.topk(groups, n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(rows, cols)


def _check_block(scheme: Scheme, shape: tuple[int, int], layer: str) -> None:
    r, c = scheme.block
    if shape[0] % r or shape[1] % c:
        raise ValueError(
            f"layer {layer!r}: block {r}x{c} does not tile its {shape[0]}x{shape[1]} weight matrix; "
            f"choose a block whose rows divide {shape[0]} and whose cols divide {shape[1]}, "
            f"or leave this layer dense (sparsify(..., skip=[{layer!r}]))"
        )


def _check_nm(scheme: Scheme, shape: tuple[int, int], layer: str) -> None:
    n, m = scheme.nm
    if shape[1] % m:
        raise ValueError(
            f"layer {layer!r}: N:M groups of M={m} do not divide its input dimension {shape[1]}; "
            f"choose an M that divides {shape[1]} (e.g. nm:2:4), or leave this layer dense"
        )


def _no_check(scheme: Scheme, shape: tuple[int, int], layer: str) -> None:
    pass


@dataclass(frozen=True)
class Pattern:
    name: str
    syntax: str  # how it is written in a scheme string
    n_params: int  # how many ':'-separated parameters follow the name
    make: Callable[[torch.Tensor, Scheme, torch.Generator], torch.Tensor]
    check_shape: Callable[[Scheme, tuple[int, int], str], None] = _no_check


PATTERNS: dict[str, Pattern] = {
    "dense": Pattern("dense", "dense", 0, make_dense),
    "random": Pattern("random", "random:S", 1, make_random),
    "magnitude": Pattern("magnitude", "magnitude:S", 1, make_magnitude),
    "block": Pattern("block", "block:RxC:S", 2, make_block, _check_block),
    "nm": Pattern("nm", "nm:N:M", 2, make_nm, _check_nm),
}


def make_mask(weight: torch.Tensor, pattern: Scheme | str, seed: int = 0, layer: str = "weight") -> torch.Tensor:
    """Bool mask of ``weight``'s shape (True = kept) for ``pattern`` (a Scheme or scheme string).

    ``seed`` only matters for ``random``; the others are deterministic functions of the weight.
    Raises ValueError naming ``layer`` if the pattern does not fit the weight's shape.
    """
    scheme = parse_scheme(pattern) if isinstance(pattern, str) else pattern
    w2d = as_matrix(weight)
    spec = PATTERNS[scheme.pattern]
    spec.check_shape(scheme, tuple(w2d.shape), layer)
    gen = torch.Generator().manual_seed(int(seed))
    return spec.make(w2d, scheme, gen).reshape(weight.shape)
