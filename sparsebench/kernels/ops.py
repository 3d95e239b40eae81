"""The Python halves of the ``sparse_linear`` ops: fake (shape) implementations, autograd, and the
checked entry points the representations call.

Ops (schemas in csrc/ops.cpp; shape, dtype and index checks in C++, raising ValueError):

* ``bsr_linear(x, values, row_ptr, col_idx, t_row_ptr, t_col_idx, perm, out_features)``
  ``y = x @ W^T`` for BSR ``W``, differentiable in ``x`` and ``values``; its backward is
  ``bsr_input_grad`` and ``bsr_weight_grad``. ``bsr_forward`` is the same product without the
  block-column structure (no autograd).
* ``csr_linear_t(x_t, values, bias, row_ptr, col, t_row_ptr, t_col, perm)``: feature-major
  ``y^T = W @ x^T + bias`` for CSR ``W``, differentiable in ``x_t``, ``values`` and ``bias``; its
  backward is ``csr_spmm`` (on W^T's structure) and ``csr_sddmm``.
* ``transpose(a)``: ``a^T`` contiguous (differentiable), how the CSR layer's row-major activations
  become feature-major and back.

Imported by the loader once the library is loaded (the registrations need the schemas).
"""

from __future__ import annotations

import torch

ops = torch.ops.sparse_linear
NS = "sparse_linear"


# ------------------------------------------------------------------ fake (meta) implementations
@torch.library.register_fake(f"{NS}::bsr_forward")
def _(x, values, row_ptr, col_idx, out_features):
    return x.new_empty((x.shape[0], out_features))


@torch.library.register_fake(f"{NS}::bsr_linear")
def _(x, values, row_ptr, col_idx, t_row_ptr, t_col_idx, perm, out_features):
    return x.new_empty((x.shape[0], out_features))


@torch.library.register_fake(f"{NS}::bsr_input_grad")
def _(dy, values, t_row_ptr, t_col_idx, perm, in_features):
    return dy.new_empty((dy.shape[0], in_features))


@torch.library.register_fake(f"{NS}::bsr_weight_grad")
def _(dy, x, row_ptr, col_idx, R, C):
    return x.new_empty((col_idx.shape[0], R, C))


@torch.library.register_fake(f"{NS}::csr_spmm")
def _(row_ptr, col, values, b, bias):
    return b.new_empty((row_ptr.shape[0] - 1, b.shape[1]))


@torch.library.register_fake(f"{NS}::csr_sddmm")
def _(row_ptr, col, a, b):
    return a.new_empty((col.shape[0],))


@torch.library.register_fake(f"{NS}::csr_linear_t")
def _(x_t, values, bias, row_ptr, col, t_row_ptr, t_col, perm):
    return x_t.new_empty((row_ptr.shape[0] - 1, x_t.shape[1]))


@torch.library.register_fake(f"{NS}::transpose")
def _(a):
    return a.new_empty((a.shape[1], a.shape[0]))


# ------------------------------------------------------------------ autograd
def _transpose_setup(ctx, inputs, output):
    pass


def _transpose_backward(ctx, grad):
    return ops.transpose(grad)


torch.library.register_autograd(f"{NS}::transpose", _transpose_backward, setup_context=_transpose_setup)


def _bsr_setup(ctx, inputs, output):
    x, values, row_ptr, col_idx, t_row_ptr, t_col_idx, perm, _ = inputs
    ctx.save_for_backward(x, values, row_ptr, col_idx, t_row_ptr, t_col_idx, perm)


def _bsr_backward(ctx, dy):
    x, values, row_ptr, col_idx, t_row_ptr, t_col_idx, perm = ctx.saved_tensors
    dy = dy.contiguous()
    dx = dvalues = None
    if ctx.needs_input_grad[0]:
        dx = ops.bsr_input_grad(dy, values, t_row_ptr, t_col_idx, perm, x.shape[1])
    if ctx.needs_input_grad[1]:
        dvalues = ops.bsr_weight_grad(dy, x, row_ptr, col_idx, values.shape[1], values.shape[2])
    return dx, dvalues, None, None, None, None, None, None


torch.library.register_autograd(f"{NS}::bsr_linear", _bsr_backward, setup_context=_bsr_setup)


def _csr_setup(ctx, inputs, output):
    x_t, values, bias, row_ptr, col, t_row_ptr, t_col, perm = inputs
    ctx.save_for_backward(x_t, values, row_ptr, col, t_row_ptr, t_col, perm)


def _csr_backward(ctx, dy_t):
    x_t, values, row_ptr, col, t_row_ptr, t_col, perm = ctx.saved_tensors
    dy_t = dy_t.contiguous() if dy_t.is_contiguous() or dy_t.stride(0) != 1 else ops.transpose(dy_t.t())
    dx_t = dvalues = dbias = None
    if ctx.needs_input_grad[0]:
        dx_t = ops.csr_spmm(t_row_ptr, t_col, values[perm], dy_t, None)
    if ctx.needs_input_grad[1]:
        dvalues = ops.csr_sddmm(row_ptr, col, dy_t, x_t)
    if ctx.needs_input_grad[2]:
        dbias = dy_t.sum(1)
    return dx_t, dvalues, dbias, None, None, None, None, None


torch.library.register_autograd(f"{NS}::csr_linear_t", _csr_backward, setup_context=_csr_setup)
