"""``csr``: only the kept values are stored, in the CSR layout (int32 row pointers and column
indices), and they are the only parameter the optimizer sees (so Adam's state is sized by the kept
count). No dense copy of the weight exists at any point.

Two kernels compute with it, the same storage either way:
- sparsebench's C++ kernels (``sparsebench.kernels``, csr_cpu.cpp) on the CPU in float32 whenever
  they build: OpenMP over rows, vectorised over tokens, on feature-major activations (x^T).
  Per step, with ``W`` (out, in) and ``x`` (n, in):
    forward         y^T  = W @ x^T                 kernels.csr_spmm
    input gradient  dx^T = W^T @ dy^T              kernels.csr_spmm on W^T's CSR (structure built once)
    weight gradient (dy^T @ x)[k], kept k only     kernels.csr_sddmm
  Convolutions build their im2col matrix feature-major directly, so only dy needs a transpose.
- torch's sparse CSR kernels (torch.sparse.mm, torch.sparse.sampled_addmm) elsewhere: on CUDA, or
  where the C++ kernels cannot build. On this 2-core CPU they run on one thread and were 10x slower
  than dense at 50% sparsity, which is why the C++ path exists.
``kernel`` on each layer says which one ran; the run's JSON records it.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..patterns import as_matrix
from .base import SparseWeight, im2col_features


def transposed_structure(crow: torch.Tensor, col: torch.Tensor, cols: int):
    """W^T's CSR structure from W's: (t_crow, t_col, perm) such that ``values[perm]`` are W^T's
    values, in ``crow``'s dtype."""
    crow_l, c = crow.long().cpu(), col.long().cpu()
    rows = crow_l.shape[0] - 1
    r = torch.repeat_interleave(torch.arange(rows), torch.diff(crow_l))
    perm = torch.argsort(c * rows + r)  # column-major order of the kept entries = CSR order of W^T
    t_crow = torch.zeros(cols + 1, dtype=torch.int64)
    t_crow[1:] = torch.cumsum(torch.bincount(c, minlength=cols), 0)
    return tuple(t.to(crow.dtype).to(crow.device) for t in (t_crow, r[perm], perm))


def csr_structure(mask2d: torch.Tensor):
    """(crow, col) of the kept positions in row-major order, and the transposed structure
    (t_crow, t_col, perm). int32 (torch's sparse kernels and ours accept it), which halves the
    index memory against int64."""
    rows, cols = mask2d.shape
    r, c = mask2d.nonzero(as_tuple=True)
    crow = torch.zeros(rows + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(r, minlength=rows), 0)
    crow, c = crow.to(torch.int32), c.to(torch.int32)
    return (crow, c, *transposed_structure(crow, c, cols))


def register_structure(module: nn.Module, crow, col, t_crow, t_col, perm) -> None:
    """W's structure is saved with the model; W^T's is derived from it (training memory, not saved;
    ``load_transposed`` rebuilds it after a state dict is loaded)."""
    module.register_buffer("crow", crow)
    module.register_buffer("col", col)
    for name, t in [("t_crow", t_crow), ("t_col", t_col), ("perm", perm)]:
        module.register_buffer(name, t, persistent=False)


def load_transposed(module: nn.Module, cols: int) -> None:
    for name, t in zip(("t_crow", "t_col", "perm"), transposed_structure(module.crow, module.col, cols), strict=True):
        getattr(module, name).copy_(t)


class _CsrTorchMatmul(torch.autograd.Function):
    """y = x @ W^T with torch's sparse CSR kernels; row-major x (n, in)."""

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


class _CsrKernelMatmul(torch.autograd.Function):
    """y^T = W @ x^T + bias with sparsebench's C++ kernels; feature-major x^T (in, n) -> y^T (out, n).
    The bias is added inside the kernel: on the transposed output a separate add is a strided pass."""

    @staticmethod
    def forward(ctx, x_t, values, bias, layer):
        x_t = x_t.contiguous()
        ctx.save_for_backward(x_t, values)
        ctx.layer = layer
        return kernels.csr_spmm(layer.crow, layer.col, values, x_t, layer.shape2d[1], bias)

    @staticmethod
    def backward(ctx, dy_t):
        x_t, values = ctx.saved_tensors
        layer = ctx.layer
        dy_t = dy_t.contiguous()
        dx_t = dvalues = dbias = None
        if ctx.needs_input_grad[0]:
            dx_t = kernels.csr_spmm(layer.t_crow, layer.t_col, values[layer.perm], dy_t, layer.shape2d[0])
        if ctx.needs_input_grad[1]:
            dvalues = kernels.csr_sddmm(layer.crow, layer.col, dy_t, x_t)
        if ctx.needs_input_grad[2]:
            dbias = dy_t.sum(1)
        return dx_t, dvalues, dbias, None


class CsrWeight(SparseWeight):
    name = "csr"

    def __init__(self, weight, mask, scheme):
        super().__init__(weight, mask, scheme)
        mask2d = as_matrix(mask).bool().cpu()
        self.shape2d = tuple(mask2d.shape)
        register_structure(self, *(t.to(weight.device) for t in csr_structure(mask2d)))
        self.values = nn.Parameter(as_matrix(weight).detach()[mask2d.to(weight.device)].contiguous())
        kernels.available()  # build (or load) the C++ kernels now, not inside the first timed step

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        load_transposed(self, self.shape2d[1])

    def _use_kernels(self, t: torch.Tensor) -> bool:
        return t.device.type == "cpu" and t.dtype == torch.float32 and kernels.available()

    @property
    def kernel(self) -> str:
        return "sparsebench-cpp" if self._use_kernels(self.values) else "torch.sparse"

    def linear(self, x):
        if self._use_kernels(x):
            return _CsrKernelMatmul.apply(x.t(), self.values, None, self).t()
        return _CsrTorchMatmul.apply(x, self.values, self)

    def linear_bias(self, x, bias):
        if bias is not None and self._use_kernels(x):
            return _CsrKernelMatmul.apply(x.t(), self.values, bias, self).t()
        return super().linear_bias(x, bias)

    def conv2d(self, x, stride, padding, dilation):
        if not self._use_kernels(x):
            return super().conv2d(x, stride, padding, dilation)  # im2col rows through self.linear
        return self.conv2d_bias(x, None, stride, padding, dilation)

    def conv2d_bias(self, x, bias, stride, padding, dilation):
        if not self._use_kernels(x):
            return super().conv2d_bias(x, bias, stride, padding, dilation)
        cols_t, (n, h_out, w_out) = im2col_features(x, self.shape[2:], stride, padding, dilation)
        y_t = _CsrKernelMatmul.apply(cols_t, self.values, bias, self)  # (out, n * h_out * w_out)
        return y_t.view(self.shape[0], n, h_out, w_out).permute(1, 0, 2, 3)

    @property
    def stored(self):
        return self.values

    def densify(self, stored_like):
        dense = torch.sparse_csr_tensor(self.crow, self.col, stored_like, self.shape2d)
        return dense.to_dense().reshape(self.shape)
