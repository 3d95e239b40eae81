"""``csr``: only the kept values are stored, in the CSR layout (int32 row pointers and column
indices), and they are the only parameter the optimizer sees (so Adam's state is sized by the kept
count). No dense copy of the weight exists at any point.

Two kernels compute with it, the same storage either way:
- sparsebench's C++ kernels (the op ``torch.ops.sparse_linear.csr_linear``, see
  ``sparsebench.kernels``) on the CPU in float32 whenever they build: OpenMP over panels of tokens,
  vectorised over tokens, on row-major activations (no transposes). Per step, with ``W`` (out, in)
  and ``x`` (n, in):
    forward         y  = x @ W^T + bias            csr_linear (csr_mm)
    input gradient  dx = dy @ W                    csr_mm on W^T's CSR (structure built once)
    weight gradient (dy^T @ x)[k], kept k only     csr_sddmm
- torch's sparse CSR kernels (torch.sparse.mm, torch.sparse.sampled_addmm) elsewhere: on CUDA, or
  where the C++ kernels cannot build (unless ``SPARSEBENCH_REQUIRE_KERNELS=1``: then that is an
  error naming the cause). On the CPU they run on one thread, which is why the C++ path exists.
``kernel`` on each layer says which one ran; the run's JSON records it.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..patterns import as_matrix
from .base import SparseWeight


def csr_structure(mask2d: torch.Tensor):
    """(crow, col) of the kept positions in row-major order, and the transposed structure
    (t_crow, t_col, perm). int32 (torch's sparse kernels and ours accept it), which halves the
    index memory against int64."""
    rows, cols = mask2d.shape
    r, c = mask2d.nonzero(as_tuple=True)
    crow = torch.zeros(rows + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(r, minlength=rows), 0)
    crow, c = crow.to(torch.int32), c.to(torch.int32)
    return (crow, c, *kernels.transpose_structure(crow, c, cols))


def register_structure(module: nn.Module, crow, col, t_crow, t_col, perm) -> None:
    """W's structure is saved with the model; W^T's is derived from it (training memory, not saved;
    ``load_transposed`` rebuilds it after a state dict is loaded)."""
    module.register_buffer("crow", crow)
    module.register_buffer("col", col)
    for name, t in [("t_crow", t_crow), ("t_col", t_col), ("perm", perm)]:
        module.register_buffer(name, t, persistent=False)


def load_transposed(module: nn.Module, cols: int) -> None:
    transposed = kernels.transpose_structure(module.crow, module.col, cols)
    for name, t in zip(("t_crow", "t_col", "perm"), transposed, strict=True):
        getattr(module, name).copy_(t)


class _CsrTorchMatmul(torch.autograd.Function):
    """y = x @ W^T with torch's sparse CSR kernels; row-major x (n, in). W's structure and W^T's
    come in as tensors (nothing but tensors and the shape is kept for backward)."""

    @staticmethod
    def forward(ctx, x, values, crow, col, t_crow, t_col, perm, shape2d):
        ctx.save_for_backward(x, values, crow, col, t_crow, t_col, perm)
        ctx.shape2d = shape2d
        w = torch.sparse_csr_tensor(crow, col, values, shape2d)
        return torch.sparse.mm(w, x.t().contiguous()).t()

    @staticmethod
    def backward(ctx, dy):
        x, values, crow, col, t_crow, t_col, perm = ctx.saved_tensors
        dy = dy.contiguous()
        dx = dvalues = None
        if ctx.needs_input_grad[0]:
            wt = torch.sparse_csr_tensor(t_crow, t_col, values[perm], ctx.shape2d[::-1])
            dx = torch.sparse.mm(wt, dy.t().contiguous()).t()
        if ctx.needs_input_grad[1]:
            pattern = torch.sparse_csr_tensor(crow, col, values.detach(), ctx.shape2d)
            dvalues = torch.sparse.sampled_addmm(pattern, dy.t(), x, beta=0.0).values()
        return dx, dvalues, None, None, None, None, None, None


class CsrWeight(SparseWeight):
    name = "csr"

    def __init__(self, weight, mask, scheme):
        super().__init__(weight, mask, scheme)
        mask2d = as_matrix(mask).bool().cpu()
        self.shape2d = tuple(mask2d.shape)
        register_structure(self, *(t.to(weight.device) for t in csr_structure(mask2d)))
        self.values = nn.Parameter(as_matrix(weight).detach()[mask2d.to(weight.device)].contiguous())
        # build (or load) the C++ kernels now, not inside the first timed step; where kernels are
        # required (SPARSEBENCH_REQUIRE_KERNELS=1) an unavailable build raises KernelsUnavailable here
        kernels.available()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        load_transposed(self, self.shape2d[1])

    def _use_kernels(self, t: torch.Tensor) -> bool:
        """The C++ kernels serve float32 on the CPU; elsewhere torch.sparse does. On the CPU a
        missing build falls back to torch.sparse too, unless kernels are required (then it raises)."""
        return t.device.type == "cpu" and t.dtype == torch.float32 and kernels.available()

    def _structure(self):
        return self.crow, self.col, (self.t_crow, self.t_col, self.perm)

    def _kernel(self, x, bias):
        crow, col, transposed = self._structure()
        return kernels.csr_linear(x, self.values, bias, crow, col, transposed)

    @property
    def kernel(self) -> str:
        return "sparsebench-cpp" if self._use_kernels(self.values) else "torch.sparse"

    def linear(self, x):
        if self._use_kernels(x):
            return self._kernel(x, None)
        return _CsrTorchMatmul.apply(x, self.values, self.crow, self.col, self.t_crow, self.t_col, self.perm,
                                     self.shape2d)

    def linear_bias(self, x, bias):
        if bias is not None and self._use_kernels(x):
            return self._kernel(x, bias)  # the kernel starts each sum at the bias
        return super().linear_bias(x, bias)

    # the conv path's products without autograd (base._ConvRecompute): the same kernels
    def linear_forward(self, x):
        if not self._use_kernels(x):
            return super().linear_forward(x)
        return kernels.csr_mm(self.crow, self.col, self.values.detach(), x, self.shape2d[1])

    def linear_backward(self, dy, x, need_x, need_w):
        if not self._use_kernels(dy):
            return super().linear_backward(dy, x, need_x, need_w)
        dy, values = dy.contiguous(), self.values.detach()
        dx = kernels.csr_mm(self.t_crow, self.t_col, values[self.perm], dy, self.shape2d[0]) if need_x else None
        dvalues = kernels.csr_sddmm(self.crow, self.col, dy, x) if need_w else None
        return dx, dvalues

    @property
    def stored(self):
        return self.values

    def densify(self, stored_like):
        dense = torch.sparse_csr_tensor(self.crow, self.col, stored_like, self.shape2d)
        return dense.to_dense().reshape(self.shape)
