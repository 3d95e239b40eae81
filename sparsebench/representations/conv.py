"""The ways a sparse weight convolves.

* Direct: sparsebench's C++ kernels compute on the kept weights themselves
  (``kernels.sparse_conv2d``), vectorised over the batch or over the output width; csr and bsr_cpp
  use them on the CPU in float32, the path measured per layer and input shape (``conv_paths``).
* Through the weight's matrix product (``conv2d_recompute``, the default ``SparseWeight.conv2d``):
  im2col rows built from strided views of the input, and an autograd function that keeps only the
  input for backward and rebuilds the rows chunk by chunk there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CONV_CHUNK_BYTES = 2 * 2**20  # im2col rows built at a time by the sparse conv path (forward and backward)
DIRECT_MIN_BATCH = 4  # below it the batch kernels' vectors are mostly padding (the untimed fallback's rule)


def _offset_views(xp: torch.Tensor, kernel, stride, dilation, h_dim: int):
    """The kh * kw strided views of an already padded input ``xp`` whose height is dimension
    ``h_dim`` (its width the next), one per kernel offset, each holding the input under that offset
    at every output position, and (n, h_out, w_out). Views, no copies: writing into one writes
    into ``xp``."""
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

    Built from kh * kw strided views of the padded input, permuted to (n, h, w, c) so each output
    row gathers contiguous runs, and one copy; torch's F.unfold (im2col) is much slower on CPU at
    the CNN's shapes, and it also needs a transpose afterwards."""
    ph, pw = padding
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    views, (n, h_out, w_out) = _offset_views(xp.permute(0, 2, 3, 1), kernel, stride, dilation, h_dim=1)
    cols = torch.stack(views, dim=-1)  # (n, h_out, w_out, c, kh * kw)
    return cols.reshape(n * h_out * w_out, x.shape[1] * math.prod(kernel)), (n, h_out, w_out)


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


def conv2d_recompute(weight: nn.Module, x: torch.Tensor, stride, padding, dilation) -> torch.Tensor:
    """The convolution of ``x`` (NCHW) with ``weight`` (a ``SparseWeight``; base imports this module,
    not the other way round) as its ``linear_forward`` / ``linear_backward`` on the im2col rows, in
    chunks of images, keeping only ``x`` for backward. Returns an NCHW view that is channels-last in
    memory."""
    y = _ConvRecompute.apply(x, weight.stored, weight, (tuple(weight.shape[2:]), stride, padding, dilation))
    return y.permute(0, 3, 1, 2)  # (n, h_out, w_out, out) -> NCHW view, channels-last in memory
