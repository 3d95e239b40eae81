"""Every representation against the masked dense reference: forward output, input gradient and
weight gradient at kept positions, for Linear and Conv2d; optimizer invariants after several steps."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sparsebench import REPRESENTATIONS, RepresentationUnavailable, make_mask, parse_scheme, sparsify
from sparsebench.representations import SparseWeight, conv_paths
from sparsebench.representations import csr as csr_module
from sparsebench.schemes import STORES
from sparsebench.sparsify import POLICIES

# which patterns each representation stores (a new representation adds its line here)
PATTERNS_OF = {
    "masked": ["random", "magnitude", "block", "nm"],
    "csr": ["random", "magnitude", "block", "nm"],
    "bsr": ["block"],
    "bsr_cpp": ["block"],
    "semi": ["nm24"],
    "sparseprop": ["random", "magnitude", "block", "nm"],
    "auto": ["random", "magnitude", "block", "nm"],
    "fastest": ["random", "magnitude", "block", "nm"],
}
SPARSE_REPS = [*REPRESENTATIONS, *POLICIES]  # a policy (auto, fastest) is tested as what it picks


def test_every_representation_is_tested():
    assert set(PATTERNS_OF) >= set(REPRESENTATIONS) | set(POLICIES)


def test_every_scheme_representation_is_a_class_or_a_policy():
    assert set(STORES) == set(REPRESENTATIONS) | set(POLICIES)
    assert not set(REPRESENTATIONS) & set(POLICIES)


def assert_nothing_stored_outside(sw: SparseWeight, stored: torch.Tensor, mask: torch.Tensor, what: str):
    """``stored`` (the parameter, or its gradient) holds nothing at pruned positions. A representation
    that stores the dense shape (masked, semi) must hold exact zeros there; one that stores only kept
    values must hold exactly as many as are kept. Checked on the stored tensor itself: ``to_dense()`` and
    ``dense_grad()`` go through the mask and would hide a leak."""
    if stored.numel() == sw.dense_numel:
        leaked = stored.detach().reshape(mask.shape)[~mask]
        assert bool((leaked == 0).all()), f"{what}: {int((leaked != 0).sum())} pruned positions are non-zero"
    else:
        assert stored.numel() == int(mask.sum()), f"{what}: {stored.numel()} stored for {int(mask.sum())} kept"


@st.composite
def scheme_for(draw, rep, rows, cols):
    """A valid scheme string of representation ``rep`` for a (rows, cols) weight matrix."""
    pattern = draw(st.sampled_from(PATTERNS_OF[rep]))
    s = draw(st.sampled_from([0.0, 0.3, 0.5, 0.75, 0.9, 0.95]))
    if pattern == "block":
        r = draw(st.sampled_from([d for d in (1, 2, 4, 8) if rows % d == 0 and (rep != "bsr" or cols % d == 0)]))
        c = r if rep == "bsr" else draw(st.sampled_from([d for d in (1, 2, 4, 8) if cols % d == 0]))
        return f"block:{r}x{c}:{s}@{rep}"
    if pattern == "nm24":
        return f"nm:2:4@{rep}"
    if pattern == "nm":
        n, m = draw(st.sampled_from([(1, 2), (2, 4), (1, 4), (2, 8)]))
        if cols % m:
            return f"random:{s}@{rep}"
        return f"nm:{n}:{m}@{rep}"
    return f"{pattern}:{s}@{rep}"


def sparse_layer(layer: nn.Module, scheme: str, seed: int, x: torch.Tensor):
    """Wrap one layer so sparsify prunes it (keep_dense=[] -> every layer is pruned)."""
    model = nn.Sequential(copy.deepcopy(layer))
    try:
        sparsify(model, scheme, seed=seed, keep_dense=[], example_inputs=x)
    except RepresentationUnavailable as why:
        pytest.skip(str(why))
    return model[0]


def check_against_reference(dense_layer, sparse, x, functional):
    """Compare ``sparse`` with ``functional(x, W*mask)`` on outputs and all gradients."""
    sw: SparseWeight = sparse.sparse_weight
    mask = sw.mask()
    w_ref = (dense_layer.weight.detach() * mask).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    x_sp = x.detach().clone().requires_grad_()
    y_ref = functional(x_ref, w_ref, dense_layer.bias)
    y_sp = sparse(x_sp)
    grad_out = torch.randn_like(y_ref)
    y_ref.backward(grad_out)
    y_sp.backward(grad_out)
    tol = dict(rtol=1e-4, atol=1e-4 * max(1.0, float(x.abs().max())) * x.shape[-1] ** 0.5)
    torch.testing.assert_close(y_sp, y_ref, **tol)
    torch.testing.assert_close(x_sp.grad, x_ref.grad, **tol)
    dense_grad = sw.dense_grad()
    assert dense_grad.shape == w_ref.shape
    torch.testing.assert_close(dense_grad[mask], w_ref.grad[mask], **tol)  # at kept positions
    assert_nothing_stored_outside(sw, sw.stored.grad, mask, "weight gradient")  # nothing outside them
    torch.testing.assert_close(sparse.bias.grad, dense_layer_bias_grad(y_ref, grad_out), **tol)


def dense_layer_bias_grad(y, grad_out):
    dims = [d for d in range(grad_out.dim()) if d != (1 if grad_out.dim() == 4 else grad_out.dim() - 1)]
    return grad_out.sum(dim=dims)


@pytest.mark.parametrize("rep", SPARSE_REPS)
@given(data=st.data(), out_dim=st.sampled_from([4, 8, 12, 16, 32]), in_dim=st.sampled_from([4, 8, 16, 24, 64]),
       n=st.integers(1, 33), seed=st.integers(0, 10_000))
def test_linear_matches_masked_reference(rep, data, out_dim, in_dim, n, seed):
    if rep == "semi":
        out_dim, in_dim = 32, 64
    torch.manual_seed(seed)
    layer = nn.Linear(in_dim, out_dim)
    scheme = data.draw(scheme_for(rep, out_dim, in_dim))
    x = torch.randn(n, in_dim)
    check_against_reference(layer, sparse_layer(layer, scheme, seed, x), x, F.linear)


@pytest.mark.parametrize("rep", SPARSE_REPS)
@given(data=st.data(), cout=st.sampled_from([4, 8, 16]), cin=st.sampled_from([1, 2, 4, 8]), k=st.sampled_from([1, 3]),
       hw=st.integers(3, 7), stride=st.sampled_from([1, 2]), padding=st.sampled_from([0, 1]),
       seed=st.integers(0, 10_000))
def test_conv2d_matches_masked_reference(rep, data, cout, cin, k, hw, stride, padding, seed):
    if rep == "semi":
        cout, cin, k = 32, 64, 1
    torch.manual_seed(seed)
    layer = nn.Conv2d(cin, cout, k, stride=stride, padding=padding)
    scheme = data.draw(scheme_for(rep, cout, cin * k * k))
    x = torch.randn(data.draw(st.sampled_from([2, 9])), cin, hw, hw)
    # every way csr and bsr_cpp can convolve, forced: the measured choice is only ever one of them
    path = data.draw(st.sampled_from(conv_paths.PATHS))

    def conv(x, w, b):
        return F.conv2d(x, w, b, stride=stride, padding=padding)

    with conv_paths.forced(path):
        check_against_reference(layer, sparse_layer(layer, scheme, seed, x), x, conv)


OPTIMIZERS = {
    "adam_l2": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adam_fused": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2, fused=True),  # what training uses
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=1e-2, nesterov=True),
}


@pytest.mark.parametrize("rep", SPARSE_REPS)
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@given(data=st.data(), seed=st.integers(0, 10_000), steps=st.integers(2, 6))
def test_pruned_weights_stay_zero_through_optimizer_steps(rep, opt, data, seed, steps):
    torch.manual_seed(seed)
    out_dim, in_dim = (32, 64) if rep == "semi" else (16, 32)
    model = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))
    scheme = data.draw(scheme_for(rep, out_dim, in_dim))
    try:
        sparsify(model, scheme, seed=seed, keep_dense=["2"], example_inputs=torch.randn(8, in_dim))
    except RepresentationUnavailable as why:
        pytest.skip(str(why))
    sw = model[0].sparse_weight
    mask0, kept0 = sw.mask().clone(), int(sw.mask().sum())
    optimizer = OPTIMIZERS[opt](model.parameters())
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(8, in_dim)).pow(2).mean().backward()
        optimizer.step()
    assert torch.equal(sw.mask(), mask0)
    assert int(sw.mask().sum()) == kept0
    assert_nothing_stored_outside(sw, sw.stored, mask0, "a pruned weight moved off zero")
    if sw.name in ("csr", "bsr", "bsr_cpp"):  # optimizer state is sized by the kept count, not the dense count
        for state in optimizer.state[sw.stored].values():
            if torch.is_tensor(state) and state.dim():
                assert state.numel() == kept0


@pytest.mark.parametrize("rep", ["csr", "bsr", "bsr_cpp"])
def test_no_dense_weight_is_stored(rep):
    layer = nn.Linear(64, 32)
    sparse = sparse_layer(layer, f"block:4x4:0.75@{rep}", 0, torch.randn(4, 64))
    tensors = list(sparse.parameters()) + list(sparse.buffers())
    assert all(t.numel() < 64 * 32 for t in tensors), [t.shape for t in tensors]
    assert sparse.sparse_weight.stored.numel() == int(make_mask(layer.weight, parse_scheme("block:4x4:0.75")).sum())


def test_auto_chooses_a_measured_representation_and_caches_it(isolated_auto_cache):
    import json


    layer = nn.Linear(256, 128)
    x = torch.randn(64, 256)
    sparse = sparse_layer(layer, "block:16x16:0.9@auto", 0, x)
    chosen = sparse.sparse_weight.name
    cache = json.loads(isolated_auto_cache.read_text())
    (decision,) = [v for k, v in cache.items() if "Linear|128x256|64x256|block:16x16:0.9@auto" in k]
    times, fits = decision["times_ms"], decision["fits_dense_memory"]
    assert not fits["masked"] and fits["bsr"] and fits["csr"]  # at 90%: every sparse form is below dense
    assert decision["chosen"] == chosen == min((n for n in times if fits[n]), key=times.get)
    assert {"masked", "csr", "bsr"} <= set(decision["times_ms"])  # every valid representation was timed
    assert sparse_layer(layer, "block:16x16:0.9@auto", 0, x).sparse_weight.name == chosen  # from the cache


def test_auto_picks_the_fastest_within_dense_memory():
    from sparsebench.representations.auto import MARGIN, pick

    times = {"masked": 1.0, "csr": 3.0, "bsr": 2.0}
    assert pick(times, {"masked": False, "csr": True, "bsr": True}) == "bsr"  # slower than masked, but fits
    assert pick(times, {"masked": False, "csr": True, "bsr": False}) == "csr"
    # nothing fits (low sparsity): the fastest, with masked kept unless beaten by the margin
    assert pick(times, dict.fromkeys(times, False)) == "masked"
    assert pick({"masked": 1.0, "csr": MARGIN * 0.99}, {"masked": False, "csr": False}) == "csr"
    assert pick({"masked": 1.0, "csr": MARGIN * 1.01}, {"masked": False, "csr": False}) == "masked"


def test_fastest_ignores_memory_and_auto_does_not(isolated_auto_cache):
    import json

    from sparsebench.representations.auto import pick

    layer, x = nn.Linear(256, 128), torch.randn(64, 256)
    for policy in ("auto", "fastest"):
        chosen = sparse_layer(layer, f"random:0.5@{policy}", 0, x).sparse_weight.name
        cache = json.loads(isolated_auto_cache.read_text())
        (decision,) = [v for k, v in cache.items() if k.endswith(f"Linear|128x256|64x256|random:0.5@{policy}")]
        fits = decision["fits_dense_memory"]
        rule = fits if policy == "auto" else dict.fromkeys(fits, False)
        assert chosen == decision["chosen"] == pick(decision["times_ms"], rule)
        if policy == "auto":
            assert fits[chosen]  # csr fits at 50%, masked never does


def test_training_bytes_counts_what_the_ledger_counts():
    from sparsebench.representations.auto import training_bytes

    layer = nn.Linear(64, 32)
    dense_bytes = 16 * layer.weight.numel()
    masked = sparse_layer(layer, "random:0.5@masked", 0, torch.randn(4, 64)).sparse_weight
    assert training_bytes(masked) == dense_bytes + sum(b.numel() * b.element_size() for b in masked.buffers())
    csr = sparse_layer(layer, "random:0.9@csr", 0, torch.randn(4, 64)).sparse_weight
    kept = csr.stored.numel()
    assert training_bytes(csr) == 16 * kept + sum(b.numel() * b.element_size() for b in csr.buffers()) < dense_bytes


def test_auto_records_the_concrete_representation_on_each_layer():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32))
    sparsify(model, "block:4x4:0.5@auto", keep_dense=[], example_inputs=torch.randn(8, 64))
    for layer in (model[0], model[2]):
        sw = layer.sparse_weight
        assert sw.name in REPRESENTATIONS and sw.scheme == parse_scheme(f"block:4x4:0.5@{sw.name}")


def test_auto_cache_is_keyed_by_kernel_variant_and_survives_corruption(tmp_path, monkeypatch):
    import json

    from sparsebench.representations import auto

    path = tmp_path / "auto-choices.json"
    path.write_text("{ not json")  # a crashed writer or a bad disk: ignored, measured again, rewritten
    monkeypatch.setattr(auto, "_cache_path", lambda: path)
    layer, x = nn.Linear(32, 16), torch.randn(8, 32)
    for variant in ("native", "avx2"):
        monkeypatch.setattr(auto.kernels, "variant", lambda v=variant: v)
        sparse_layer(layer, "random:0.5@auto", 0, x)
    keys = list(json.loads(path.read_text()))
    assert len(keys) == 2 and keys[0] != keys[1], keys  # one choice per kernel variant


def test_auto_choice_is_measured_not_cached_while_the_cache_lock_is_held(tmp_path, monkeypatch, capsys):
    """A cache whose lock stays busy past LOCK_TIMEOUT_S costs a re-measurement later, nothing else."""
    import json
    import os

    from sparsebench.atomic import locked
    from sparsebench.representations import auto

    path = tmp_path / "auto-choices.json"
    monkeypatch.setattr(auto, "LOCK_TIMEOUT_S", 0.2)
    with locked(tmp_path / "auto-choices.json.lock"):
        auto._save_choice(path, "key", {"chosen": "csr"})
    assert not path.exists()
    assert capsys.readouterr().err == (f"sparsebench: could not cache auto choice in {path}: {path}.lock is locked "
                                       f"by pid {os.getpid()} (waited 0 s)\n")
    auto._save_choice(path, "key", {"chosen": "csr"})
    assert json.loads(path.read_text()) == {"key": {"chosen": "csr"}}


def test_auto_needs_an_example_batch():
    with pytest.raises(ValueError, match="example_inputs"):
        sparsify(nn.Sequential(nn.Linear(8, 8)), "random:0.5@auto", keep_dense=[])


@given(out_dim=st.sampled_from([4, 8, 16]), in_dim=st.sampled_from([4, 8, 24]), n=st.integers(1, 17),
       sparsity=st.sampled_from([0.0, 0.5, 0.9]), conv=st.booleans(), seed=st.integers(0, 10_000))
def test_csr_torch_kernels_match_masked_reference(out_dim, in_dim, n, sparsity, conv, seed):
    """csr falls back to torch's sparse kernels where sparsebench's C++ ones cannot run: same storage,
    same results."""
    torch.manual_seed(seed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(csr_module.kernels, "available", lambda: False)
        if conv:
            layer, x = nn.Conv2d(in_dim, out_dim, 3, padding=1), torch.randn(2, in_dim, 5, 5)
            functional = functools.partial(F.conv2d, padding=1)
        else:
            layer, x, functional = nn.Linear(in_dim, out_dim), torch.randn(n, in_dim), F.linear
        sparse = sparse_layer(layer, f"random:{sparsity}@csr", seed, x)
        assert sparse.sparse_weight.kernel == "torch.sparse"
        check_against_reference(layer, sparse, x, functional)


@pytest.mark.parametrize("rep", ["csr", "bsr", "bsr_cpp"])
def test_saved_model_holds_the_structure_once_and_loads_back(rep):
    """W^T's index structure is derived: not saved, rebuilt on load (here into a layer whose own
    mask differs), so the loaded layer computes exactly what the saved one did."""
    torch.manual_seed(0)
    x = torch.randn(8, 64)
    scheme = f"block:4x4:0.75@{rep}"
    saved = sparse_layer(nn.Linear(64, 32), scheme, 0, x)
    state = saved.state_dict()
    assert not [k for k in state if k.rsplit(".", 1)[-1] in ("t_crow", "t_col", "perm")]
    loaded = sparse_layer(nn.Linear(64, 32), scheme, 1, x)
    assert not torch.equal(loaded.sparse_weight.mask(), saved.sparse_weight.mask())
    loaded.load_state_dict(state)
    assert torch.equal(loaded.sparse_weight.mask(), saved.sparse_weight.mask())
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad_out = torch.randn(8, 32)
    saved(x1).backward(grad_out)
    y = loaded(x2)
    y.backward(grad_out)
    torch.testing.assert_close(y, saved(x))
    torch.testing.assert_close(x2.grad, x1.grad)  # the input gradient runs through W^T's structure
