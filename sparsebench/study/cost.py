"""One cost point: a scheme against dense at one size, with no training to convergence.

In one process, on the same batch: interleaved training steps of a fresh dense model and a fresh
scheme model, each step split into forward (to the loss), backward and optimizer, ``warmup`` untimed
steps of each first (``auto`` calibrates while its model is built, before any of them). Then, the
process warmed up by those steps, peak memory of a separate untimed pass of each (memray; a pass
builds its own model and optimizer and runs ``budget.memory_steps`` steps, as the grid's does); the
memory ledger after the timed steps (optimizer state present); saved model sizes; and inference
throughput (forward passes of one evaluation batch, interleaved).

``measure_cost`` is a module-level function returning a ``CostResult``: an executor's task.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from ..budgets import get_budget
from ..cell import Cell
from ..ledger import memory_ledger
from ..measure import environment, peak_memory, representations_of, saved_size, sparsity_report, syncer
from ..representations import RepresentationUnavailable
from ..schemes import Scheme, parse_scheme
from ..settings import RunSettings
from ..timing import interval_doc, timed
from ..train import DENSE, Batches, CellRun, make_optimizer
from .cost_result import CostResult

PHASES = ("forward", "backward", "optimizer")
WARMUP = 1  # untimed steps of each model before the timed ones
INFERENCE_ROWS = 64  # rows of the evaluation batch timed for inference throughput (capped by the budget's)
INFERENCE_REPEATS = 3

_dense_peaks: dict[tuple, tuple[int, str]] = {}  # per process: dense is the same at every point of a size


def settings() -> dict:
    """The measurement's own constants (a document records them; changing one recomputes the point)."""
    return {"warmup": WARMUP, "inference_rows": INFERENCE_ROWS, "inference_repeats": INFERENCE_REPEATS,
            "phases": list(PHASES)}


def phase_times(model, optimizer, x, y, sync) -> tuple[float, float, float]:
    """Seconds of one training step's forward (to the loss), backward and optimizer step."""
    def forward():
        optimizer.zero_grad(set_to_none=True)
        return F.cross_entropy(model(x), y)

    holder = {}
    t_forward = timed(lambda: holder.setdefault("loss", forward()), sync)
    t_backward = timed(lambda: holder["loss"].backward(), sync)
    t_optimizer = timed(optimizer.step, sync)
    return t_forward, t_backward, t_optimizer


def interleaved_phases(dense, scheme, x, y, steps: int, sync=None, warmup: int = WARMUP) -> dict:
    """Per model, the per-step phase times of ``steps`` interleaved steps (dense first in each pair)."""
    runs = {"dense": dense, "scheme": scheme}
    for _ in range(warmup):
        for model, optimizer in runs.values():
            phase_times(model, optimizer, x, y, sync)
    samples = {name: [] for name in runs}
    for _ in range(steps):
        for name, (model, optimizer) in runs.items():
            samples[name].append(phase_times(model, optimizer, x, y, sync))
    return {name: summarise(times) for name, times in samples.items()}


def summarise(step_phases: list[tuple[float, ...]]) -> dict:
    """Medians per phase and of the step total, with the raw per-step totals."""
    totals = [sum(p) for p in step_phases]
    out = {phase: statistics.median(p[i] for p in step_phases) for i, phase in enumerate(PHASES)}
    return out | {"total": statistics.median(totals), "totals": totals}


def inference_rate(dense, scheme, x, sync=None, repeats: int = INFERENCE_REPEATS) -> dict:
    """Samples per second of forward passes over ``x`` (eval mode, no grad), interleaved."""
    models = {"dense": dense, "scheme": scheme}
    for m in models.values():
        m.eval()
    times = {name: [] for name in models}
    with torch.no_grad():
        for m in models.values():
            m(x)  # warm-up
        for _ in range(repeats):
            for name, m in models.items():
                times[name].append(timed(lambda m=m: m(x), sync))
    for m in models.values():
        m.train()
    return {"rows": len(x)} | {f"{name}_samples_per_s": len(x) / statistics.median(t) for name, t in times.items()}


def measure_cost(arch: str, size: str, scheme: Scheme | str, settings: RunSettings) -> CostResult:
    """Everything a cost point records (``status`` ok, or skipped with the reason): ``scheme`` against
    dense on ``arch`` at the model size and batch of the budget ``size``. Of ``settings``, its seed, data
    directory and device are used (a cost point shows no progress bar)."""
    start = time.perf_counter()
    cell = Cell.parse(arch, parse_scheme(scheme))
    seed = settings.seed
    try:
        run = CellRun(cell, get_budget(size), settings.but(progress=False))
        sync = syncer(run.device)
        dense, sparse = run.new_model(DENSE), run.new_model()
        runs = {"dense": (dense, make_optimizer(dense, run.training)),
                "scheme": (sparse, make_optimizer(sparse, run.training))}
        x, y = run.batch(Batches(len(run.task.y_train), run.training.batch_size, seed + 1).next())
        times = interleaved_phases(runs["dense"], runs["scheme"], x, y, run.budget.timing_steps, sync)
        ledger = memory_ledger(sparse, runs["scheme"][1])
        dense_ledger = memory_ledger(dense, runs["dense"][1])
        rows = min(INFERENCE_ROWS, run.training.eval_batch_size, len(run.task.y_test))
        inference = inference_rate(dense, sparse, run.arch.inputs(run.task.x_test[:rows]), sync)
        sizes = {"dense": saved_size(dense), "scheme": saved_size(sparse)}
        sparsity = sparsity_report(sparse)["total"]
        chosen = representations_of(sparse)
        described = run.arch.describe(dense, run.size)
        del dense, sparse, runs
        key = (arch, size, seed, str(settings.data_dir), str(run.device))
        if key not in _dense_peaks:  # the process is warm: both models have stepped above
            _dense_peaks[key] = peak_memory(lambda: run.memory_pass(DENSE), run.device)
        dense_peak, method = _dense_peaks[key]
        peak, _ = peak_memory(lambda: run.memory_pass(cell.scheme), run.device)
    except RepresentationUnavailable as why:
        return CostResult.skipped(str(why))
    ratio = {phase: times["scheme"][phase] / times["dense"][phase] for phase in (*PHASES, "total")}
    return CostResult(
        status="ok",
        batch_size=len(y),
        model=described,
        time_s=times, time_ratio=ratio, speedup=1 / ratio["total"],
        time_ratio_interval=interval_doc(times["dense"]["totals"], times["scheme"]["totals"]),
        peak_memory_bytes={"dense": dense_peak, "scheme": peak, "method": method},
        peak_ratio=peak / dense_peak,
        ledger=ledger, dense_ledger_total=dense_ledger["total"],
        model_size_bytes=sizes,
        inference=inference | {"ratio": inference["dense_samples_per_s"] / inference["scheme_samples_per_s"]},
        realised_sparsity=sparsity["realised"],
        representations=chosen,
        seconds=time.perf_counter() - start,
        env=environment(run.device),
    )
