"""sparsify on models other than ours: layers found by kind (torch's own attention and encoder layers),
nothing left dense without a reason, the way back to plain dense layers, clear errors when a model moves
where its representation cannot run, and no global state changed by importing sparsebench."""

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from test_representations import check_against_reference, scheme_for, sparse_layer
from torch import nn

from sparsebench import REPRESENTATIONS, RepresentationUnavailable, sparsify, summary, unsparsify
from sparsebench.representations import SparseConv2d, SparseLinear
from sparsebench.sparsify import LayerRefused

CPU_REPS = ["masked", "csr", "bsr", "bsr_cpp"]


def pattern_for(rep: str) -> str:
    return "block:4x4:0.5" if rep.startswith("bsr") else "random:0.5"


def encoder_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32),
                         nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True),
                         nn.Linear(32, 4))


def sparsified(model: nn.Module, scheme: str, **kwargs) -> nn.Module:
    try:
        return sparsify(model, scheme, **kwargs)
    except RepresentationUnavailable as why:
        pytest.skip(str(why))


@pytest.mark.parametrize("rep", CPU_REPS)
def test_torch_attention_and_encoder_layers_are_pruned_and_compute_the_masked_function(rep):
    model = encoder_model()
    x = torch.randn(3, 7, 16)
    sparsified(model, f"{pattern_for(rep)}@{rep}")
    names = {row.name for row in summary(model).layers}
    # out_proj is torch's NonDynamicallyQuantizableLinear, a subclass: found by kind, not exact type
    assert names == {"1.self_attn.out_proj", "1.linear1", "1.linear2"}
    # the same function as a dense copy holding the pruned weights as zeros, in training and in the
    # fused inference path (which reads each layer's .weight)
    reference = encoder_model()  # the same initial weights
    with torch.no_grad():
        for name in names:
            reference.get_submodule(name).weight.copy_(model.get_submodule(name).sparse_weight.to_dense())
    y, y_ref = model(x), reference(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for name in names:
        sw = model.get_submodule(name).sparse_weight
        mask = sw.mask()
        torch.testing.assert_close(sw.dense_grad()[mask], reference.get_submodule(name).weight.grad[mask],
                                   rtol=1e-4, atol=1e-5)
    model.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)


def test_every_weight_left_dense_is_named_with_its_reason():
    class Scaled(nn.Linear):  # computes something else than nn.Linear: replacing it would change the model
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 32), Scaled(32, 32),
                          nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), nn.Conv1d(32, 8, 1),
                          nn.Linear(32, 4))
    sparsify(model, "random:0.5@masked")
    report = summary(model)
    pruned = {r.name for r in report.layers}
    dense = {name: why for name, _, why in report.left_dense}
    weights = {n for n, p in model.named_parameters() if p.dim() >= 2}
    # every weight matrix is either pruned or named as left dense: none is left dense silently
    covered = {n for n in weights if any(n.startswith(f"{layer}.") for layer in pruned | set(dense)) or n in dense}
    assert covered == weights, sorted(weights - covered)
    assert "own forward" in dense["2"]
    assert "Embedding" in dense["0"]
    assert "Conv1d" in dense["4"]
    assert "q/k/v" in dense["3.self_attn.in_proj_weight"]
    assert "first layer" in dense["1"] and "classifier" in dense["5"]
    assert {"3.self_attn.out_proj", "3.linear1", "3.linear2"} <= pruned
    text = str(report)
    assert "left dense" in text and "3.linear1" in text and "own forward" in text


def test_summary_reports_what_is_stored():
    model = sparsify(nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 64), nn.Linear(64, 2)), "random:0.75@csr")
    (row,) = summary(model).layers
    sw = model[1].sparse_weight
    assert row.representation == "csr" and row.shape == (64, 64)
    assert row.sparsity == pytest.approx(0.75)
    assert row.stored_bytes == sum(t.numel() * t.element_size() for t in [sw.stored, *sw.structure_buffers()])
    assert row.stored_bytes < row.dense_bytes == 64 * 64 * 4


@pytest.mark.parametrize("rep", CPU_REPS)
def test_unsparsify_gives_plain_layers_computing_the_same_function(rep):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.Flatten(),
                          nn.Linear(16 * 6 * 6, 32), nn.Linear(32, 4))
    sparsified(model, f"{pattern_for(rep)}@{rep}", keep_dense=["0"])
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        masks = {n: model.get_submodule(n).sparse_weight.mask() for n in ("2", "4", "5")}
    unsparsify(model)
    assert not any(isinstance(m, (SparseLinear, SparseConv2d)) for m in model.modules())
    assert type(model[2]) is nn.Conv2d and model[2].padding == (1, 1) and type(model[4]) is nn.Linear
    assert not hasattr(model, "left_dense")
    for name, mask in masks.items():
        assert bool((model.get_submodule(name).weight[~mask] == 0).all())
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rep", ["masked", "csr", "bsr", "bsr_cpp", "auto"])
@given(data=st.data(), padding=st.sampled_from([0, 1, 2, "same", "valid"]),
       mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]), seed=st.integers(0, 10_000))
def test_conv_padding_modes_match_the_masked_reference(rep, data, padding, mode, seed):
    torch.manual_seed(seed)
    layer = nn.Conv2d(4, 8, 3, padding=padding, padding_mode=mode)
    x = torch.randn(2, 4, 6, 6)

    def conv(x, w, b):
        reference = nn.Conv2d(4, 8, 3, padding=padding, padding_mode=mode)
        return reference._conv_forward(x, w, b)

    sparse = sparse_layer(layer, data.draw(scheme_for(rep, 8, 36)), seed, x)
    check_against_reference(layer, sparse, x, conv)
    torch.testing.assert_close(sparse.plain()(x), conv(x, sparse.sparse_weight.to_dense(), layer.bias))


@pytest.mark.parametrize("rep", CPU_REPS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_moving_to_a_dtype_either_works_or_says_so_naming_the_layer(rep, dtype):
    model = sparsified(nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)),
                       f"{pattern_for(rep)}@{rep}")
    why = REPRESENTATIONS[rep].unsupported(dtype, torch.device("cpu"))
    if why:
        with pytest.raises(RepresentationUnavailable, match=r"layer '1' is stored .* cannot run in torch\."):
            model.to(dtype)
        return
    model.to(dtype)
    x = torch.randn(5, 8, dtype=dtype)
    y = model(x)
    y.sum().backward()
    assert y.dtype == dtype and model[1].sparse_weight.stored.grad.dtype == dtype
    reference = F.linear(F.linear(F.linear(x, model[0].weight, model[0].bias), model[1].sparse_weight.to_dense(),
                                  model[1].bias), model[2].weight, model[2].bias)
    torch.testing.assert_close(y, reference, **({} if dtype == torch.float64 else dict(rtol=2e-2, atol=2e-2)))


def test_a_model_in_a_dtype_the_representation_cannot_run_is_refused_before_any_layer_changes():
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)).half()
    with pytest.raises(LayerRefused, match=r"layer '1' is torch.float16 on cpu, where 'csr' cannot run"):
        sparsify(model, "random:0.5@csr")
    assert type(model[1]) is nn.Linear


def test_importing_sparsebench_changes_no_global_state_and_its_tensors_warn_nothing():
    """Run in a fresh interpreter: the warning filters and the sparse invariant checks a user set stay
    as they were, and building and training every representation emits no warning, with the checks on."""
    code = textwrap.dedent("""
        import warnings
        import torch
        torch.sparse.check_sparse_tensor_invariants.enable()
        warnings.simplefilter("error")
        before = list(warnings.filters)
        import sparsebench
        from sparsebench import sparsify
        from sparsebench.representations import REPRESENTATIONS
        assert warnings.filters == before, "importing sparsebench changed the warning filters"
        assert torch.sparse.check_sparse_tensor_invariants.is_enabled(), "importing it turned the checks off"
        for rep, scheme in [("masked", "random:0.5"), ("csr", "random:0.5"), ("bsr", "block:4x4:0.5")]:
            model = sparsify(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 16),
                                                 torch.nn.Linear(16, 4)), f"{scheme}@{rep}")
            model(torch.randn(3, 8)).sum().backward()
            model[1].sparse_weight.to_dense()
        assert warnings.filters == before
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
