"""``csr``: only the kept values are stored, in the CSR layout (int32 row pointers; column indices
int16 where the layer has at most 32767 columns, else int32), and they are the only parameter the
optimizer sees (so Adam's state is sized by the kept count). W^T's structure, for the input
gradient, is kept beside it: int32 row pointers and permutation, and W's row of each entry in int16
where the layer has at most 32767 rows, else int32. No dense copy of the weight exists at any point;
building works on a slice of rows at a time, with no index wider than int32 kept.

Two kernels compute with it, the same storage either way:
- sparsebench's C++ kernels (the op ``torch.ops.sparse_linear.csr_linear``, see
  ``sparsebench.kernels``) on the CPU in float32 whenever they build: OpenMP over panels of tokens,
  vectorised over tokens, on row-major activations (no transposes). Per step, with ``W`` (out, in)
  and ``x`` (n, in):
    forward         y  = x @ W^T + bias            csr_linear (csr_mm)
    input gradient  dx = dy @ W                    csr_mm on W^T's CSR (structure built once), reading
                                                   W's values through a permutation (no copy)
    weight gradient (dy^T @ x)[k], kept k only     csr_sddmm
- torch's sparse CSR kernels (torch.sparse.mm, torch.sparse.sampled_addmm) elsewhere: on CUDA, or
  where the C++ kernels cannot build (unless ``SPARSEBENCH_REQUIRE_KERNELS=1``: then that is an
  error naming the cause). On the CPU they run on one thread, which is why the C++ path exists.
A conv layer's weight is the (out, in*kh*kw) matrix in the same storage; the C++ kernels convolve
on it directly (``kernels.sparse_conv2d``, by the path ``conv_paths`` measures fastest), torch's through im2col rows.
``kernel`` on each layer says which one ran; the run's JSON records it.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..patterns import as_matrix
from . import conv_paths
from .base import SparseWeight
from .compressed import csr_tensor

CHUNK = 1 << 18  # mask elements read at a time while building: torch's nonzero makes 16 bytes per hit


def _row_chunks(mask2d: torch.Tensor):
    rows, cols = mask2d.shape
    step = max(1, CHUNK // max(1, cols))
    return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]


INT16_LIMIT = 2**15 - 1


def index_dtype(extent: int, narrow: bool) -> torch.dtype:
    """int16 for indices below ``extent`` where ``narrow`` and they fit (our kernels read them), else int32."""
    return torch.int16 if narrow and extent <= INT16_LIMIT else torch.int32


def csr_structure(mask2d: torch.Tensor, narrow: bool = False):
    """(crow, col): the kept positions of a bool matrix in row-major order; crow int32, col int32
    (torch's sparse kernels accept it; half of int64's memory) or, with ``narrow`` and at most 32767
    columns, int16 (our kernels accept it; half again). Built a slice of rows at a time, so the int64
    positions torch's nonzero makes never exist for the whole matrix."""
    rows, cols = mask2d.shape
    crow = torch.zeros(rows + 1, dtype=torch.int32, device=mask2d.device)
    crow[1:] = torch.cumsum(mask2d.sum(1, dtype=torch.int32), 0, dtype=torch.int32)
    col = torch.empty(int(crow[-1]), dtype=index_dtype(cols, narrow), device=mask2d.device)
    for part in _row_chunks(mask2d):
        lo, hi = int(crow[part.start]), int(crow[part.stop])
        col[lo:hi] = mask2d[part].nonzero()[:, 1]
    return crow, col


def transposed_structure(crow, col, cols: int, narrow: bool = False):
    """W^T's (t_crow, t_col, perm); ``t_col`` (W's row of each entry) narrowed as ``csr_structure``
    narrows ``col``."""
    t_crow, t_col, perm = kernels.transpose_structure(crow, col, cols)  # it reads col as int32 itself
    return t_crow, t_col.to(index_dtype(crow.shape[0] - 1, narrow)), perm


def register_structure(module: nn.Module, crow, col, cols: int, narrow: bool = False) -> None:
    """W's structure is saved with the model; W^T's (t_crow, t_col, perm: ``values[perm]`` are
    W^T's values) is derived from it, training memory that is not saved (``load_transposed``
    rebuilds it after a state dict is loaded)."""
    module.register_buffer("crow", crow)
    module.register_buffer("col", col)
    for name, t in zip(("t_crow", "t_col", "perm"), transposed_structure(crow, col, cols, narrow), strict=True):
        module.register_buffer(name, t, persistent=False)


def load_transposed(module: nn.Module, cols: int, narrow: bool = False) -> None:
    transposed = transposed_structure(module.crow, module.col, cols, narrow)
    for name, t in zip(("t_crow", "t_col", "perm"), transposed, strict=True):
        getattr(module, name).copy_(t)


def kept_values(w2d: torch.Tensor, mask2d: torch.Tensor, crow: torch.Tensor) -> torch.Tensor:
    """The weights at the kept positions, in ``csr_structure``'s order, gathered a slice of rows at a time."""
    values = w2d.new_empty(int(crow[-1]))
    for part in _row_chunks(mask2d):
        values[int(crow[part.start]):int(crow[part.stop])] = w2d[part][mask2d[part]]
    return values


class _CsrTorchMatmul(torch.autograd.Function):
    """y = x @ W^T with torch's sparse CSR kernels; row-major x (n, in). W's structure comes in as
    tensors (nothing but tensors and the shape is kept for backward)."""

    @staticmethod
    def forward(ctx, x, values, crow, col, shape2d):
        ctx.save_for_backward(x, values, crow, col)
        ctx.shape2d = shape2d
        w = csr_tensor(crow, col, values, shape2d)
        return torch.sparse.mm(w, x.t().contiguous()).t()

    @staticmethod
    def backward(ctx, dy):
        x, values, crow, col = ctx.saved_tensors
        dy = dy.contiguous()
        dx = dvalues = None
        if ctx.needs_input_grad[0]:
            dx = torch.mm(dy, csr_tensor(crow, col, values.detach(), ctx.shape2d))
        if ctx.needs_input_grad[1]:
            pattern = csr_tensor(crow, col, values.detach(), ctx.shape2d)
            dvalues = torch.sparse.sampled_addmm(pattern, dy.t(), x, beta=0.0).values()
        return dx, dvalues, None, None, None


class CsrWeight(SparseWeight):
    name = "csr"

    @classmethod
    def unsupported(cls, dtype, device):
        if device.type == "cpu" and dtype not in (torch.float32, torch.float64):
            return "torch's sparse kernels on the CPU run float32 and float64 only"
        return None

    def __init__(self, weight, mask, scheme):
        super().__init__(weight, scheme)
        self._use_kernels(weight)  # builds or loads them now, not first inside a forward torch.compile traces
        mask2d = as_matrix(mask).bool().to(weight.device)
        self.shape2d = tuple(mask2d.shape)
        crow, col = csr_structure(mask2d, narrow=True)
        register_structure(self, crow, col, self.shape2d[1], narrow=True)
        self.values = nn.Parameter(kept_values(as_matrix(weight).detach(), mask2d, crow))
        del mask2d
        # build (or load) the C++ kernels now, not inside the first timed step; where kernels are
        # required (SPARSEBENCH_REQUIRE_KERNELS=1) an unavailable build raises KernelsUnavailable here
        kernels.available()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        load_transposed(self, self.shape2d[1], narrow=True)

    def _use_kernels(self, t: torch.Tensor) -> bool:
        """The C++ kernels serve float32 on the CPU; elsewhere torch.sparse does. On the CPU a
        missing build falls back to torch.sparse too, unless kernels are required (then it raises)."""
        return t.device.type == "cpu" and t.dtype == torch.float32 and kernels.available()

    def _kernel(self, x, bias):
        return kernels.csr_linear(x, self.values, bias, self.crow, self.col, (self.t_crow, self.t_col, self.perm))

    @property
    def kernel(self) -> str:
        return "sparsebench-cpp" if self._use_kernels(self.values) else "torch.sparse"

    def linear(self, x):
        if self._use_kernels(x):
            return self._kernel(x, None)
        # torch's CSR wants its column indices in the row pointers' dtype (ours may be int16)
        return _CsrTorchMatmul.apply(x, self.values, self.crow, self.col.to(self.crow.dtype), self.shape2d)

    def linear_bias(self, x, bias):
        if bias is not None and self._use_kernels(x):
            return self._kernel(x, bias)  # the kernel starts each sum at the bias
        return super().linear_bias(x, bias)

    @property
    def block_shape(self) -> tuple[int, int]:
        """The blocks of the (out, in*kh*kw) matrix the direct conv kernels see."""
        return (1, 1)

    def _direct(self, x, bias, stride, padding, path):
        return kernels.sparse_conv2d(x, self.values, self.crow, self.col, self.block_shape, self.shape[2:], stride,
                                     padding, bias, vectorize=path)

    def conv2d(self, x, stride, padding, dilation):
        path = conv_paths.choose(self, x, stride, padding, dilation)
        if path != "im2col":
            return self._direct(x, None, stride, padding, path)
        return super().conv2d(x, stride, padding, dilation)

    def conv2d_bias(self, x, bias, stride, padding, dilation):
        path = conv_paths.choose(self, x, stride, padding, dilation)
        if bias is not None and path != "im2col":
            return self._direct(x, bias, stride, padding, path)  # the kernel starts each sum at the bias
        return super().conv2d_bias(x, bias, stride, padding, dilation)

    # the im2col conv path's products without autograd (conv.conv2d_recompute): the same kernels
    def linear_forward(self, x):
        if not self._use_kernels(x):
            return super().linear_forward(x)
        return kernels.csr_mm(self.crow, self.col, self.values.detach(), x, self.shape2d[1])

    def linear_backward(self, dy, x, need_x, need_w):
        if not self._use_kernels(dy):
            return super().linear_backward(dy, x, need_x, need_w)
        dy, values = dy.contiguous(), self.values.detach()
        dx = kernels.csr_mm(self.t_crow, self.t_col, values, dy, self.shape2d[0], perm=self.perm) if need_x else None
        dvalues = kernels.csr_sddmm(self.crow, self.col, dy, x) if need_w else None
        return dx, dvalues

    @property
    def stored(self):
        return self.values

    def densify(self, stored_like):
        dense = csr_tensor(self.crow, self.col.to(self.crow.dtype), stored_like, self.shape2d)
        return dense.to_dense().reshape(self.shape)

    def gather(self, dense_like):
        return kept_values(as_matrix(dense_like), as_matrix(self.mask()), self.crow)

    def set_units(self, unit_mask):
        crow, col = csr_structure(unit_mask.bool().to(self.crow.device), narrow=True)
        self.crow, self.col = crow, col
        for name, t in zip(("t_crow", "t_col", "perm"), transposed_structure(crow, col, self.shape2d[1], narrow=True),
                           strict=True):
            setattr(self, name, t)
