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

Imported by the loader once the library is loaded (the registrations need the schemas).
"""

from __future__ import annotations

import torch

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
