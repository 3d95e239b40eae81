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


def _shifted_views(x: torch.Tensor, kernel, stride, padding, dilation, channels_last: bool):
    """The kh * kw strided views of the padded input, one per kernel offset, each holding the input
    under that offset at every output position, and (n, h_out, w_out). ``channels_last`` permutes
    the input to (n, h, w, c) first, so each output row later gathers contiguous runs."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, _, h, w = x.shape
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = F.pad(x, (pw, pw, ph, ph))
    if channels_last:
        xp = xp.permute(0, 2, 3, 1)
    h_dim = 1 if channels_last else 2  # the width is the next dimension

    def shifted(i: int, j: int) -> torch.Tensor:
        index = [slice(None)] * 4
        index[h_dim] = slice(i * dh, i * dh + sh * (h_out - 1) + 1, sh)
        index[h_dim + 1] = slice(j * dw, j * dw + sw * (w_out - 1) + 1, sw)
        return xp[tuple(index)]

    views = [shifted(i, j) for i in range(kh) for j in range(kw)]
    return views, (n, h_out, w_out)


def im2col_rows(x: torch.Tensor, kernel, stride, padding, dilation):
    """The conv input as a matrix of rows, one per output position: (n * h_out * w_out, c * kh * kw),
    columns in the (c, kh, kw) order of a conv weight seen as a matrix.

    Built from kh * kw strided views of the padded input and one copy; torch's F.unfold (im2col)
    is much slower on CPU at the CNN's shapes, and it also needs a transpose afterwards."""
    views, (n, h_out, w_out) = _shifted_views(x, kernel, stride, padding, dilation, channels_last=True)
    cols = torch.stack(views, dim=-1)  # (n, h_out, w_out, c, kh * kw)
    return cols.reshape(n * h_out * w_out, x.shape[1] * math.prod(kernel)), (n, h_out, w_out)


def im2col_features(x: torch.Tensor, kernel, stride, padding, dilation):
    """The conv input feature-major: (c * kh * kw, n * h_out * w_out), the transpose of
    ``im2col_rows``, built with one copy from the same strided views (for kernels that vectorise
    over positions)."""
    views, (n, h_out, w_out) = _shifted_views(x, kernel, stride, padding, dilation, channels_last=False)
    cols = torch.stack(views, dim=2)  # (n, c, kh * kw, h_out, w_out)
    return cols.permute(1, 2, 0, 3, 4).reshape(x.shape[1] * math.prod(kernel), n * h_out * w_out), (n, h_out, w_out)


class SparseWeight(nn.Module):
    name: ClassVar[str]  # its key in REPRESENTATIONS; which schemes it stores is schemes.STORES[name]

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, scheme: Scheme):
        super().__init__()
        self.shape = tuple(weight.shape)  # the layer's weight shape (4-D for conv)
        self.scheme = scheme

    @classmethod
    def check_layer(cls, scheme: Scheme, shape2d: tuple[int, int], layer: str) -> None:
        """Refuse a layer this representation cannot serve here (shape, device, kernels): ValueError
        or RepresentationUnavailable naming the layer and the fix. Default: any."""

    # -- computing -----------------------------------------------------------------------
    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W^T`` for ``x`` of shape (n, in)."""
        raise NotImplementedError

    def conv2d(self, x: torch.Tensor, stride, padding, dilation) -> torch.Tensor:
        out_ch = self.shape[0]
        cols, (n, h_out, w_out) = im2col_rows(x, self.shape[2:], stride, padding, dilation)
        y = self.linear(cols)  # (n * h_out * w_out, out)
        return y.view(n, h_out, w_out, out_ch).permute(0, 3, 1, 2)

    def linear_bias(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ W^T + bias``. A representation whose kernel can fuse the bias overrides this."""
        y = self.linear(x)
        return y if bias is None else y + bias

    def conv2d_bias(self, x: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation) -> torch.Tensor:
        y = self.conv2d(x, stride, padding, dilation)
        return y if bias is None else y + bias.view(1, -1, 1, 1)

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
        y = self.sparse_weight.linear_bias(x.reshape(-1, self.in_features), self.bias)
        return y.reshape(*lead, self.out_features)


class SparseConv2d(nn.Module):
    """Drop-in for nn.Conv2d (groups=1) whose weight is a SparseWeight."""

    def __init__(self, weight: SparseWeight, bias: torch.Tensor | None, conv: nn.Conv2d):
        super().__init__()
        self.sparse_weight = weight
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sparse_weight.conv2d_bias(x, self.bias, self.stride, self.padding, self.dilation)
