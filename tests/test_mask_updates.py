"""Masks that move during training, on every representation that stores sparsely.

After any sequence of structure updates (and optimizer steps between them), each representation
equals the masked reference given the same updates: forward output, input gradient, weight gradient,
and the optimizer state at kept positions. Pruned weights stay exactly zero, grown ones start at zero
with zero state, and the stored parameter and its state hold exactly the kept count. Then the
updater itself: RigL's dense gradients, the gradual schedules' switch to sparse storage, and every
schedule end to end on the smoke budget."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sparsebench import RepresentationUnavailable, parse_scheme, sparsify
from sparsebench.patterns import expand_units
from sparsebench.representations import SparseConv2d, SparseLinear
from sparsebench.representations.sparseprop import sparseprop_unavailable_reason
from sparsebench.restructure import restructure, switch, unit_mask
from sparsebench.updater import dense_weight_grad

# every representation that stores sparsely, and the patterns each can move
MOVABLE = {"masked": ["random", "block"], "csr": ["random", "block"], "bsr": ["block"], "bsr_cpp": ["block"]}
if sparseprop_unavailable_reason() is None:  # the published peer, where installed (one draw must not skip them all)
    MOVABLE["sparseprop"] = ["random", "block"]
CASES = [(rep, pattern) for rep, patterns in MOVABLE.items() for pattern in patterns]


def build(layer: nn.Module, scheme: str, seed: int):
    model = nn.Sequential(copy.deepcopy(layer))
    try:
        sparsify(model, scheme, seed=seed, keep_dense=[])
    except RepresentationUnavailable as why:
        pytest.skip(str(why))
    return model[0]


def adam_state(weight, optimizer) -> dict[str, torch.Tensor]:
    """Adam's per-weight moments in the layer's dense shape (zeros at pruned positions)."""
    state = optimizer.state.get(weight.stored, {})
    return {k: weight.densify(v) for k, v in state.items() if k in ("exp_avg", "exp_avg_sq")}


def step(module, optimizer, x, dy):
    optimizer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(dy)
    grads = (x.grad.clone(), module.sparse_weight.dense_grad().clone())
    optimizer.step()
    return y.detach(), grads


def new_units(old: torch.Tensor, gen: torch.Generator, mode: str) -> torch.Tensor:
    """A drop-and-grow move (same kept count) or a pruning (fewer kept), drawn from ``gen``."""
    flat = old.reshape(-1)
    kept, free = flat.nonzero().reshape(-1), (~flat).nonzero().reshape(-1)
    k = int(torch.randint(0, max(1, min(len(kept) - 1, len(free)) + 1), (1,), generator=gen))
    out = flat.clone()
    out[kept[torch.randperm(len(kept), generator=gen)[:k]]] = False
    if mode == "move" and k:
        out[free[torch.randperm(len(free), generator=gen)[:k]]] = True
    return out.reshape(old.shape)


@st.composite
def layer_case(draw):
    rep, pattern = draw(st.sampled_from(CASES))
    conv = draw(st.booleans())
    b = draw(st.sampled_from([2, 4]))
    rows = b * draw(st.integers(1, 4))
    s = draw(st.sampled_from([0.3, 0.5, 0.75, 0.9]))
    if conv:  # (out, in, 3, 3): the matrix is (out, 9 * in); blocks must tile it (and bsr needs square ones)
        in_ch = b * draw(st.integers(1, 3))
        layer = nn.Conv2d(in_ch, rows, 3, padding=1)
        x_shape = (draw(st.sampled_from([2, 9])), in_ch, 5, 5)  # im2col rows, or direct (conv.DIRECT_MIN_BATCH)
        cols = 9 * in_ch
    else:
        cols = b * draw(st.integers(1, 6))
        layer = nn.Linear(cols, rows)
        x_shape = (7, cols)
    if pattern == "block" and cols % b:
        pattern = "random" if rep in ("masked", "csr") else pattern
    scheme = f"block:{b}x{b}:{s}@{rep}" if pattern == "block" else f"random:{s}@{rep}"
    return rep, scheme, layer, x_shape, draw(st.integers(0, 2**16)), draw(st.lists(st.sampled_from(["move", "prune"]),
                                                                                 min_size=1, max_size=3))


def assert_same_layer(sparse, ref, opt_s, opt_r, x, dy, what):
    ys, (dxs, dws) = step(sparse, opt_s, x, dy)
    yr, (dxr, dwr) = step(ref, opt_r, x, dy)
    torch.testing.assert_close(ys, yr, rtol=1e-4, atol=1e-4, msg=f"{what}: forward")
    torch.testing.assert_close(dxs, dxr, rtol=1e-4, atol=1e-4, msg=f"{what}: input gradient")
    torch.testing.assert_close(dws, dwr, rtol=1e-4, atol=1e-4, msg=f"{what}: weight gradient")
    mask = ref.sparse_weight.mask()
    assert torch.equal(sparse.sparse_weight.mask(), mask), f"{what}: masks differ"
    for k, v in adam_state(ref.sparse_weight, opt_r).items():
        torch.testing.assert_close(adam_state(sparse.sparse_weight, opt_s)[k], v, rtol=1e-4, atol=1e-5,
                                   msg=f"{what}: Adam {k}")


def assert_exact_structure(module, optimizer, what):
    w = module.sparse_weight
    mask = w.mask()
    kept = int(mask.sum())
    if w.packed:
        assert w.stored.numel() == kept, f"{what}: {w.stored.numel()} stored for {kept} kept"
    else:
        assert bool((w.stored.detach()[~mask] == 0).all()), f"{what}: a pruned weight is not zero"
    for k, v in optimizer.state.get(w.stored, {}).items():
        if k in ("exp_avg", "exp_avg_sq"):
            assert v.shape == w.stored.shape, f"{what}: Adam {k} is {tuple(v.shape)}, stored {tuple(w.stored.shape)}"
            if not w.packed:
                assert bool((v[~mask] == 0).all()), f"{what}: Adam {k} is not zero at a pruned position"


@given(case=layer_case())
def test_every_representation_matches_the_masked_reference_after_any_updates(case):
    rep, scheme, layer, x_shape, seed, moves = case
    sparse = build(layer, scheme, seed)
    ref = build(layer, parse_scheme(scheme).with_representation("masked").__str__(), seed)
    opt_s, opt_r = (torch.optim.Adam(m.parameters(), lr=1e-2) for m in (sparse, ref))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, generator=gen)
    dy = torch.randn(sparse(x).shape, generator=gen)
    assert_same_layer(sparse, ref, opt_s, opt_r, x, dy, f"{scheme} before any update")
    for i, mode in enumerate(moves):
        old = unit_mask(ref.sparse_weight)
        units = new_units(old, gen, mode)
        value_before = sparse.sparse_weight.to_dense().detach().clone()
        restructure(sparse.sparse_weight, units, opt_s)
        restructure(ref.sparse_weight, units, opt_r)
        what = f"{scheme} after update {i + 1} ({mode})"
        unit = parse_scheme(scheme).pattern.unit
        grown = expand_units(units & ~old, unit).reshape(sparse.sparse_weight.shape)
        survived = expand_units(units & old, unit).reshape(sparse.sparse_weight.shape)
        dense_now = sparse.sparse_weight.to_dense()
        assert bool((dense_now[grown] == 0).all()), f"{what}: a grown weight does not start at zero"
        assert torch.equal(dense_now[survived], value_before[survived]), f"{what}: a kept weight changed"
        for v in adam_state(sparse.sparse_weight, opt_s).values():
            assert bool((v[grown] == 0).all()), f"{what}: a grown weight's Adam state is not zero"
        assert int(sparse.sparse_weight.mask().sum()) == int(expand_units(units, unit).sum()), f"{what}: kept count"
        assert_exact_structure(sparse, opt_s, what)
        assert_same_layer(sparse, ref, opt_s, opt_r, x, dy, what)
        assert_exact_structure(sparse, opt_s, what + ", one step on")


@pytest.mark.parametrize("rep, scheme", [("csr", "magnitude:0.6"), ("bsr_cpp", "block:4x4:0.6"),
                                         ("bsr", "block:4x4:0.6")])
def test_a_layer_switched_to_sparse_storage_keeps_its_function_and_its_adam_state(rep, scheme):
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    dense = build(layer, f"{scheme}@masked", 0)
    ref = build(layer, f"{scheme}@masked", 0)
    opt, opt_r = (torch.optim.Adam(m.parameters(), lr=1e-2) for m in (dense, ref))
    x, dy = torch.randn(5, 16), torch.randn(5, 8)
    for _ in range(3):
        step(dense, opt, x, dy)
        step(ref, opt_r, x, dy)
    try:
        new = switch(dense, rep, opt)
    except RepresentationUnavailable as why:
        pytest.skip(str(why))
    assert new.name == rep and dense.sparse_weight is new
    assert any(p is new.stored for g in opt.param_groups for p in g["params"])
    assert_same_layer(dense, ref, opt, opt_r, x, dy, f"{scheme} switched to {rep}")
    assert_exact_structure(dense, opt, f"{scheme} switched to {rep}")


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_rigl_dense_gradient_is_the_gradient_of_every_weight(kind):
    torch.manual_seed(0)
    layer = nn.Linear(12, 6) if kind == "linear" else nn.Conv2d(3, 4, 3, padding=1, stride=2)
    x = torch.randn(4, 12) if kind == "linear" else torch.randn(2, 3, 7, 7)
    dense = copy.deepcopy(layer)
    y = dense(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    module = build(layer, "random:0.9@csr", 0)
    assert isinstance(module, (SparseLinear, SparseConv2d))
    got = dense_weight_grad(module, x, dy)
    torch.testing.assert_close(got, dense.weight.grad.reshape(got.shape), rtol=1e-5, atol=1e-5)


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 4))


def train(model, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 16, generator=gen), torch.randint(0, 4, (64,), generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        model.mask_updater.step(optimizer)
    return optimizer


def kept_total(model):
    return sum(int(m.sparse_weight.mask().sum()) for m in model.mask_updater.layers.values())


def test_rigl_grows_where_the_dense_gradient_is_largest():
    model = sparsify(small_model(), "random:0.8/rigl:5:0.3@csr", total_steps=40,
                     example_inputs=torch.randn(64, 16))
    updater = model.mask_updater
    seen = {}
    real = updater._grow_scores

    def spy(name, shape):
        seen[name] = real(name, shape).clone()
        return seen[name]

    updater._grow_scores = spy
    before = {n: unit_mask(m.sparse_weight) for n, m in updater.layers.items()}
    train(model, 5)
    assert updater.history and updater.history[0]["step"] == 5
    for name, m in updater.layers.items():
        after = unit_mask(m.sparse_weight)
        grown = after & ~before[name]
        candidates = seen[name][~before[name] | grown]
        assert int(grown.sum()) > 0
        # every grown unit scores at least as high as any unit left ungrown among the free ones
        ungrown = seen[name][~after & ~before[name]]
        assert float(seen[name][grown].min()) >= float(ungrown.max()) - 1e-6, name
        assert candidates.numel() > 0


@pytest.mark.parametrize("scheme", ["random:0.9/set@csr", "random:0.9/rigl@masked", "random:0.9/rigl/erk@csr",
                                    "block:4x4:0.75/rigl@bsr_cpp"])
def test_drop_and_grow_keeps_the_kept_count_exact_at_every_update(scheme):
    model = sparsify(small_model(), scheme, total_steps=60, example_inputs=torch.randn(64, 16))
    start = kept_total(model)
    counts = []
    real = model.mask_updater.step

    def counted(optimizer):
        changed = real(optimizer)
        counts.append(kept_total(model))
        return changed

    model.mask_updater.step = counted
    try:
        train(model, 60)
    except RepresentationUnavailable as why:
        pytest.skip(str(why))
    report = model.mask_updater.report()
    assert report["updates"] == len([h for h in report["history"]]) > 5
    assert sum(h["units_moved"] for h in report["history"]) > 0  # masks really moved
    assert set(counts) == {start}


@pytest.mark.parametrize("scheme, final", [("magnitude:0.9/gmp@csr", "csr"), ("magnitude:0.9/oneshot:0.5@csr", "csr"),
                                           ("magnitude:0.9/gmp@masked", "masked"),
                                           ("block:4x4:0.9/gmp@bsr_cpp", "bsr_cpp")])
def test_gradual_schedules_start_dense_end_at_s_and_switch_storage_once_it_pays(scheme, final):
    model = sparsify(small_model(), scheme, total_steps=50, example_inputs=torch.randn(64, 16))
    updater = model.mask_updater
    assert all(m.sparse_weight.name == "masked" and bool(m.sparse_weight.mask().all())
               for m in updater.layers.values())
    try:
        train(model, 50)
    except RepresentationUnavailable as why:
        pytest.skip(str(why))
    s = parse_scheme(scheme).target_sparsity
    for name, m in updater.layers.items():
        w = m.sparse_weight
        assert w.name == final, name
        assert 1 - int(w.mask().sum()) / w.dense_numel == pytest.approx(s, abs=0.02)
    levels = [h["sparsity"] for h in updater.history]
    assert levels == sorted(levels) and levels[-1] == pytest.approx(s)
    if final != "masked":
        assert {c["layer"] for c in updater.switches} == set(updater.layers)
        assert all(c["to"] == final and c["sparsity"] < s + 1e-9 for c in updater.switches)


def test_a_schedule_without_the_run_length_is_refused():
    with pytest.raises(ValueError, match="total_steps"):
        sparsify(small_model(), "random:0.9/rigl")


SMOKE_SCHEDULES = ["magnitude:0.9/gmp@auto", "magnitude:0.9/oneshot@csr", "random:0.9/set@csr",
                   "random:0.9/rigl/erk@auto", "block:16x16:0.9/rigl@bsr_cpp"]


@pytest.mark.parametrize("scheme", SMOKE_SCHEDULES)
def test_every_schedule_runs_end_to_end_on_the_smoke_budget(scheme, tiny_settings):
    from sparsebench.budgets import BUDGETS
    from sparsebench.cell import Cell
    from sparsebench.train import CellRun

    run = CellRun(Cell.parse("transformer", scheme), BUDGETS["smoke"], tiny_settings)
    run.fresh()
    run.train()
    result = run.measure()
    updates = result.mask_updates
    assert updates["schedule"] == str(parse_scheme(scheme).schedule)
    assert updates["updates"] >= 1 and updates["steps"] == result.steps
    assert updates["update_s"] > 0
    if "rigl" in scheme:
        assert updates["dense_grad_s"] > 0
    if parse_scheme(scheme).schedule.starts_dense:
        assert updates["switches"] and set(result.representations.values()) - {"masked"}
    total = result.sparsity["total"]
    s = parse_scheme(scheme).target_sparsity
    pruned = [v for n, v in result.sparsity["layers"].items() if n in result.representations]
    # within the rounding rule's reach: the smoke transformer's 64x64 layers hold 16 blocks of 16x16 (14 zeroed)
    assert 1 - sum(v["kept"] for v in pruned) / sum(v["count"] for v in pruned) == pytest.approx(s, abs=0.03)
    assert total["kept"] <= total["count"]
    assert result.curve["points"][-1]["seconds"] == pytest.approx(result.train_time_s)
