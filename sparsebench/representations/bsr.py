"""``bsr``: only the kept RxC blocks are stored, in torch's block-sparse (BSR) layout, and they are
the only parameter the optimizer sees.

Per step, with ``W`` (out, in) and ``x`` (n, in):
  forward         y^T  = W @ x^T      torch BSR x dense
  input gradient  dx^T = W^T @ dy^T   W^T is BSR of transposed blocks: structure once, values per step
  weight gradient at kept blocks only: torch has no block SDDMM on CPU, so the kept blocks' elements
                  are addressed as a CSR pattern and computed with ``torch.sparse.sampled_addmm``,
                  then gathered back into blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..patterns import as_matrix
from .base import SparseWeight
from .compressed import bsr_tensor, csr_tensor
from .csr import csr_structure, load_transposed, register_structure, transposed_structure


def block_mask_of(mask2d: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    r, c = block
    rows, cols = mask2d.shape
    return mask2d.reshape(rows // r, r, cols // c, c).any(dim=3).any(dim=1)


def to_blocks(w2d: torch.Tensor, block_mask: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Values (nnzb, R, C) of the kept blocks in block-row-major order (torch's BSR order)."""
    r, c = block
    rows, cols = w2d.shape
    return w2d.reshape(rows // r, r, cols // c, c).permute(0, 2, 1, 3)[block_mask].contiguous()


def expand_blocks(crow, col, block, shape2d):
    """Element-level CSR (crow, col) of the kept blocks' elements, and for each element (in that
    CSR order) its flat index in the (nnzb, R, C) values. Derived per step and dropped, so only the
    block indices are stored across steps."""
    r, c = block
    rows = shape2d[0]
    crow, col = crow.long(), col.long()
    per_row = (crow.diff() * c).repeat_interleave(r)  # elements in each element-row
    elem_crow = torch.zeros(rows + 1, dtype=torch.int64, device=crow.device)
    elem_crow[1:] = torch.cumsum(per_row, 0)
    row = torch.repeat_interleave(torch.arange(rows, device=crow.device), per_row)
    pos = torch.arange(int(elem_crow[-1]), device=crow.device) - elem_crow[row]  # position within the row
    k = crow[row // r] + pos // c  # which stored block
    j = pos % c
    elem_col = col[k] * c + j
    block_from_elem = (k * r + row % r) * c + j
    return elem_crow, elem_col, block_from_elem


class _BsrMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, layer):
        ctx.save_for_backward(x, values)
        ctx.layer = layer
        return layer.product(x, values)

    @staticmethod
    def backward(ctx, dy):
        x, values = ctx.saved_tensors
        dx, dvalues = ctx.layer.product_grads(dy, x, values, *ctx.needs_input_grad[:2])
        return dx, dvalues, None


class BsrWeight(SparseWeight):
    name = "bsr"

    @classmethod
    def unsupported(cls, dtype, device):
        if device.type == "cpu" and dtype not in (torch.float32, torch.float64):
            return "torch's sparse kernels on the CPU run float32 and float64 only"
        return None

    def __init__(self, weight, mask, scheme):
        super().__init__(weight, scheme)
        self.block = tuple(scheme.pattern.block)
        w2d, mask2d = as_matrix(weight).detach(), as_matrix(mask).bool()
        self.shape2d = tuple(w2d.shape)
        blocks = block_mask_of(mask2d, self.block)
        register_structure(self, *csr_structure(blocks), self.shape2d[1] // self.block[1])
        self.values = nn.Parameter(to_blocks(w2d, blocks.to(w2d.device), self.block))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        load_transposed(self, self.shape2d[1] // self.block[1])

    def linear(self, x):
        return _BsrMatmul.apply(x, self.values, self)

    def product(self, x, values):
        """``x @ W^T`` with torch's BSR kernels (no autograd)."""
        w = bsr_tensor(self.crow, self.col, values, self.shape2d)
        return (w @ x.t().contiguous()).t()

    def product_grads(self, dy, x, values, need_x, need_w):
        """(dx, dvalues) of ``y = x @ W^T``: W^T's blocks for dx, the kept blocks' elements as a
        CSR pattern for ``torch.sparse.sampled_addmm``."""
        dy = dy.contiguous()
        dx = dvalues = None
        if need_x:
            wt_values = values[self.perm].transpose(1, 2).contiguous()
            wt = bsr_tensor(self.t_crow, self.t_col, wt_values, self.shape2d[::-1])
            dx = (wt @ dy.t().contiguous()).t()
        if need_w:
            elem_crow, elem_col, block_from_elem = expand_blocks(self.crow, self.col, self.block, self.shape2d)
            # zeros, not empty: sampled_addmm multiplies the pattern values by beta=0, and 0 * NaN = NaN
            zeros = dy.new_zeros(elem_col.numel())
            pattern = csr_tensor(elem_crow, elem_col, zeros, self.shape2d)
            elem_grads = torch.sparse.sampled_addmm(pattern, dy.t(), x, beta=0.0).values()
            dvalues = torch.empty_like(elem_grads).index_put_((block_from_elem,), elem_grads).view_as(values)
        return dx, dvalues

    # the conv path's products without autograd (conv.conv2d_recompute)
    def linear_forward(self, x):
        return self.product(x, self.values.detach())

    def linear_backward(self, dy, x, need_x, need_w):
        return self.product_grads(dy, x, self.values.detach(), need_x, need_w)

    @property
    def stored(self):
        return self.values

    def densify(self, stored_like):
        dense = bsr_tensor(self.crow, self.col, stored_like, self.shape2d)
        return dense.to_dense().reshape(self.shape)

    @property
    def storage_unit(self):
        return self.block

    def gather(self, dense_like):
        blocks = block_mask_of(as_matrix(self.mask()), self.block)
        return to_blocks(as_matrix(dense_like), blocks, self.block)

    def set_units(self, unit_mask):
        crow, col = csr_structure(unit_mask.bool().to(self.crow.device))
        self.crow, self.col = crow.to(self.crow.dtype), col.to(self.col.dtype)
        transposed = transposed_structure(crow, col, self.shape2d[1] // self.block[1])
        for name, t in zip(("t_crow", "t_col", "perm"), transposed, strict=True):
            setattr(self, name, t.to(getattr(self, name).dtype))
