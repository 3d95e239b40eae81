"""torch.compile of a sparsified model: the same output and gradients as eager, in one graph (the
kernels are torch.library ops with fake kernels, so dynamo traces through them without a break)."""

import pytest
import torch
from torch import nn

from sparsebench import RepresentationUnavailable, sparsify


@pytest.mark.parametrize("scheme", ["random:0.75@csr", "block:4x4:0.75@bsr_cpp", "random:0.75@masked"])
def test_compiled_model_matches_eager_in_one_graph(scheme):
    torch.manual_seed(0)
    try:
        model = sparsify(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                       nn.Linear(64, 4)), scheme)
    except RepresentationUnavailable as why:
        pytest.skip(str(why))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break is an error, not a fallback
    x = torch.randn(16, 32)
    results = []
    for run in (model, compiled):
        model.zero_grad()
        xi = x.clone().requires_grad_()
        y = run(xi)
        y.square().sum().backward()
        stored = model[2].sparse_weight.stored
        results.append((y.detach(), xi.grad, stored.grad.clone(), model[2].bias.grad.clone()))
    for eager, traced in zip(*results, strict=True):
        torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)
