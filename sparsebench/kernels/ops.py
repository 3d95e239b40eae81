"""The Python halves of the ``sparse_linear`` ops: fake (shape) implementations, autograd, and the
checked entry points the representations call.

Ops (schemas in csrc/ops.cpp; shape, dtype and index checks in C++, raising ValueError):

* ``bsr_linear(x, values, bias, row_ptr, col_idx, t_row_ptr, t_col_idx, perm, out_features)``
  ``y = x @ W^T + bias`` for BSR ``W`` (bias optional, added inside the kernel), differentiable in
  ``x``, ``values`` and ``bias``; its backward is
  ``bsr_input_grad`` and ``bsr_weight_grad``. ``bsr_forward`` is the same product without the
  block-column structure (no autograd).
* ``csr_linear(x, values, bias, row_ptr, col, t_row_ptr, t_col, perm)``: ``y = x @ W^T + bias``
  for CSR ``W`` on row-major ``x``, differentiable in ``x``, ``values`` and ``bias``; its backward
  is ``csr_mm`` (on W^T's structure, reading W's values through ``perm``) and ``csr_sddmm``.

* ``sparse_conv2d(x, values, bias, row_ptr, col, block, kernel, stride, padding)``: a direct
  convolution of NCHW ``x`` with the weight stored as CSR (``block`` (1, 1)) or BSR (``block``
  (R, C)) over its (out, in*kh*kw) matrix, differentiable in ``x``, ``values`` and ``bias``; its
  backward is ``sparse_conv2d_backward`` (input and weight gradient from one packing of ``dy``).
  ``sparse_conv2d_forward`` is the same product without autograd.
* ``sparse_conv2d_width`` (with ``_forward`` and ``_backward``): the same convolution vectorised over
  the output width instead of the batch (for small batches); output and input gradient NCHW contiguous.

Imported by the loader once the library is loaded (the registrations need the schemas).
"""

from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

ops = torch.ops.sparse_linear
NS = "sparse_linear"


# ------------------------------------------------------------------ fake (meta) implementations
@torch.library.register_fake(f"{NS}::bsr_forward")
def _(x, values, bias, row_ptr, col_idx, out_features):
    return x.new_empty((x.shape[0], out_features))


@torch.library.register_fake(f"{NS}::bsr_linear")
def _(x, values, bias, row_ptr, col_idx, t_row_ptr, t_col_idx, perm, out_features):
    return x.new_empty((x.shape[0], out_features))


@torch.library.register_fake(f"{NS}::bsr_input_grad")
def _(dy, values, t_row_ptr, t_col_idx, perm, in_features):
    return dy.new_empty((dy.shape[0], in_features))


@torch.library.register_fake(f"{NS}::bsr_weight_grad")
def _(dy, x, row_ptr, col_idx, R, C):
    return x.new_empty((col_idx.shape[0], R, C))


@torch.library.register_fake(f"{NS}::csr_mm")
def _(row_ptr, col, values, x, bias, perm=None):
    return x.new_empty((x.shape[0], row_ptr.shape[0] - 1))


@torch.library.register_fake(f"{NS}::csr_sddmm")
def _(row_ptr, col, dy, x):
    return x.new_empty((col.shape[0],))


@torch.library.register_fake(f"{NS}::csr_linear")
def _(x, values, bias, row_ptr, col, t_row_ptr, t_col, perm):
    return x.new_empty((x.shape[0], row_ptr.shape[0] - 1))


def _conv_out(x, row_ptr, block, kernel, stride, padding):
    oc = (row_ptr.shape[0] - 1) * block[0]
    oh = (x.shape[2] + 2 * padding[0] - kernel[0]) // stride[0] + 1
    ow = (x.shape[3] + 2 * padding[1] - kernel[1]) // stride[1] + 1
    # channels-last in memory, as the kernel writes it
    return torch.empty((x.shape[0], oc, oh, ow), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


@torch.library.register_fake(f"{NS}::sparse_conv2d")
def _(x, values, bias, row_ptr, col, block, kernel, stride, padding):
    return _conv_out(x, row_ptr, block, kernel, stride, padding)


@torch.library.register_fake(f"{NS}::sparse_conv2d_forward")
def _(x, values, bias, row_ptr, col, block, kernel, stride, padding):
    return _conv_out(x, row_ptr, block, kernel, stride, padding)


@torch.library.register_fake(f"{NS}::sparse_conv2d_backward")
def _(dy, x, values, row_ptr, col, block, kernel, stride, padding, need_x, need_w):
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=suggest_memory_format(x)) if need_x \
        else x.new_empty((0,))
    dvalues = values.new_empty(values.shape) if need_w else x.new_empty((0,))
    return dx, dvalues


def _conv_width_out(x, row_ptr, block, kernel, stride, padding):
    out = _conv_out(x, row_ptr, block, kernel, stride, padding)
    return torch.empty(out.shape, dtype=x.dtype, device=x.device)  # NCHW contiguous, as the width kernels write


@torch.library.register_fake(f"{NS}::sparse_conv2d_width")
def _(x, values, bias, row_ptr, col, block, kernel, stride, padding):
    return _conv_width_out(x, row_ptr, block, kernel, stride, padding)


@torch.library.register_fake(f"{NS}::sparse_conv2d_width_forward")
def _(x, values, bias, row_ptr, col, block, kernel, stride, padding):
    return _conv_width_out(x, row_ptr, block, kernel, stride, padding)


@torch.library.register_fake(f"{NS}::sparse_conv2d_width_backward")
def _(dy, x, values, row_ptr, col, block, kernel, stride, padding, need_x, need_w):
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device) if need_x else x.new_empty((0,))
    dvalues = values.new_empty(values.shape) if need_w else x.new_empty((0,))
    return dx, dvalues


# ------------------------------------------------------------------ autograd


def _bsr_setup(ctx, inputs, output):
    x, values, _, row_ptr, col_idx, t_row_ptr, t_col_idx, perm, _ = inputs
    ctx.save_for_backward(x, values, row_ptr, col_idx, t_row_ptr, t_col_idx, perm)


def _bsr_backward(ctx, dy):
    x, values, row_ptr, col_idx, t_row_ptr, t_col_idx, perm = ctx.saved_tensors
    dy = dy.contiguous()
    dx = dvalues = dbias = None
    if ctx.needs_input_grad[0]:
        dx = ops.bsr_input_grad(dy, values, t_row_ptr, t_col_idx, perm, x.shape[1])
    if ctx.needs_input_grad[1]:
        dvalues = ops.bsr_weight_grad(dy, x, row_ptr, col_idx, values.shape[1], values.shape[2])
    if ctx.needs_input_grad[2]:
        dbias = dy.sum(0)
    return dx, dvalues, dbias, None, None, None, None, None, None


torch.library.register_autograd(f"{NS}::bsr_linear", _bsr_backward, setup_context=_bsr_setup)


def _csr_setup(ctx, inputs, output):
    x, values, bias, row_ptr, col, t_row_ptr, t_col, perm = inputs
    ctx.save_for_backward(x, values, row_ptr, col, t_row_ptr, t_col, perm)


def _csr_backward(ctx, dy):
    x, values, row_ptr, col, t_row_ptr, t_col, perm = ctx.saved_tensors
    dy = dy.contiguous()
    dx = dvalues = dbias = None
    if ctx.needs_input_grad[0]:
        dx = ops.csr_mm(t_row_ptr, t_col, values, dy, None, perm)  # W^T's values read through perm: no copy
    if ctx.needs_input_grad[1]:
        dvalues = ops.csr_sddmm(row_ptr, col, dy, x)
    if ctx.needs_input_grad[2]:
        dbias = dy.sum(0)
    return dx, dvalues, dbias, None, None, None, None, None


torch.library.register_autograd(f"{NS}::csr_linear", _csr_backward, setup_context=_csr_setup)


def _conv_setup(ctx, inputs, output):
    x, values, bias, row_ptr, col, block, kernel, stride, padding = inputs
    ctx.save_for_backward(x, values, row_ptr, col)
    ctx.geometry = (block, kernel, stride, padding)
    ctx.has_bias = bias is not None


def _conv_backward_with(backward_op):
    def backward(ctx, dy):
        x, values, row_ptr, col = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        dx = dvalues = dbias = None
        if need_x or need_w:
            gx, gw = backward_op(dy, x, values, row_ptr, col, *ctx.geometry, need_x, need_w)
            dx, dvalues = (gx if need_x else None), (gw if need_w else None)
        if need_b and ctx.has_bias:
            dbias = dy.sum((0, 2, 3))
        return dx, dvalues, dbias, None, None, None, None, None, None
    return backward


torch.library.register_autograd(f"{NS}::sparse_conv2d", _conv_backward_with(ops.sparse_conv2d_backward),
                                setup_context=_conv_setup)
torch.library.register_autograd(f"{NS}::sparse_conv2d_width", _conv_backward_with(ops.sparse_conv2d_width_backward),
                                setup_context=_conv_setup)
