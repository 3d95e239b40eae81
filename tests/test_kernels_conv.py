"""Property tests: the direct sparse convolution ops (``sparse_linear::sparse_conv2d``, ``sparse_conv2d_width``
and their backward) against torch's dense convolution with the same kept weights, in forward output, input
gradient, weight gradient at kept positions and bias gradient; opcheck on each op.

Run once per kernel variant the CPU supports (``nox -s tests``, SPARSEBENCH_CPU_ISA).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsebench import kernels

if not kernels.available():  # builds on first use (cached afterwards); raises where kernels are required
    pytest.skip(f"sparse kernels unavailable: {kernels.unavailable_reason()}", allow_module_level=True)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EPS = torch.finfo(torch.float32).eps


def sparse_conv_weight(out_ch, in_ch, kernel, block, sparsity, seed, empty_groups=()):
    """A random conv weight, its kept mask, and its CSR (block (1, 1)) or BSR storage over the
    (out, in*kh*kw) matrix: (W, keep, values, row_ptr, col)."""
    R, C = block
    cols = in_ch * kernel[0] * kernel[1]
    g = torch.Generator().manual_seed(seed)
    keep_units = torch.rand(out_ch // R, cols // C, generator=g) >= sparsity
    for r in empty_groups:
        keep_units[r % keep_units.shape[0]] = False
    keep = keep_units.repeat_interleave(R, 0).repeat_interleave(C, 1)
    W = torch.randn(out_ch, cols, generator=g) * keep
    row_ptr = torch.zeros(keep_units.shape[0] + 1, dtype=torch.int64)
    row_ptr[1:] = keep_units.sum(1).cumsum(0)
    col = keep_units.nonzero()[:, 1].contiguous()
    if (R, C) == (1, 1):
        values = W[keep].contiguous()
    else:
        values = W.reshape(out_ch // R, R, cols // C, C).permute(0, 2, 1, 3)[keep_units].contiguous()
    return W.reshape(out_ch, in_ch, *kernel), keep.reshape(out_ch, in_ch, *kernel), values, row_ptr, col


def dense_values_grad(dW, keep, block, values):
    """The dense weight gradient at the kept positions, laid out like ``values``."""
    R, C = block
    out_ch = dW.shape[0]
    d2, k2 = dW.reshape(out_ch, -1), keep.reshape(out_ch, -1)
    if (R, C) == (1, 1):
        return d2[k2]
    units = k2.reshape(out_ch // R, R, -1, C).any(3).any(1)
    return d2.reshape(out_ch // R, R, -1, C).permute(0, 2, 1, 3)[units].reshape(values.shape)


def tol(k: int):
    return dict(rtol=2e-5, atol=max(2e-5, 8 * EPS * k * max(1.0, k**0.5)))


def check_conv(n, in_ch, out_ch, hw, kernel, stride, padding, block, sparsity, seed, with_bias=True,
               channels_last=False, index_dtype=torch.int64, empty_groups=(), vectorize="batch"):
    W, keep, values, row_ptr, col = sparse_conv_weight(out_ch, in_ch, kernel, block, sparsity, seed, empty_groups)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, in_ch, *hw, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    bias = torch.randn(out_ch, generator=g) if with_bias else None
    xs, vs = x.clone().requires_grad_(), values.clone().requires_grad_()
    bs = bias.clone().requires_grad_() if with_bias else None
    y = kernels.sparse_conv2d(xs, vs, row_ptr.to(index_dtype), col.to(index_dtype), block, kernel, stride, padding,
                              bias=bs, vectorize=vectorize)
    xr, Wr = x.clone().requires_grad_(), W.clone().requires_grad_()
    br = bias.clone().requires_grad_() if with_bias else None
    y_ref = F.conv2d(xr, Wr, br, stride=stride, padding=padding)
    k = in_ch * kernel[0] * kernel[1]
    torch.testing.assert_close(y, y_ref, **tol(k))
    dy = torch.randn(y_ref.shape, generator=g)
    y.backward(dy)
    y_ref.backward(dy)
    torch.testing.assert_close(xs.grad, xr.grad, **tol(out_ch * kernel[0] * kernel[1]))
    positions = n * y_ref.shape[2] * y_ref.shape[3]
    torch.testing.assert_close(vs.grad, dense_values_grad(Wr.grad, keep, block, values), **tol(positions))
    if with_bias:
        torch.testing.assert_close(bs.grad, br.grad, **tol(positions))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 40), in_ch=st.sampled_from([1, 2, 3, 4, 8]), groups=st.integers(1, 4),
       hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       kernel=st.sampled_from([(1, 1), (3, 3), (2, 2), (3, 1), (1, 3), (5, 5)]),
       stride=st.sampled_from([(1, 1), (2, 2), (1, 2), (3, 3)]),
       padding=st.sampled_from([(0, 0), (1, 1), (2, 0), (2, 2)]),
       block=st.sampled_from([(1, 1), (4, 1), (4, 3), (8, 9), (2, 1), (1, 3)]),
       sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]), seed=st.integers(0, 10_000), with_bias=st.booleans(),
       channels_last=st.booleans(), vectorize=st.sampled_from(["batch", "width"]))
def test_matches_dense_conv_with_kept_weights(n, in_ch, groups, hw, kernel, stride, padding, block, sparsity, seed,
                                              with_bias, channels_last, vectorize):
    R, C = block
    cols = in_ch * kernel[0] * kernel[1]
    if cols % C:
        C = 1
    if hw[0] + 2 * padding[0] < kernel[0] or hw[1] + 2 * padding[1] < kernel[1]:
        hw = (kernel[0], kernel[1])
    check_conv(n, in_ch, groups * R, hw, kernel, stride, padding, (R, C), sparsity, seed, with_bias, channels_last,
               vectorize=vectorize)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 3), in_ch=st.sampled_from([1, 3, 4]), groups=st.integers(1, 3),
       hw=st.tuples(st.integers(1, 40), st.integers(1, 40)),
       kernel=st.sampled_from([(1, 1), (3, 3), (5, 5), (3, 1)]), stride=st.sampled_from([(1, 1), (2, 2), (1, 3)]),
       padding=st.sampled_from([(0, 0), (1, 1), (2, 2)]), block=st.sampled_from([(1, 1), (4, 1), (4, 3)]),
       sparsity=st.sampled_from([0.0, 0.5, 0.9]), seed=st.integers(0, 10_000))
def test_width_kernels_on_long_rows(n, in_ch, groups, hw, kernel, stride, padding, block, sparsity, seed):
    """The width path's own edge: rows longer than a vector, ending mid-vector, at every stride."""
    R, C = block
    if (in_ch * kernel[0] * kernel[1]) % C:
        C = 1
    if hw[0] + 2 * padding[0] < kernel[0] or hw[1] + 2 * padding[1] < kernel[1]:
        hw = (kernel[0], kernel[1])
    check_conv(n, in_ch, groups * R, hw, kernel, stride, padding, (R, C), sparsity, seed, vectorize="width")


@pytest.mark.parametrize("block", [(1, 1), (4, 4), (16, 16)])
@pytest.mark.parametrize("stride", [1, 2])
def test_seed_cnn_and_resnet_shapes(block, stride):
    """The shapes the targets measure (batch 64: whole vectors on every variant), smaller in channels."""
    check_conv(64, 16, 32, (16, 16), (3, 3), (stride, stride), (1, 1), block, 0.9, seed=3)


@pytest.mark.parametrize("block", [(1, 1), (4, 4), (16, 16)])
@pytest.mark.parametrize("stride", [1, 2])
def test_width_path_at_cifar_resnet_shapes(block, stride):
    """A CIFAR ResNet's first stage (32x32, 16 channels) at a small batch, where the width path serves."""
    check_conv(2, 16, 32, (32, 32), (3, 3), (stride, stride), (1, 1), block, 0.9, seed=4, vectorize="width")


@pytest.mark.parametrize("index_dtype", [torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("vectorize", ["batch", "width"])
def test_index_dtypes(index_dtype, vectorize):
    check_conv(5, 3, 8, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1), 0.5, seed=1, index_dtype=index_dtype,
               vectorize=vectorize)


@pytest.mark.parametrize("vectorize", ["batch", "width"])
def test_empty_rows_and_empty_weight(vectorize):
    check_conv(9, 4, 16, (5, 5), (3, 3), (1, 1), (1, 1), (4, 4), 0.3, seed=2, empty_groups=(0, 2), vectorize=vectorize)
    check_conv(9, 4, 16, (5, 5), (3, 3), (2, 2), (1, 1), (1, 1), 1.0, seed=2, vectorize=vectorize)  # bias only


def test_rejects_bad_inputs():
    W, keep, values, row_ptr, col = sparse_conv_weight(8, 4, (3, 3), (1, 1), 0.5, 0)
    x = torch.randn(2, 4, 6, 6)
    ok = dict(block=(1, 1), kernel=(3, 3), stride=(1, 1), padding=(1, 1))
    with pytest.raises(ValueError, match="x must be 4-D"):
        kernels.sparse_conv2d(x[0], values, row_ptr, col, **ok)
    with pytest.raises(ValueError, match="x must be float32"):
        kernels.sparse_conv2d(x.double(), values, row_ptr, col, **ok)
    with pytest.raises(ValueError, match="col entries must lie in"):
        kernels.sparse_conv2d(torch.randn(2, 3, 6, 6), values, row_ptr, col, **ok)  # 3 channels: columns too wide
    with pytest.raises(ValueError, match="values must have shape"):
        kernels.sparse_conv2d(x, values[:-1], row_ptr, col, **ok)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        kernels.sparse_conv2d(torch.randn(2, 4, 1, 1), values, row_ptr, col, **(ok | {"padding": (0, 0)}))
    with pytest.raises(ValueError, match="strides must be at least 1"):
        kernels.sparse_conv2d(x, values, row_ptr, col, **(ok | {"stride": (0, 1)}))
    with pytest.raises(ValueError, match="bias must have shape"):
        kernels.sparse_conv2d(x, values, row_ptr, col, **ok, bias=torch.randn(3))
    with pytest.raises(ValueError, match="row_ptr must run from 0"):
        kernels.sparse_conv2d(x, values, row_ptr[:-1], col, **ok)
    with pytest.raises(ValueError, match="vectorize must be 'batch' or 'width'"):
        kernels.sparse_conv2d(x, values, row_ptr, col, **ok, vectorize="height")
    with pytest.raises(ValueError, match="x must be float32"):
        kernels.sparse_conv2d(x.double(), values, row_ptr, col, **ok, vectorize="width")
    with pytest.raises(ValueError, match="bias must have shape"):
        kernels.sparse_conv2d(x, values, row_ptr, col, **ok, bias=torch.randn(3), vectorize="width")


def conv_op_cases():
    ops = torch.ops.sparse_linear
    for block in [(1, 1), (4, 4)]:
        W, keep, values, row_ptr, col = sparse_conv_weight(8, 4, (3, 3), block, 0.5, 0)
        g = torch.Generator().manual_seed(0)
        x, bias = torch.randn(5, 4, 7, 6, generator=g), torch.randn(8, generator=g)
        geo = ([*block], [3, 3], [2, 1], [1, 1])
        dy = torch.randn(5, 8, 4, 6, generator=g)
        tag = f"{block[0]}x{block[1]}"
        yield f"sparse_conv2d-{tag}", ops.sparse_conv2d.default, (x.clone().requires_grad_(),
                                                                  values.clone().requires_grad_(),
                                                                  bias.clone().requires_grad_(), row_ptr, col, *geo)
        yield f"sparse_conv2d-nobias-{tag}", ops.sparse_conv2d.default, (x, values, None, row_ptr, col, *geo)
        yield f"sparse_conv2d_forward-{tag}", ops.sparse_conv2d_forward.default, (x, values, bias, row_ptr, col, *geo)
        yield f"sparse_conv2d_backward-{tag}", ops.sparse_conv2d_backward.default, (dy, x, values, row_ptr, col,
                                                                                     *geo, True, True)
        yield f"sparse_conv2d_backward-dx-{tag}", ops.sparse_conv2d_backward.default, (dy, x, values, row_ptr, col,
                                                                                        *geo, True, False)
        yield f"sparse_conv2d_width-{tag}", ops.sparse_conv2d_width.default, (x.clone().requires_grad_(),
                                                                              values.clone().requires_grad_(),
                                                                              bias.clone().requires_grad_(), row_ptr,
                                                                              col, *geo)
        yield f"sparse_conv2d_width_forward-{tag}", ops.sparse_conv2d_width_forward.default, (x, values, None,
                                                                                              row_ptr, col, *geo)
        yield f"sparse_conv2d_width_backward-{tag}", ops.sparse_conv2d_width_backward.default, (
            dy, x, values, row_ptr, col, *geo, True, True)
        yield f"sparse_conv2d_width_backward-dw-{tag}", ops.sparse_conv2d_width_backward.default, (
            dy, x, values, row_ptr, col, *geo, False, True)


@pytest.mark.parametrize("name", [case[0] for case in conv_op_cases()])
def test_opcheck(name):
    _, op, args = next(case for case in conv_op_cases() if case[0] == name)
    torch.library.opcheck(op, args)
