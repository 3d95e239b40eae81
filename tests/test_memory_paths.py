"""The memory-saving paths: the sparse conv's recompute (only the input kept for backward, columns
rebuilt in chunks of images) against F.conv2d, and sparsify building a model without the dense
weights living beside the sparse ones."""


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench import RepresentationUnavailable, sparsify
from sparsebench.measure import peak_heap
from sparsebench.representations import SparseConv2d
from sparsebench.representations import conv as conv_module
from sparsebench.representations import csr as csr_module


def sparse_conv(layer: nn.Conv2d, scheme: str) -> SparseConv2d:
    model = nn.Sequential(layer)
    try:
        sparsify(model, scheme, keep_dense=[], example_inputs=torch.randn(2, layer.in_channels, 8, 8))
    except RepresentationUnavailable as why:
        pytest.skip(str(why))
    return model[0]


@pytest.mark.parametrize("scheme", ["block:4x4:0.5@bsr_cpp", "block:2x2:0.75@bsr", "random:0.6@csr-torch"])
@pytest.mark.parametrize("chunk_bytes", [1, 700, 2**30])  # one image per chunk, a few, the whole batch
@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_conv_recompute_gradients_match_dense_conv(monkeypatch, scheme, chunk_bytes, stride, padding, dilation):
    monkeypatch.setattr(conv_module, "CONV_CHUNK_BYTES", chunk_bytes)
    if scheme.endswith("-torch"):  # csr on torch's kernels goes through the generic recompute path
        scheme = scheme.removesuffix("-torch")
        monkeypatch.setattr(csr_module.CsrWeight, "_use_kernels", lambda self, t: False)
    torch.manual_seed(0)
    layer = nn.Conv2d(4, 8, 3, stride=stride, padding=padding, dilation=dilation)
    conv = sparse_conv(layer, scheme)
    sw = conv.sparse_weight
    weight = sw.to_dense().clone().requires_grad_()
    bias = conv.bias.detach().clone().requires_grad_()
    x = torch.randn(5, 4, 9, 9, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    grad_out = None

    y = conv(x)
    y_ref = F.conv2d(x_ref, weight, bias, stride=stride, padding=padding, dilation=dilation)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    grad_out = torch.randn_like(y_ref)
    y.backward(grad_out)
    y_ref.backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    mask = sw.mask()
    torch.testing.assert_close(sw.dense_grad(), weight.grad * mask, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(conv.bias.grad, bias.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2), ((2, 1), (0, 1), (1, 2))])
def test_im2col_rows_are_unfold_transposed(stride, padding, dilation):
    """One row per output position, columns in a conv weight's (c, kh, kw) order: F.unfold's
    columns, exactly (both are copies of the same inputs)."""
    def pair(v):
        return v if isinstance(v, tuple) else (v, v)

    x = torch.randn(3, 4, 9, 8)
    kernel = (3, 2)
    rows, (n, h_out, w_out) = conv_module.im2col_rows(x, kernel, pair(stride), pair(padding), pair(dilation))
    unfolded = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (n, c * kh * kw, positions)
    assert (n, h_out * w_out) == (3, unfolded.shape[2])
    assert torch.equal(rows, unfolded.transpose(1, 2).reshape(n * h_out * w_out, 4 * 3 * 2))


def test_conv_keeps_only_its_input_for_backward():
    """The autograd graph holds x (and the stored values), not the im2col matrix: kh*kw times x."""
    torch.manual_seed(0)
    conv = sparse_conv(nn.Conv2d(16, 32, 3, padding=1), "block:4x4:0.5@bsr")
    x = torch.randn(8, 16, 16, 16, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        conv(x)
    assert sum(saved) <= x.numel() * 4 + conv.sparse_weight.stored.numel() * 4, saved


WIDTH, DEPTH = 1024, 6  # 4 MiB of float32 weight per layer, 24 MiB dense


def lazy_model():
    with torch.device("meta"):
        hidden = [nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH)]
    return nn.Sequential(nn.Linear(16, WIDTH), *hidden, nn.Linear(WIDTH, 2))


@pytest.mark.parametrize("scheme", ["block:16x16:0.9@bsr_cpp", "block:16x16:0.9@bsr"])
def test_a_lazy_model_is_built_sparse_without_its_dense_weights(scheme):
    """Layers left on the meta device are initialised one at a time and replaced at once: the build
    never holds the dense weights of the model, only about one layer's (plus its mask's making)."""
    if scheme.endswith("@bsr_cpp"):
        pytest.importorskip("sparsebench.kernels")
    built = {}

    def build():
        torch.manual_seed(0)
        try:
            built["model"] = sparsify(lazy_model(), scheme)
        except RepresentationUnavailable as why:
            pytest.skip(str(why))

    build()  # first in the process: kernel libraries and thread pools load outside the measured build
    peak = peak_heap(build)
    layer_bytes = WIDTH * WIDTH * 4
    assert peak < 3 * layer_bytes, f"build peak {peak / 2**20:.1f} MiB, one dense layer {layer_bytes / 2**20:.0f} MiB"
    model = built["model"]
    assert not any(p.is_meta for p in model.parameters())
    kept = model[3].sparse_weight.mask().float().mean()
    assert 0.05 < kept < 0.15  # a real mask of a real initialised weight
    assert model(torch.randn(4, 16)).shape == (4, 2)


def test_lazy_build_is_seeded():
    def build():
        torch.manual_seed(3)
        return sparsify(lazy_model(), "random:0.5@csr", seed=1)

    a, b = build(), build()
    torch.testing.assert_close(a[2].sparse_weight.to_dense(), b[2].sparse_weight.to_dense())
