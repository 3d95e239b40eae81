"""The conv path choice: measured once per layer and input shape, the fastest kept, cached in memory
and on disk for the machine class, forced where asked, never measured under tracing."""

import json

import pytest
import torch
from torch import nn

from sparsebench import kernels, sparsify
from sparsebench.representations import conv_paths

if not kernels.available():
    pytest.skip(f"sparse kernels unavailable: {kernels.unavailable_reason()}", allow_module_level=True)


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(conv_paths, "_memory", {})
    return tmp_path


def sparse_conv(scheme="random:0.9@csr"):
    torch.manual_seed(0)
    # the first and last layers stay dense (sparsify's default): the middle one is sparse
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 4, 1))
    sparsify(model, scheme)
    return model


@pytest.mark.parametrize("fastest", conv_paths.PATHS)
def test_the_fastest_measured_path_is_chosen_and_cached(fresh, monkeypatch, fastest):
    timed = []

    def fake_time(weight, path, shape, stride, padding, dilation, training):
        timed.append((path, training))
        return 1.0 if path == fastest else 2.0

    monkeypatch.setattr(conv_paths, "_time_ms", fake_time)
    model = sparse_conv()
    x = torch.randn(2, 3, 12, 12)
    model(x).sum().backward()
    assert sorted(timed) == sorted((p, True) for p in conv_paths.PATHS)  # each path once, for training
    model(x).sum().backward()
    assert len(timed) == 3  # the second step reuses the choice
    cache = json.loads((fresh / "conv-paths.json").read_text())
    (decision,) = cache.values()
    assert decision["chosen"] == fastest and set(decision["times_ms"]) == set(conv_paths.PATHS)
    monkeypatch.setattr(conv_paths, "_memory", {})
    model(x).sum().backward()
    assert len(timed) == 3  # a new process (memory cleared) reads the file
    with torch.no_grad():
        model(x)
    assert timed[3:] == [(p, False) for p in conv_paths.PATHS]  # inference is its own choice


def test_a_new_input_shape_is_measured_again(fresh, monkeypatch):
    timed = []
    monkeypatch.setattr(conv_paths, "_time_ms", lambda w, path, shape, *a: timed.append(shape) or 1.0)
    model = sparse_conv()
    model(torch.randn(2, 3, 12, 12)).sum().backward()
    model(torch.randn(5, 3, 12, 12)).sum().backward()
    assert {s[0] for s in timed} == {2, 5}


def test_a_choice_made_with_other_kernels_is_measured_again(fresh, monkeypatch):
    timed = []
    monkeypatch.setattr(conv_paths, "_time_ms", lambda w, path, shape, *a: timed.append(path) or 1.0)
    model, x = sparse_conv(), torch.randn(2, 3, 12, 12)
    model(x).sum().backward()
    monkeypatch.setattr(conv_paths, "_memory", {})
    monkeypatch.setattr(kernels, "build_key", lambda: "another-build")  # the kernel sources changed
    model(x).sum().backward()
    assert len(timed) == 2 * len(conv_paths.PATHS)
    assert len(json.loads((fresh / "conv-paths.json").read_text())) == 2


def test_forced_path_skips_measurement_and_rejects_unknown(fresh, monkeypatch):
    monkeypatch.setattr(conv_paths, "_time_ms", lambda *a: pytest.fail("measured under forced()"))
    model = sparse_conv("block:4x4:0.5@bsr_cpp")
    for path in conv_paths.PATHS:
        with conv_paths.forced(path):
            model(torch.randn(2, 3, 12, 12)).sum().backward()
    with pytest.raises(ValueError, match="conv path must be one of batch, width, im2col"):
        with conv_paths.forced("fft"):
            pass


def test_real_measurement_picks_a_path_that_computes_the_same(fresh):
    model = sparse_conv()
    x = torch.randn(3, 3, 20, 20)
    y = model(x)
    (decision,) = json.loads((fresh / "conv-paths.json").read_text()).values()
    assert decision["chosen"] in conv_paths.PATHS and all(t > 0 for t in decision["times_ms"].values())
    for path in conv_paths.PATHS:
        with conv_paths.forced(path):
            torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)


def test_a_corrupt_cache_is_measured_again(fresh, monkeypatch):
    (fresh / "conv-paths.json").write_text("{not json")
    model = sparse_conv()
    model(torch.randn(2, 3, 12, 12))
    assert json.loads((fresh / "conv-paths.json").read_text())  # rewritten, valid
