"""Checkpoints that travel: saved under one representation, loaded under any other of the same pattern
(built with another mask), or into the dense model; the optimizer state comes along, so training
continues exactly as it would have."""

import itertools

import pytest
import torch
from torch import nn

from sparsebench import RepresentationUnavailable, sparsify
from sparsebench.checkpoint import CheckpointError, load, load_state_dict, save, state_dict

REPS = ["masked", "csr", "bsr", "bsr_cpp"]
PATTERN = "block:4x4:0.75"  # one pattern every representation here stores


def fresh() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 3 * 3, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 4))


def built(rep: str, seed: int, schedule: str = "") -> nn.Module:
    try:
        return sparsify(fresh(), f"{PATTERN}{schedule}@{rep}", seed=seed, total_steps=6 if schedule else None)
    except RepresentationUnavailable as why:
        pytest.skip(str(why))


BATCHES = [(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)), torch.tensor([0, 1, 2, 3]))
           for i in range(4)]


def step(model, optimizer, batch):
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
    optimizer.step()
    if hasattr(model, "mask_updater"):
        model.mask_updater.step(optimizer)


def adam(model):
    return torch.optim.Adam(model.parameters(), lr=1e-2)


@pytest.mark.parametrize("source,target", list(itertools.product(REPS, REPS)))
def test_a_checkpoint_loads_under_every_representation_and_training_continues_the_same(source, target, tmp_path):
    a = built(source, seed=1, schedule="/set:2:0.3")  # its masks move: the checkpoint's are not the build's
    opt_a = adam(a)
    for batch in BATCHES[:3]:
        step(a, opt_a, batch)
    save(a, tmp_path / "ckpt.pt", opt_a)
    b = built(target, seed=7)  # another representation, built with another mask
    opt_b = adam(b)
    load(b, tmp_path / "ckpt.pt", opt_b)
    x = BATCHES[3][0]
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-6)
    for i in (5, 7):
        assert torch.equal(b[i].sparse_weight.mask(), a[i].sparse_weight.mask())
    a.mask_updater.remove()
    del a.mask_updater  # both continue with their masks fixed
    step(a, opt_a, BATCHES[3])
    step(b, opt_b, BATCHES[3])  # Adam's moments and step count were carried: the same update
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("source", REPS)
def test_a_sparse_checkpoint_loads_into_the_dense_model(source):
    a = built(source, seed=1)
    opt_a = adam(a)
    step(a, opt_a, BATCHES[0])
    dense = fresh()
    opt_d = adam(dense)
    load_state_dict(dense, state_dict(a, opt_a), opt_d)
    with torch.no_grad():
        torch.testing.assert_close(dense(BATCHES[1][0]), a(BATCHES[1][0]), rtol=1e-5, atol=1e-6)
    mask = a[5].sparse_weight.mask()
    assert bool((dense[5].weight[~mask] == 0).all())
    moment = opt_d.state[dense[5].weight]["exp_avg"]
    assert bool((moment[~mask] == 0).all()) and torch.equal(moment[mask],
                                                            a[5].sparse_weight.densify(
                                                                opt_a.state[a[5].sparse_weight.stored]["exp_avg"])[mask])


def test_a_checkpoint_that_does_not_fit_is_refused_before_anything_changes(tmp_path):
    a = built("csr", seed=1)
    checkpoint = state_dict(a)
    b = built("masked", seed=2)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    with pytest.raises(CheckpointError, match="pruned in this model but dense in the checkpoint"):
        load_state_dict(b, state_dict(fresh()))
    checkpoint["sparse"]["5.weight"]["values"] = checkpoint["sparse"]["5.weight"]["values"][:-1]
    with pytest.raises(CheckpointError, match="values for"):
        load_state_dict(b, checkpoint)
    other = sparsify(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)), "random:0.5@csr")
    with pytest.raises(CheckpointError, match="no Linear/Conv2d layer|shape"):
        load_state_dict(other, state_dict(a))
    assert all(torch.equal(v, before[k]) for k, v in b.state_dict().items())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a sparsebench checkpoint"):
        load(b, tmp_path / "junk.pt")


def test_a_mask_the_target_pattern_cannot_store_is_refused():
    a = sparsify(fresh(), "random:0.75@csr", seed=1)
    b = built("bsr", seed=1)
    with pytest.raises(CheckpointError, match="not made of 4x4 units"):
        load_state_dict(b, state_dict(a))


def test_the_checkpoint_is_small():
    a = built("csr", seed=1)
    n = sum(a[i].sparse_weight.dense_numel for i in (2, 5, 7))
    sparse = state_dict(a)["sparse"]
    stored = sum(e["mask"].numel() + e["values"].numel() * 4 for e in sparse.values())
    assert stored < 0.4 * n * 4  # 25% kept values and a bit per weight, against dense float32
