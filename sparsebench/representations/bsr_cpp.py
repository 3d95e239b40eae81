"""``bsr_cpp``: the kept RxC blocks stored as in ``bsr``, computed with sparsebench's own C++
kernels (``sparsebench.kernels``: OpenMP over block rows, vectorised loops, no transposes of the
activations) instead of torch's. CPU only, float32; where the kernels cannot be built or run here,
it raises RepresentationUnavailable with the reason and the other representations keep working.

Per step, with ``W`` (out, in) and ``x`` (n, in), all row-major:
  forward         y  = x @ W^T            kernels.bsr_linear_forward
  input gradient  dx = dy @ W             kernels.bsr_linear_input_grad (block-column structure, built once)
  weight gradient (dy^T @ x) at kept blocks only, kernels.bsr_linear_weight_grad
"""

from __future__ import annotations

import torch

from .. import kernels
from .base import RepresentationUnavailable, SparseWeight
from .bsr import BsrWeight


class _BsrCppMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, layer):
        ctx.save_for_backward(x, values)
        ctx.layer = layer
        return kernels.bsr_linear_forward(x, values, layer.crow, layer.col, layer.shape2d[0])

    @staticmethod
    def backward(ctx, dy):
        x, values = ctx.saved_tensors
        layer = ctx.layer
        dx = dvalues = None
        if ctx.needs_input_grad[0]:
            dx = kernels.bsr_linear_input_grad(dy, values, layer.crow, layer.col, layer.shape2d[1],
                                               transposed=(layer.t_crow, layer.t_col, layer.perm))
        if ctx.needs_input_grad[1]:
            dvalues = kernels.bsr_linear_weight_grad(dy, x, layer.crow, layer.col, layer.block)
        return dx, dvalues, None


class BsrCppWeight(BsrWeight):
    name = "bsr_cpp"

    @classmethod
    def check_scheme(cls, scheme):
        SparseWeight.check_scheme.__func__(cls, scheme)  # any block shape: no MKL square-block limit

    @classmethod
    def check_layer(cls, scheme, shape2d, layer):
        if not kernels.available():
            fallback = scheme.with_representation("bsr")
            raise RepresentationUnavailable(f"layer {layer!r}: bsr_cpp kernels unavailable here: "
                                            f"{kernels.unavailable_reason()}; use '{fallback}'")

    def __init__(self, weight, mask, scheme):
        super().__init__(weight, mask, scheme)
        for name in ("crow", "col", "t_crow", "t_col", "perm"):  # the kernels take int64 block indices
            setattr(self, name, getattr(self, name).long())

    def linear(self, x):
        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise RepresentationUnavailable(f"bsr_cpp runs float32 on the CPU, got {x.dtype} on {x.device}")
        return _BsrCppMatmul.apply(x, self.values, self)
