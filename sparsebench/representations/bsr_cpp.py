"""``bsr_cpp``: the kept RxC blocks stored as in ``bsr``, computed with sparsebench's own C++
kernels (``sparsebench.kernels``: OpenMP over block rows, vectorised loops, no transposes of the
activations) instead of torch's. CPU only, float32; where the kernels cannot be built or run here,
it raises RepresentationUnavailable with the reason and the other representations keep working.

A conv layer's weight is blocked over its (out, in*kh*kw) matrix and convolves directly on the
blocks (``kernels.sparse_conv2d``; ``conv_paths`` picks how). Per linear step, with ``W``
(out, in) and ``x`` (n, in), all row-major, one custom op
(``torch.ops.sparse_linear.bsr_linear``, autograd registered with torch.library):
  forward         y  = x @ W^T            bsr_linear
  input gradient  dx = dy @ W             bsr_input_grad (block-column structure, built once)
  weight gradient (dy^T @ x) at kept blocks only, bsr_weight_grad
Where kernels are required (``SPARSEBENCH_REQUIRE_KERNELS=1``), an unavailable build is an error
(kernels.KernelsUnavailable), not a skip.
"""

from __future__ import annotations

import torch

from .. import kernels
from . import conv_paths
from .base import RepresentationUnavailable
from .bsr import BsrWeight


class BsrCppWeight(BsrWeight):
    name = "bsr_cpp"

    @classmethod
    def check_layer(cls, scheme, shape2d, layer):
        if not kernels.available():  # raises KernelsUnavailable instead where kernels are required
            fallback = scheme.with_representation("bsr")
            raise RepresentationUnavailable(f"layer {layer!r}: bsr_cpp kernels unavailable here: "
                                            f"{kernels.unavailable_reason()}; use '{fallback}'")

    @classmethod
    def unsupported(cls, dtype, device):
        if device.type != "cpu" or dtype != torch.float32:
            return "its kernels run float32 on the CPU only"
        return None

    def __init__(self, weight, mask, scheme):
        super().__init__(weight, mask, scheme)
        for name in ("crow", "col", "t_crow", "t_col", "perm"):  # the kernels take int64 block indices
            setattr(self, name, getattr(self, name).long())

    def linear(self, x):
        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise RepresentationUnavailable(f"bsr_cpp runs float32 on the CPU, got {x.dtype} on {x.device}")
        return kernels.bsr_linear(x, self.values, self.crow, self.col, (self.t_crow, self.t_col, self.perm),
                                  self.shape2d[0])

    def linear_bias(self, x, bias):
        if bias is None or x.device.type != "cpu" or x.dtype != torch.float32:
            return super().linear_bias(x, bias)
        # the kernel starts each sum at the bias: no second pass over (and copy of) the output
        return kernels.bsr_linear(x, self.values, self.crow, self.col, (self.t_crow, self.t_col, self.perm),
                                  self.shape2d[0], bias)

    @property
    def block_shape(self) -> tuple[int, int]:
        """The blocks of the (out, in*kh*kw) matrix the direct conv kernels see."""
        return tuple(self.block)

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
        return kernels.bsr_linear_forward(x, self.values.detach(), self.crow, self.col, self.shape2d[0])

    def linear_backward(self, dy, x, need_x, need_w):
        dy = dy.contiguous()
        values = self.values.detach()
        dx = dvalues = None
        if need_x:
            dx = kernels.bsr_linear_input_grad(dy, values, self.crow, self.col, self.shape2d[1],
                                               transposed=(self.t_crow, self.t_col, self.perm))
        if need_w:
            dvalues = kernels.bsr_linear_weight_grad(dy, x, self.crow, self.col, self.block)
        return dx, dvalues
