"""``csr``: only the kept values are stored, in torch's sparse CSR layout, and they are the only
parameter the optimizer sees (so Adam's state is sized by the kept count).

Per step, with ``W`` (out, in) and ``x`` (n, in):
  forward         y^T   = W @ x^T              sparse CSR x dense
  input gradient  dx^T  = W^T @ dy^T           W^T is CSR too: indices transposed once, values gathered per step
  weight gradient dW[k] = (dy^T @ x)[k]         at kept positions only (SDDMM, torch.sparse.sampled_addmm)
No dense copy of the weight exists at any point.
"""

from __future__ import annotations

import torch
from torch import nn

from ..patterns import as_matrix
from .base import SparseWeight


def csr_structure(mask2d: torch.Tensor):
    """(crow, col) of the kept positions in row-major order, and the transposed structure:
    (t_crow, t_col, perm) such that ``values[perm]`` are W^T's CSR values. int32 (torch's sparse
    kernels accept it), which halves the index memory against int64."""
    rows, cols = mask2d.shape
    r, c = mask2d.nonzero(as_tuple=True)
    crow = torch.zeros(rows + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(r, minlength=rows), 0)
    perm = torch.argsort(c * rows + r)  # column-major order of the kept entries = CSR order of W^T
    t_crow = torch.zeros(cols + 1, dtype=torch.int64)
    t_crow[1:] = torch.cumsum(torch.bincount(c, minlength=cols), 0)
    return tuple(t.to(torch.int32) for t in (crow, c, t_crow, r[perm], perm))


class _CsrMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, layer):
        ctx.save_for_backward(x, values)
        ctx.layer = layer
        w = torch.sparse_csr_tensor(layer.crow, layer.col, values, layer.shape2d)
        return torch.sparse.mm(w, x.t().contiguous()).t()

    @staticmethod
    def backward(ctx, dy):
        x, values = ctx.saved_tensors
        layer = ctx.layer
        dy = dy.contiguous()
        dx = dvalues = None
        if ctx.needs_input_grad[0]:
            wt = torch.sparse_csr_tensor(layer.t_crow, layer.t_col, values[layer.perm], layer.shape2d[::-1])
            dx = torch.sparse.mm(wt, dy.t().contiguous()).t()
        if ctx.needs_input_grad[1]:
            pattern = torch.sparse_csr_tensor(layer.crow, layer.col, values.detach(), layer.shape2d)
            dvalues = torch.sparse.sampled_addmm(pattern, dy.t(), x, beta=0.0).values()
        return dx, dvalues, None


class CsrWeight(SparseWeight):
    name = "csr"

    def __init__(self, weight, mask, scheme):
        super().__init__(weight, mask, scheme)
        mask2d = as_matrix(mask).bool().cpu()
        self.shape2d = tuple(mask2d.shape)
        crow, col, t_crow, t_col, perm = csr_structure(mask2d)
        for name, t in [("crow", crow), ("col", col), ("t_crow", t_crow), ("t_col", t_col), ("perm", perm)]:
            self.register_buffer(name, t.to(weight.device))
        self.values = nn.Parameter(as_matrix(weight).detach()[mask2d.to(weight.device)].contiguous())

    def linear(self, x):
        return _CsrMatmul.apply(x, self.values, self)

    @property
    def stored(self):
        return self.values

    def densify(self, stored_like):
        dense = torch.sparse_csr_tensor(self.crow, self.col, stored_like, self.shape2d)
        return dense.to_dense().reshape(self.shape)
