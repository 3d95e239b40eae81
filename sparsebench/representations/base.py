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
    ph, pw = padding
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    if channels_last:
        xp = xp.permute(0, 2, 3, 1)
    return _offset_views(xp, kernel, stride, dilation, 1 if channels_last else 2)


def _offset_views(xp: torch.Tensor, kernel, stride, dilation, h_dim: int):
    """The kh * kw strided views of an already padded input ``xp`` whose height is dimension
    ``h_dim`` (its width the next), and (n, h_out, w_out). Views, no copies: writing into one
    writes into ``xp``."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    n, hp, wp = xp.shape[0], xp.shape[h_dim], xp.shape[h_dim + 1]
    h_out = (hp - dh * (kh - 1) - 1) // sh + 1
    w_out = (wp - dw * (kw - 1) - 1) // sw + 1

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


CONV_CHUNK_BYTES = 2 * 2**20  # im2col rows built at a time by the sparse conv path (forward and backward)


def _image_chunks(x: torch.Tensor, kernel, stride, padding, dilation):
    """Slices of whole images whose im2col rows take at most CONV_CHUNK_BYTES (at least one image)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c, h, w = x.shape
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    per_image = h_out * w_out * c * kh * kw * x.element_size()
    step = max(1, CONV_CHUNK_BYTES // max(1, per_image))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)], (h_out, w_out)


class _ConvRecompute(torch.autograd.Function):
    """A convolution through a sparse weight's matrix product, saving only its input for backward.

    Forward: for each chunk of images, im2col rows (no autograd) times W^T. Backward: the chunk's
    rows rebuilt from the saved input, the weight gradient accumulated over chunks, and the rows'
    gradient added back into the input through the same strided views (col2im). So the only
    activation kept is ``x`` (1/(kh*kw) of the full im2col matrix an autograd graph would keep),
    and the transient columns are one chunk's. Output: (n, h_out, w_out, out) contiguous."""

    @staticmethod
    def forward(ctx, x, stored, weight, geometry):
        kernel, stride, padding, dilation = geometry
        ctx.save_for_backward(x, stored)
        ctx.weight, ctx.geometry = weight, geometry
        chunks, (h_out, w_out) = _image_chunks(x, kernel, stride, padding, dilation)
        out_ch = weight.shape[0]
        if len(chunks) == 1:
            cols, _ = im2col_rows(x, kernel, stride, padding, dilation)
            return weight.linear_forward(cols).view(x.shape[0], h_out, w_out, out_ch)
        y = x.new_empty((x.shape[0], h_out, w_out, out_ch))
        for part in chunks:
            cols, _ = im2col_rows(x[part], kernel, stride, padding, dilation)
            y[part] = weight.linear_forward(cols).view(-1, h_out, w_out, out_ch)
            del cols
        return y

    @staticmethod
    def backward(ctx, dy):
        x, stored = ctx.saved_tensors
        weight, (kernel, stride, padding, dilation) = ctx.weight, ctx.geometry
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        chunks, _ = _image_chunks(x, kernel, stride, padding, dilation)
        (kh, kw), (ph, pw) = kernel, padding
        n, c, h, w = x.shape
        out_ch = weight.shape[0]
        # the input gradient is built channels-last and padded, where each kernel offset's rows add
        # into a strided view with contiguous channels
        dxp = x.new_zeros((n, h + 2 * ph, w + 2 * pw, c)) if need_x else None
        dstored = None
        for part in chunks:
            cols, (m, h_out, w_out) = im2col_rows(x[part], kernel, stride, padding, dilation)
            dy_part = dy[part].reshape(-1, out_ch)
            dcols, dw = weight.linear_backward(dy_part, cols, need_x, need_w)
            del cols
            if need_w:
                dstored = dw if dstored is None else dstored.add_(dw)
            if need_x:
                dcols = dcols.view(m, h_out, w_out, c, kh * kw)
                views, _ = _offset_views(dxp[part], kernel, stride, dilation, h_dim=1)
                for k, view in enumerate(views):
                    view.add_(dcols[..., k])
                del dcols
        dx = None
        if need_x:
            dx = dxp[:, ph:ph + h, pw:pw + w, :].permute(0, 3, 1, 2).contiguous()
        return dx, dstored, None, None


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
        """The convolution as ``linear`` on the im2col rows, in chunks of images, keeping only ``x``
        for backward (``_ConvRecompute``): the columns are rebuilt chunk by chunk there."""
        y = _ConvRecompute.apply(x, self.stored, self, (tuple(self.shape[2:]), stride, padding, dilation))
        return y.permute(0, 3, 1, 2)  # (n, h_out, w_out, out) -> NCHW view, channels-last in memory

    # -- the products without autograd, for the conv path (override with the representation's kernels)
    def linear_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W^T`` without recording autograd."""
        with torch.no_grad():
            return self.linear(x)

    def linear_backward(self, dy: torch.Tensor, x: torch.Tensor, need_x: bool, need_w: bool):
        """(dx, d stored) of ``y = x @ W^T`` for the output gradient ``dy``. Default: the
        representation's own autograd, on a recomputed product."""
        x = x.detach().requires_grad_(need_x)
        stored = self.stored
        with torch.enable_grad():
            y = self.linear(x)
            wanted = [t for t, need in ((x, need_x), (stored, need_w)) if need]
            grads = iter(torch.autograd.grad(y, wanted, dy, allow_unused=True))
        return (next(grads) if need_x else None), (next(grads) if need_w else None)

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
