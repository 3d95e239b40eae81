import pytest
import torch
from torch import nn

from sparsebench import memory_ledger, sparsify
from sparsebench.representations import SparseConv2d, SparseLinear


def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))


def test_first_and_last_layer_stay_dense_by_default():
    model = sparsify(small_cnn(), "random:0.5@csr")
    assert type(model[0]) is nn.Conv2d and type(model[7]) is nn.Linear
    assert isinstance(model[2], SparseConv2d) and isinstance(model[5], SparseLinear)
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 10)


def test_keep_dense_option_changes_which_layers():
    model = sparsify(small_cnn(), "random:0.5", keep_dense=[])
    assert all(isinstance(model[i], (SparseConv2d, SparseLinear)) for i in (0, 2, 5, 7))
    with pytest.raises(ValueError, match="not Linear/Conv2d layers"):
        sparsify(small_cnn(), "random:0.5", keep_dense=["nope"])


def test_refused_scheme_names_layer_and_leaves_model_untouched():
    model = small_cnn()
    with pytest.raises(ValueError) as err:
        sparsify(model, "block:16x16:0.5@bsr")  # layer '2' is 16 x 72: 72 is not a multiple of 16
    assert "'2'" in str(err.value) and "does not tile" in str(err.value)
    assert "keep_dense=['2'" in str(err.value)  # the fix names the real argument
    assert all(type(m) in (nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear) for m in model)


class UnusedSecondLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.used(x)


def test_a_layer_refused_late_leaves_the_model_untouched():
    """auto times `used`, then cannot time `unused` (the example batch never reaches it): no layer
    may have been swapped by then."""
    model = UnusedSecondLayer()
    with pytest.raises(ValueError, match="'unused'"):
        sparsify(model, "random:0.5@auto", keep_dense=[], example_inputs=torch.randn(2, 8))
    assert type(model.used) is nn.Linear and type(model.unused) is nn.Linear


def test_dense_scheme_is_identity():
    model = small_cnn()
    assert sparsify(model, "dense") is model and type(model[2]) is nn.Conv2d


def ffn_step(scheme):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 2048))
    sparsify(model, scheme, keep_dense=[])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(64, 512)).sum().backward()
    opt.step()
    return memory_ledger(model, opt)


def test_ledger_dense_equals_its_dense_equivalent():
    ledger = ffn_step("dense")
    w = (512 * 2048 + 2048) * 4
    assert ledger["weights"] == w and ledger["gradients"] == w
    assert ledger["optimizer_state"] == 2 * w + 2 * 4  # exp_avg, exp_avg_sq, and a float32 step per parameter
    assert ledger["masks_and_indices"] == 0
    assert ledger["total"] == ledger["dense_total"]


@pytest.mark.parametrize("scheme, at_most", [("block:4x4:0.5@bsr", 0.6), ("block:4x4:0.9@bsr", 0.15)])
def test_bsr_ledger_targets(scheme, at_most):
    ledger = ffn_step(scheme)
    assert ledger["dense_total"] == ffn_step("dense")["total"]
    ratio = ledger["total"] / ledger["dense_total"]
    assert ratio <= at_most, ledger


def test_masked_saves_nothing():
    ledger = ffn_step("random:0.9")
    assert ledger["total"] > ledger["dense_total"]  # the mask is pure overhead
