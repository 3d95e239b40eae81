"""Property tests: the sparse_linear ops (BSR and CSR products, their autograd) against dense
references, and torch.library.opcheck on every op.

A process loads one kernel variant; `nox -s tests` runs this module once per variant the CPU
supports (SPARSEBENCH_CPU_ISA). Where kernels are required (SPARSEBENCH_REQUIRE_KERNELS=1), an
unavailable build fails here instead of skipping.
"""

from __future__ import annotations

import pytest
import torch

from sparsebench import kernels

if not kernels.available():  # builds on first use (cached afterwards); raises where kernels are required
    pytest.skip(f"sparse kernels unavailable: {kernels.unavailable_reason()}", allow_module_level=True)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BLOCKS = [(1, 1), (2, 2), (4, 4), (8, 8), (16, 16), (32, 32), (4, 8), (8, 4), (16, 4), (4, 32), (3, 5)]
EPS = torch.finfo(torch.float32).eps


def make_bsr(nbr, nbc, R, C, sparsity, seed, empty_rows=()):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(nbr, nbc, generator=g) >= sparsity
    for r in empty_rows:
        if r < nbr:
            keep[r] = False
    mask = keep.repeat_interleave(R, 0).repeat_interleave(C, 1)
    W = torch.randn(nbr * R, nbc * C, generator=g) * mask
    b = W.to_sparse_bsr((R, C))
    # a zero-valued kept block would vanish in to_sparse_bsr; build from the mask instead
    crow = torch.zeros(nbr + 1, dtype=torch.int64)
    crow[1:] = keep.sum(1).cumsum(0)
    col = keep.nonzero()[:, 1].contiguous()
    vals = W.reshape(nbr, R, nbc, C).permute(0, 2, 1, 3)[keep].contiguous()
    assert b.values().shape[0] <= vals.shape[0]
    Wd = torch.sparse_bsr_tensor(crow, col, vals, (nbr * R, nbc * C)).to_dense()
    assert torch.equal(Wd, W)
    return W, vals, crow, col, keep


def tol(k: int):
    # float32 sums of k products of ~N(0, 1) terms: error grows ~ eps * k in the worst case
    return dict(rtol=1e-5, atol=max(1e-5, 8 * EPS * k * max(1.0, k**0.5)))


def check_all(n, R, C, nbr, nbc, sparsity, seed, empty_rows=()):
    W, vals, crow, col, keep = make_bsr(nbr, nbc, R, C, sparsity, seed, empty_rows)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, nbc * C, generator=g)
    dy = torch.randn(n, nbr * R, generator=g)
    out_f, in_f = nbr * R, nbc * C

    y = kernels.bsr_linear_forward(x, vals, crow, col, out_f)
    torch.testing.assert_close(y, x @ W.t(), **tol(in_f))

    ts = kernels.transpose_structure(crow, col, nbc)
    assert all(t.dtype == torch.int64 for t in ts)
    dx = kernels.bsr_linear_input_grad(dy, vals, crow, col, in_f, ts)
    torch.testing.assert_close(dx, dy @ W, **tol(out_f))
    dx2 = kernels.bsr_linear_input_grad(dy, vals, crow, col, in_f)  # structure computed inside
    torch.testing.assert_close(dx2, dx, rtol=0, atol=0)

    gv = kernels.bsr_linear_weight_grad(dy, x, crow, col, (R, C))
    G = (dy.t() @ x).reshape(nbr, R, nbc, C).permute(0, 2, 1, 3)[keep]
    assert gv.shape == (int(keep.sum()), R, C)
    torch.testing.assert_close(gv, G, **tol(max(n, 1)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 45),
    block=st.sampled_from(BLOCKS),
    nbr=st.integers(1, 6),
    nbc=st.integers(1, 6),
    sparsity=st.sampled_from([0.0, 0.3, 0.5, 0.8, 0.95, 1.0]),
    seed=st.integers(0, 2**16),
    empty_row=st.integers(0, 5),
)
def test_products_match_dense(n, block, nbr, nbc, sparsity, seed, empty_row):
    R, C = block
    check_all(n, R, C, nbr, nbc, sparsity, seed, empty_rows=(empty_row,))


@pytest.mark.parametrize("block", [(4, 4), (16, 16), (32, 32), (8, 8), (4, 8), (5, 3)])
def test_long_token_range(block):
    # more tokens than one weight-gradient token tile (64 / 512) and a ragged tail
    R, C = block
    check_all(1043, R, C, 5, 7, 0.6, 7, empty_rows=(2,))


@pytest.mark.parametrize("block", [(4, 4), (16, 16), (2, 2)])
def test_fully_empty_matrix(block):
    R, C = block
    check_all(33, R, C, 3, 4, 1.0, 3)


def test_matches_torch_to_sparse_bsr_layout():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 48, generator=g)
    W[W.abs() < 1.0] = 0  # element sparsity; all 16x16 blocks survive
    W[:16] = 0  # empty first block row
    b = W.to_sparse_bsr((16, 16))
    x = torch.randn(21, 48, generator=g)
    y = kernels.bsr_linear_forward(x, b.values(), b.crow_indices(), b.col_indices(), 64)
    torch.testing.assert_close(y, x @ W.t(), **tol(48))


def test_non_contiguous_inputs():
    W, vals, crow, col, keep = make_bsr(4, 4, 8, 8, 0.5, 11)
    x = torch.randn(32, 40)[:, 4:36]  # row stride 40
    y = kernels.bsr_linear_forward(x, vals, crow, col, 32)
    torch.testing.assert_close(y, x @ W.t(), **tol(32))
    xt = torch.randn(32, 32).t()  # column-major: copied to row-major inside
    dy = torch.randn(32, 32).t()
    gv = kernels.bsr_linear_weight_grad(dy, xt, crow, col, (8, 8))
    G = (dy.t() @ xt).reshape(4, 8, 4, 8).permute(0, 2, 1, 3)[keep]
    torch.testing.assert_close(gv, G, **tol(32))
    dx = kernels.bsr_linear_input_grad(dy, vals, crow, col, 32)
    torch.testing.assert_close(dx, dy @ W, **tol(32))


def test_rejects_bad_inputs():
    W, vals, crow, col, keep = make_bsr(4, 4, 4, 4, 0.5, 1)
    x = torch.randn(8, 16)
    with pytest.raises(ValueError, match="float32"):
        kernels.bsr_linear_forward(x.double(), vals, crow, col, 16)
    with pytest.raises(ValueError, match="float32"):
        kernels.bsr_linear_forward(x, vals.double(), crow, col, 16)
    with pytest.raises(ValueError, match="int64"):
        kernels.bsr_linear_forward(x, vals, crow.int(), col, 16)
    with pytest.raises(ValueError, match="multiple"):
        kernels.bsr_linear_forward(torch.randn(8, 15), vals, crow, col, 16)
    with pytest.raises(ValueError, match="row_ptr"):
        kernels.bsr_linear_forward(x, vals, crow, col, 32)  # out_features disagrees with row_ptr
    with pytest.raises(ValueError, match="2-D"):
        kernels.bsr_linear_forward(x[0], vals, crow, col, 16)
    with pytest.raises(ValueError, match="col_idx"):
        kernels.bsr_linear_forward(torch.randn(8, 8), vals, crow, col, 16)  # col out of range
    with pytest.raises(ValueError, match="t_col_idx"):
        kernels.bsr_linear_input_grad(torch.randn(8, 12), vals, crow, col, 16)  # dy too narrow for the blocks
    with pytest.raises(ValueError, match="multiple"):
        kernels.bsr_linear_input_grad(torch.randn(8, 15), vals, crow, col, 16)
    bad = col.clone()
    bad[0] = -1
    with pytest.raises(ValueError, match="col_idx"):
        kernels.bsr_linear_forward(x, vals, crow, bad, 16)
    with pytest.raises(ValueError, match="non-decreasing|run from 0"):
        kernels.bsr_linear_forward(x, vals, crow.flip(0), col, 16)
    with pytest.raises(ValueError, match="rows"):
        kernels.bsr_linear_weight_grad(torch.randn(8, 16), torch.randn(7, 16), crow, col, (4, 4))
    with pytest.raises(ValueError, match="block"):
        kernels.bsr_linear_weight_grad(torch.randn(8, 16), x, crow, col, 4)


# ------------------------------------------------------------------ CSR kernels
@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 70), cols=st.integers(1, 90), n=st.integers(1, 150),
       sparsity=st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]), seed=st.integers(0, 10_000), narrow=st.booleans())
def test_csr_products_match_dense(rows, cols, n, sparsity, seed, narrow):
    """Token counts around the 64-wide panel (partial panels), empty rows, an all-pruned matrix;
    int32 and int16 column indices."""
    from sparsebench.representations.csr import csr_structure, transposed_structure

    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(rows, cols, generator=g) >= sparsity
    W = torch.randn(rows, cols, generator=g) * keep
    crow, col = csr_structure(keep, narrow)
    assert col.dtype == (torch.int16 if narrow else torch.int32)
    t_crow, t_col, perm = transposed_structure(crow, col, cols, narrow)
    vals = W[keep].contiguous()
    x, dy = torch.randn(n, cols, generator=g), torch.randn(n, rows, generator=g)
    torch.testing.assert_close(kernels.csr_mm(crow, col, vals, x, cols), x @ W.t(), **tol(cols))
    torch.testing.assert_close(kernels.csr_mm(t_crow, t_col, vals[perm], dy, rows), dy @ W, **tol(rows))
    torch.testing.assert_close(kernels.csr_mm(t_crow, t_col, vals, dy, rows, perm=perm), dy @ W, **tol(rows))
    torch.testing.assert_close(kernels.csr_sddmm(crow, col, dy, x), (dy.t() @ x)[keep], **tol(n))
    bias = torch.randn(rows, generator=g)
    torch.testing.assert_close(kernels.csr_mm(crow, col, vals, x, cols, bias), x @ W.t() + bias, **tol(cols))
    wide = torch.randn(n, cols + 7, generator=g)[:, 3:3 + cols]  # a row stride other than the width
    torch.testing.assert_close(kernels.csr_mm(crow, col, vals, wide, cols), wide @ W.t(), **tol(cols))


def test_csr_rejects_bad_inputs():
    from sparsebench.representations.csr import csr_structure

    keep = torch.rand(8, 16) > 0.5
    keep[0, 0] = True
    crow, col = csr_structure(keep)
    vals = torch.randn(int(keep.sum()))
    with pytest.raises(ValueError, match="float32"):
        kernels.csr_mm(crow, col, vals, torch.randn(4, 16).double(), 16)
    with pytest.raises(ValueError, match="int32"):
        kernels.csr_mm(crow.long(), col, vals, torch.randn(4, 16), 16)
    with pytest.raises(ValueError, match="int16 or int32"):
        kernels.csr_mm(crow, col.long(), vals, torch.randn(4, 16), 16)
    with pytest.raises(ValueError, match="16 columns"):
        kernels.csr_mm(crow, col, vals, torch.randn(4, 12), 16)
    with pytest.raises(ValueError, match="does not match"):
        kernels.csr_mm(crow, col, vals[:-1], torch.randn(4, 16), 16)
    bad_perm = torch.arange(col.numel(), dtype=torch.int32)
    bad_perm[-1] = col.numel()
    with pytest.raises(ValueError, match="perm entries"):
        kernels.csr_mm(crow, col, vals, torch.randn(4, 16), 16, perm=bad_perm)
    with pytest.raises(ValueError, match="same number of rows"):
        kernels.csr_sddmm(crow, col, torch.randn(4, 8), torch.randn(5, 16))
    with pytest.raises(ValueError, match="row_ptr must have length"):
        kernels.csr_sddmm(crow, col, torch.randn(4, 9), torch.randn(4, 16))
    bad = col.clone()
    bad[0] = 16
    with pytest.raises(ValueError, match="col entries"):
        kernels.csr_mm(crow, bad, vals, torch.randn(4, 16), 16)


# ------------------------------------------------------------------ the training ops' autograd
@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 40), block=st.sampled_from([(4, 4), (8, 8), (16, 16), (32, 32), (4, 8), (3, 5)]),
       nbr=st.integers(1, 4), nbc=st.integers(1, 4), sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
       seed=st.integers(0, 2**16), with_bias=st.booleans())
def test_bsr_linear_autograd_matches_masked_dense(n, block, nbr, nbc, sparsity, seed, with_bias):
    R, C = block
    W, vals, crow, col, keep = make_bsr(nbr, nbc, R, C, sparsity, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, nbc * C, generator=g, requires_grad=True)
    values = vals.clone().requires_grad_()
    bias = torch.randn(nbr * R, generator=g, requires_grad=True) if with_bias else None
    y = kernels.bsr_linear(x, values, crow, col, kernels.transpose_structure(crow, col, nbc), nbr * R, bias)
    dy = torch.randn_like(y)
    y.backward(dy)
    mask = keep.repeat_interleave(R, 0).repeat_interleave(C, 1)
    Wd = W.clone().requires_grad_()
    xd = x.detach().clone().requires_grad_()
    bd = bias.detach().clone().requires_grad_() if with_bias else None
    yd = xd @ (Wd * mask).t() + (bd if with_bias else 0)
    yd.backward(dy)
    if with_bias:
        torch.testing.assert_close(bias.grad, bd.grad, **tol(n))
    torch.testing.assert_close(y, yd, **tol(nbc * C))
    torch.testing.assert_close(x.grad, xd.grad, **tol(nbr * R))
    G = Wd.grad.reshape(nbr, R, nbc, C).permute(0, 2, 1, 3)[keep]
    torch.testing.assert_close(values.grad, G, **tol(n))


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), n=st.integers(1, 140),
       sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]), seed=st.integers(0, 10_000), with_bias=st.booleans(),
       narrow=st.booleans())
def test_csr_linear_autograd_matches_masked_dense(rows, cols, n, sparsity, seed, with_bias, narrow):
    from sparsebench.representations.csr import csr_structure, transposed_structure

    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(rows, cols, generator=g) >= sparsity
    W = torch.randn(rows, cols, generator=g) * keep
    crow, col = csr_structure(keep, narrow)
    transposed = transposed_structure(crow, col, cols, narrow)
    values = W[keep].contiguous().requires_grad_()
    bias = torch.randn(rows, generator=g, requires_grad=True) if with_bias else None
    x = torch.randn(n, cols, generator=g, requires_grad=True)
    y = kernels.csr_linear(x, values, bias, crow, col, transposed)
    dy = torch.randn_like(y)
    y.backward(dy)
    Wd = W.clone().requires_grad_()
    xd = x.detach().clone().requires_grad_()
    bd = bias.detach().clone().requires_grad_() if with_bias else None
    yd = xd @ (Wd * keep).t() + (bd if with_bias else 0)
    yd.backward(dy)
    torch.testing.assert_close(y, yd, **tol(cols))
    torch.testing.assert_close(x.grad, xd.grad, **tol(rows))
    torch.testing.assert_close(values.grad, Wd.grad[keep], **tol(n))
    if with_bias:
        torch.testing.assert_close(bias.grad, bd.grad, **tol(n))


# ------------------------------------------------------------------ torch.library.opcheck, every op
def _bsr_case(R=4, C=4, seed=0):
    W, vals, crow, col, keep = make_bsr(3, 4, R, C, 0.5, seed)
    g = torch.Generator().manual_seed(seed)
    x, dy = torch.randn(9, 4 * C, generator=g), torch.randn(9, 3 * R, generator=g)
    return vals, crow, col, kernels.transpose_structure(crow, col, 4), x, dy


def _csr_case(seed=0):
    from sparsebench.representations.csr import csr_structure

    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(12, 20, generator=g) >= 0.6
    crow, col = csr_structure(keep)
    t_crow, t_col, perm = kernels.transpose_structure(crow, col, 20)
    vals = torch.randn(int(keep.sum()), generator=g)
    return crow, col, (t_crow, t_col, perm), vals, torch.randn(33, 20, generator=g), torch.randn(33, 12, generator=g)


def _op_cases():
    ops = torch.ops.sparse_linear
    for R, C in [(4, 4), (16, 16), (3, 5)]:
        vals, crow, col, ts, x, dy = _bsr_case(R, C)
        bias = torch.randn(3 * R)
        yield f"bsr_linear-{R}x{C}", ops.bsr_linear.default, (x.requires_grad_(), vals.requires_grad_(),
                                                               bias.requires_grad_(), crow, col, *ts, 3 * R)
        yield f"bsr_linear-nobias-{R}x{C}", ops.bsr_linear.default, (x, vals, None, crow, col, *ts, 3 * R)
        yield f"bsr_forward-{R}x{C}", ops.bsr_forward.default, (x.detach(), vals.detach(), bias.detach(), crow, col,
                                                                 3 * R)
        yield f"bsr_input_grad-{R}x{C}", ops.bsr_input_grad.default, (dy, vals.detach(), *ts, 4 * C)
        yield f"bsr_weight_grad-{R}x{C}", ops.bsr_weight_grad.default, (dy, x.detach(), crow, col, R, C)
    crow, col, ts, vals, x, dy = _csr_case()
    bias = torch.randn(12)
    yield "csr_linear", ops.csr_linear.default, (x.requires_grad_(), vals.requires_grad_(), bias.requires_grad_(),
                                                 crow, col, *ts)
    yield "csr_linear-nobias", ops.csr_linear.default, (x, vals, None, crow, col, *ts)
    yield "csr_mm", ops.csr_mm.default, (crow, col, vals.detach(), x.detach(), bias.detach())
    yield "csr_mm-perm", ops.csr_mm.default, (ts[0], ts[1], vals.detach(), dy, None, ts[2])
    yield "csr_mm-int16", ops.csr_mm.default, (crow, col.short(), vals.detach(), x.detach(), None)
    yield "csr_sddmm-int16", ops.csr_sddmm.default, (crow, col.short(), dy, x.detach())
    yield "csr_sddmm", ops.csr_sddmm.default, (crow, col, dy, x.detach())


@pytest.mark.parametrize("name", [case[0] for case in _op_cases()])
def test_opcheck(name):
    _, op, args = next(case for case in _op_cases() if case[0] == name)
    torch.library.opcheck(op, args)


def test_every_op_is_opchecked():
    from test_kernels_conv import conv_op_cases

    schemas = {s.name for s in torch._C._jit_get_all_schemas() if s.name.startswith("sparse_linear::")}
    cases = [*_op_cases(), *conv_op_cases()]
    checked = {"sparse_linear::" + case[0].split("-")[0] for case in cases} | {"sparse_linear::isa"}
    assert schemas == checked


def test_variant_is_the_loaded_library():
    assert torch.ops.sparse_linear.isa() == kernels.variant()
    assert kernels.variant() in kernels.supported_variants()


@settings(deadline=None, max_examples=60)
@given(rows=st.integers(1, 60), cols=st.integers(1, 60), sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
       seed=st.integers(0, 10_000), wide=st.booleans())
def test_transpose_structure_is_the_column_major_order(rows, cols, sparsity, seed, wide):
    """W^T's structure: kept entries in column-major order (rows increasing within a column)."""
    from sparsebench.representations.csr import csr_structure

    keep = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed)) >= sparsity
    crow, col = csr_structure(keep)
    if wide:
        crow, col = crow.long(), col.long()
    t_crow, t_col, perm = kernels.transpose_structure(crow, col, cols)
    r, c = keep.nonzero(as_tuple=True)
    order = torch.argsort(c * rows + r)
    assert t_crow.dtype == t_col.dtype == perm.dtype == crow.dtype
    assert torch.equal(perm.long(), order) and torch.equal(t_col.long(), r[order])
    assert torch.equal(t_crow[1:].long(), torch.cumsum(keep.sum(0), 0))
