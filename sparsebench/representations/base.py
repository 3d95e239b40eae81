"""What every representation is: a module holding one layer's sparse weight, and the two layers
(Linear, Conv2d) that compute with it.

A representation subclasses ``SparseWeight`` and implements ``linear(x)`` (``x @ W^T`` for a
2-D ``x``) with its own kernels and autograd, ``to_dense()`` and ``mask()``. ``conv2d`` has a
default that unfolds the input into columns and calls ``linear``, so a representation that only
knows matrix products also serves conv layers.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..schemes import Scheme


class RepresentationUnavailable(RuntimeError):
    """The representation cannot run on this machine (e.g. ``semi`` without CUDA); a reason, not a bug."""


class SparseWeight(nn.Module):
    name: ClassVar[str]
    patterns: ClassVar[frozenset[str] | None] = None  # patterns it accepts; None = all but dense

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, scheme: Scheme):
        super().__init__()
        self.shape = tuple(weight.shape)  # the layer's weight shape (4-D for conv)
        self.scheme = scheme

    # -- validity ------------------------------------------------------------------------
    @classmethod
    def check_scheme(cls, scheme: Scheme) -> None:
        """Refuse a scheme this representation cannot store, before any layer is touched."""
        if scheme.pattern == "dense" and cls.name != "masked":
            raise ValueError(f"scheme '{scheme}': a dense weight has nothing to store sparsely; write 'dense'")
        if cls.patterns is not None and scheme.pattern != "dense" and scheme.pattern not in cls.patterns:
            allowed = ", ".join(sorted(cls.patterns))
            raise ValueError(
                f"scheme '{scheme}': representation {cls.name!r} stores only {allowed} patterns; "
                f"use '{scheme.with_representation('csr')}' or '{scheme.with_representation('masked')}' instead"
            )

    @classmethod
    def check_layer(cls, scheme: Scheme, shape2d: tuple[int, int], layer: str) -> None:
        """Refuse a layer this representation cannot serve (shape, device). Default: any."""

    # -- computing -----------------------------------------------------------------------
    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W^T`` for ``x`` of shape (n, in)."""
        raise NotImplementedError

    def conv2d(self, x: torch.Tensor, stride, padding, dilation) -> torch.Tensor:
        out_ch, in_ch, kh, kw = self.shape
        n, _, h, w = x.shape
        cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # (n, in*kh*kw, L)
        length = cols.shape[-1]
        y = self.linear(cols.transpose(1, 2).reshape(n * length, in_ch * kh * kw))  # (n*L, out)
        h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        return y.reshape(n, length, out_ch).transpose(1, 2).reshape(n, out_ch, h_out, w_out)

    # -- inspecting ----------------------------------------------------------------------
    @property
    def stored(self) -> nn.Parameter:
        """The parameter the optimizer sees (dense weight for masked, kept values otherwise)."""
        raise NotImplementedError

    def densify(self, stored_like: torch.Tensor) -> torch.Tensor:
        """Scatter a tensor laid out like ``stored`` into the layer's dense weight shape (zeros elsewhere)."""
        raise NotImplementedError

    def to_dense(self) -> torch.Tensor:
        """The weight as a dense tensor of the layer's shape, zeros at pruned positions."""
        return self.densify(self.stored.detach())

    def dense_grad(self) -> torch.Tensor | None:
        """The weight gradient in the layer's dense shape (zeros at pruned positions), or None."""
        return None if self.stored.grad is None else self.densify(self.stored.grad)

    def mask(self) -> torch.Tensor:
        """Bool tensor of the layer's shape, True = kept."""
        return self.densify(torch.ones_like(self.stored, dtype=torch.float32)) != 0

    def structure_buffers(self) -> list[torch.Tensor]:
        """Tensors that store where the kept weights are (masks, indices): the ledger's overhead."""
        return list(self.buffers(recurse=False))

    @property
    def dense_numel(self) -> int:
        return math.prod(self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, scheme='{self.scheme}'"


class SparseLinear(nn.Module):
    """Drop-in for nn.Linear whose weight is a SparseWeight."""

    def __init__(self, weight: SparseWeight, bias: torch.Tensor | None):
        super().__init__()
        self.sparse_weight = weight
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.sparse_weight.linear(x.reshape(-1, self.in_features))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


class SparseConv2d(nn.Module):
    """Drop-in for nn.Conv2d (groups=1) whose weight is a SparseWeight."""

    def __init__(self, weight: SparseWeight, bias: torch.Tensor | None, conv: nn.Conv2d):
        super().__init__()
        self.sparse_weight = weight
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.sparse_weight.conv2d(x, self.stride, self.padding, self.dilation)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y
