"""Proof that the gate works: real faults injected into a small, real cell (the CNN on tiny
learnable data) are caught on the right metric, and the unchanged cell passes.

The baseline comes from a clean run of the same cell through ``update_baselines`` (one run: the
tolerances are the rule's floors). Each fault is a monkeypatch of the code under test."""

import time
from dataclasses import replace

import pytest
import torch

from sparsebench import train
from sparsebench.budgets import BUDGETS, Training
from sparsebench.cell import Cell, cells
from sparsebench.gate import check_one, update_baselines
from sparsebench.grid import run_one
from sparsebench.representations import csr, masked

# enough steps to learn the tiny data; enough interleaved timing steps for a stable ratio
BUDGET = replace(BUDGETS["smoke"], training={"cnn": Training(steps=12, batch_size=32, lr=3e-3, train_size=256,
                                                             test_size=64, eval_batch_size=64)}, timing_steps=11)
CELLS = cells(["cnn"], ["random:0.5", "random:0.5@csr"])


@pytest.fixture(scope="module")
def data_and_baselines(tmp_path_factory, tiny_data_dir):
    root = tmp_path_factory.mktemp("gate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEBENCH_CACHE_DIR", str(root / "cache"))
        # a first, discarded run warms the process (kernel load, thread pool, allocator), so the
        # baseline's time ratios are those of a warm process, as in the gated runs below
        for out in ("warm-up", "clean"):
            for cell in CELLS:
                run_one(cell, BUDGET, root / out, data_dir=tiny_data_dir, progress=False)
    update_baselines(root / "clean", root / "baselines", "smoke", CELLS)
    return tiny_data_dir, root


def gate(data_and_baselines, scheme):
    """Run the cell as the code now stands and return the names of the metrics that failed."""
    data_dir, root = data_and_baselines
    result = run_one(Cell.parse("cnn", scheme), BUDGET, data_dir=data_dir, progress=False)
    failures, note = check_one(result, root / "baselines", "smoke")
    assert note is None  # the baselines are this machine's own class: every metric is gated
    for f in failures:  # one readable line each
        assert "\n" not in str(f) and f.metric in str(f) and "cnn" in str(f)
    return {f.metric for f in failures}, result, baseline_of(data_and_baselines, result.slug)


def baseline_of(data_and_baselines, slug):
    from sparsebench.gate import baseline_path, known_classes, load_baseline

    root = data_and_baselines[1] / "baselines"
    (machine_class,) = known_classes(root, "smoke")
    return load_baseline(baseline_path(root, "smoke", machine_class, "cnn", slug))


@pytest.fixture
def cache(data_and_baselines, monkeypatch):
    monkeypatch.setenv("SPARSEBENCH_CACHE_DIR", str(data_and_baselines[1] / "cache"))


def test_clean_baseline_learned(data_and_baselines):
    baseline = baseline_of(data_and_baselines, "random-0.5-masked")
    assert baseline["metrics"]["accuracy"]["value"] > 0.5  # 10 classes: far above chance, so a drop can show


def test_unchanged_cell_passes(data_and_baselines, cache):
    failed, _, _ = gate(data_and_baselines, "random:0.5")
    assert failed == set()


def test_mask_that_stops_holding_fails_realised_sparsity(data_and_baselines, cache, monkeypatch):
    # the fault: the masked representation forgets to apply its mask, so pruned weights train and drift
    monkeypatch.setattr(masked.MaskedWeight, "effective_weight", lambda self: self.weight)
    failed, doc, _ = gate(data_and_baselines, "random:0.5")
    assert "realised_sparsity" in failed
    assert doc.realised_sparsity < 0.1


def test_representation_made_slower_fails_time_ratio(data_and_baselines, cache, monkeypatch):
    # the fault: the csr representation makes every training step of its model take 1.5x as long.
    # Injected per step, not per csr product: with sparsebench's kernels the products are a minor
    # part of a smoke-size step, so a 1.5x slower product moved the step by less than the noise
    # floor and the test was flaky; the gate judges the step.
    original = train.train_step

    def slower(model, *args):
        start = time.perf_counter()
        loss = original(model, *args)
        if any(isinstance(m, csr.CsrWeight) for m in model.modules()):
            time.sleep(0.5 * (time.perf_counter() - start))
        return loss

    monkeypatch.setattr(train, "train_step", slower)
    failed, doc, baseline = gate(data_and_baselines, "random:0.5@csr")
    assert "time_ratio_vs_dense" in failed
    assert not failed & {"accuracy", "model_size_bytes", "realised_sparsity"}
    assert doc.accuracy == baseline["metrics"]["accuracy"]["value"]  # slower, not different


def test_peak_memory_doubled_fails_peak_memory(data_and_baselines, cache, monkeypatch):
    # the fault: the training pass holds as much again as its whole clean peak
    clean_peak = baseline_of(data_and_baselines, "random-0.5-masked")["metrics"]["peak_memory_bytes"]["value"]
    original = train.CellRun.memory_pass

    def heavier(self):
        ballast = torch.ones(int(clean_peak) // 4)  # float32: clean peak bytes, touched so it is real
        original(self)
        del ballast

    monkeypatch.setattr(train.CellRun, "memory_pass", heavier)
    failed, doc, _ = gate(data_and_baselines, "random:0.5")
    assert "peak_memory_bytes" in failed
    assert not failed & {"accuracy", "model_size_bytes", "realised_sparsity"}


def test_accuracy_dropped_fails_accuracy(data_and_baselines, cache, monkeypatch):
    # the fault: the optimizer no longer moves the weights (say, a learning rate lost on the way)
    # (fused, as make_optimizer's: an unfused Adam's temporaries would move peak memory too)
    monkeypatch.setattr(train, "make_optimizer",
                        lambda model, training: torch.optim.Adam(model.parameters(), lr=0.0, fused=True))
    failed, doc, _ = gate(data_and_baselines, "random:0.5")
    assert "accuracy" in failed
    assert not failed & {"peak_memory_bytes", "model_size_bytes", "realised_sparsity"}
