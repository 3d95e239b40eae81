"""One cell of the grid, end to end: data, model, sparsify, the fixed-budget training loop,
evaluation, and every measurement a cell records (docs/design.md), returned as a ``Result``."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import allocator, timing
from .archs import LoadedData, get_arch
from .augment import get_augmentation
from .budgets import Budget, Training
from .cell import Cell
from .curves import CurveRecorder, slice_rows
from .ledger import memory_ledger
from .measure import (
    environment,
    kernels_of,
    peak_memory,
    representations_of,
    saved_size,
    sparsity_report,
    sync,
    syncer,
)
from .results import SCHEMA_VERSION, Result
from .schemes import Scheme, parse_scheme
from .settings import RunSettings
from .sparsify import dense_layers, sparsify

DENSE = parse_scheme("dense")


def make_optimizer(model: nn.Module, training: Training) -> torch.optim.Optimizer:
    # fused: one pass over each parameter instead of a dozen elementwise kernels per step
    return torch.optim.Adam(model.parameters(), lr=training.lr, weight_decay=training.weight_decay, fused=True)


def make_schedule(optimizer, training: Training, steps: int | None):
    """The learning-rate schedule, or None. A wall-clock run does not know its step count, so it
    trains at the constant peak rate (recorded in its budget settings)."""
    if training.schedule == "constant" or steps is None:
        return None
    if training.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=training.lr, total_steps=steps, pct_start=0.25)
    raise ValueError(f"unknown schedule {training.schedule!r}; use 'constant' or 'onecycle'")


class Batches:
    """Seeded batches: each epoch a fresh permutation from one generator, so a run is reproducible."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, min(batch_size, n)
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(n, generator=self.gen), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


def train_step(model, optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimizer step on a batch already in model-input form."""
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


@dataclass
class Fresh:
    """A new seeded model, its optimizer, schedule and batch order, ready to train."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: object
    batches: Batches


@dataclass
class Trained:
    """What training left: the trained model and optimizer, the losses and the loop's wall time."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    losses: torch.Tensor
    seconds: float
    batch_size: int
    curve: dict  # curves.CurveRecorder.document()
    mask_updates: dict | None = None  # updater.MaskUpdater.report(), for a dynamic schedule
    step_seconds: list[float] | None = None  # each training step's wall time


class CellRun:
    """One cell in three phases, so a benchmark can time the training alone:
    ``fresh()`` (a new seeded model, optimizer and batch order; untimed), ``train()`` (the fixed-budget
    loop, timed), ``measure()`` (evaluation and every other measurement; returns the Result).
    ``measure()`` reads the trained model and changes nothing, so it can be called again."""

    def __init__(self, cell: Cell, budget: Budget, settings: RunSettings | None = None):
        settings = settings or RunSettings()
        self.cell, self.budget, self.settings = cell, budget, settings
        allocator.keep_freed_memory()  # before anything is allocated: dense and sparse alike (allocator.py)
        self.arch = get_arch(cell.arch)
        self.training = self.arch.training_for(budget)
        self.size = self.arch.size_for(budget)
        self.device = torch.device(settings.device or ("cuda" if budget.device == "cuda" and torch.cuda.is_available()
                                                       else "cpu"))
        self.task: LoadedData = self.arch.load(self.training, self.size, settings.data_dir).to(self.device)
        self.steps = self.training.total_steps(len(self.task.y_train))
        if cell.scheme.schedule.dynamic and budget.seconds:
            raise ValueError(f"{cell}: schedule '{cell.scheme.schedule}' is set in fractions of the run's steps, and a "
                             "wall-clock budget (--seconds) has no step count; drop --seconds")
        self.ready: Fresh | None = None  # set by fresh(), used up by train()
        self.trained: Trained | None = None  # set by train()

    @property
    def seed(self) -> int:
        return self.settings.seed

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(self.device)
        return self.arch.inputs(self.task.x_train[idx]), self.task.y_train[idx]

    def new_model(self, scheme: Scheme | None = None) -> nn.Module:
        """A fresh model: same seed -> same initial weights and same masks."""
        torch.manual_seed(self.seed)
        model = self.arch.build(self.size, self.task).to(self.device)
        example = self.arch.inputs(self.task.x_train[:self.training.batch_size])  # lets `auto` time real shapes
        return sparsify(model, scheme or self.cell.scheme, seed=self.seed, example_inputs=example,
                        keep_dense=dense_layers(model, self.settings.keep_dense), total_steps=self.steps)

    def fresh(self) -> None:
        model = self.new_model()
        optimizer = make_optimizer(model, self.training)
        schedule = make_schedule(optimizer, self.training, None if self.budget.seconds else self.steps)
        self.ready = Fresh(model, optimizer, schedule, Batches(len(self.task.y_train), self.training.batch_size,
                                                               self.seed))

    def train(self, drive=None) -> None:
        """Train the fresh model for the budget. ``drive(loop)`` replaces the plain loop (``while not
        loop.done: loop.between(); loop.step()``), so a benchmark can time each step as one round."""
        if self.ready is None:
            raise RuntimeError("call fresh() before train(): every training run starts from a fresh seeded model")
        run, self.ready = self.ready, None  # never train these weights again
        loop = TrainingLoop(self, run)
        if drive is None:
            while not loop.done:
                loop.between()
                loop.step()
        else:
            drive(loop)
        self.trained = loop.finish()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor | None = None,
                 y: torch.Tensor | None = None) -> tuple[float, float]:
        """Top-1 accuracy on ``x, y`` (default: the test set), and the wall time of predicting it."""
        model.eval()
        x = self.task.x_test if x is None else x
        y = self.task.y_test if y is None else y
        size = self.training.eval_batch_size
        correct = torch.zeros((), dtype=torch.int64, device=self.device)

        def predict_all():
            nonlocal correct
            for i in range(0, len(y), size):
                logits = model(self.arch.inputs(x[i:i + size]))
                correct += (logits.argmax(1) == y[i:i + size]).sum()

        seconds = timing.timed(predict_all, syncer(self.device))
        model.train()
        return int(correct) / len(y), seconds

    def interleaved_times(self) -> tuple[list[float], list[float]]:
        """Step times of a fresh dense and a fresh scheme model on the same batch, interleaved in this process."""
        dense, sparse = self.new_model(DENSE), self.new_model()
        dense_opt, sparse_opt = make_optimizer(dense, self.training), make_optimizer(sparse, self.training)
        updater = getattr(sparse, "mask_updater", None)
        if updater is not None:  # the steady state: a gradual schedule's model as it ends (pruned, stored sparse)
            updater.finish_now(sparse_opt)
            updater.remove()
        x, y = self.batch(Batches(len(self.task.y_train), self.training.batch_size, self.seed + 1).next())
        return timing.interleaved(lambda: train_step(dense, dense_opt, x, y),
                                  lambda: train_step(sparse, sparse_opt, x, y), self.budget.timing_steps,
                                  syncer(self.device))

    def memory_pass(self, scheme: Scheme | None = None) -> None:
        """A short training pass of a fresh ``scheme`` model (default: the cell's) that allocates its own model
        and optimizer: what ``peak_memory`` measures. A dynamic schedule's pass holds its states and one update
        between them: steps as built, the schedule's largest update (a gradual one pruned to S and switched
        to sparse storage; a drop-and-grow one after a step with RigL's dense gradients), then steps again."""
        model = self.new_model(scheme)
        optimizer = make_optimizer(model, self.training)
        batches = Batches(len(self.task.y_train), self.training.batch_size, self.seed)
        updater = getattr(model, "mask_updater", None)
        for i in range(self.budget.memory_steps):
            if updater is not None and i == self.budget.memory_steps - 1:
                updater.capture_next()
            train_step(model, optimizer, *self.batch(batches.next()))
        if updater is None:
            return
        updater.force_update(optimizer)
        for _ in range(self.budget.memory_steps):
            train_step(model, optimizer, *self.batch(batches.next()))

    def measure(self) -> Result:
        if self.trained is None:
            raise RuntimeError("call train() before measure()")
        cell, budget, task, trained = self.cell, self.budget, self.task, self.trained
        accuracy, inference_time = self.evaluate(trained.model)
        ledger = memory_ledger(trained.model, trained.optimizer)
        sparsity = sparsity_report(trained.model)
        dense_times, scheme_times = self.interleaved_times()
        peak, peak_method = peak_memory(self.memory_pass, self.device)
        steps = len(trained.losses)
        return Result(
            schema_version=SCHEMA_VERSION, status="ok",
            arch=cell.arch, scheme=str(cell.scheme), slug=cell.scheme.slug, budget=budget.name,
            pattern=cell.scheme.pattern.name, representation=cell.scheme.representation,
            target_sparsity=cell.scheme.target_sparsity,
            budget_settings=budget.settings() | {"arch_training": asdict(self.training), "arch_steps": self.steps},
            seed=self.seed, dataset=task.info,
            model=self.arch.describe(trained.model, self.size) | ({"keep_dense": list(self.settings.keep_dense)}
                                                                 if self.settings.keep_dense else {}),
            accuracy=accuracy,
            final_loss=float(trained.losses[-20:].mean()),  # mean of the last 20 steps: one batch is noisy
            train_time_s=trained.seconds, steps=steps, samples=steps * trained.batch_size,
            step_time_s=trained.seconds / steps,
            inference_time_s=inference_time, inference_samples_per_s=len(task.y_test) / inference_time,
            peak_memory_bytes=peak, peak_memory_method=peak_method,
            ledger=ledger, ledger_bytes=ledger["total"],
            model_size_bytes=saved_size(trained.model), dense_model_size_bytes=saved_size(self.new_model(DENSE)),
            sparsity=sparsity, realised_sparsity=sparsity["total"]["realised"],
            representations=representations_of(trained.model), kernels=kernels_of(trained.model),
            time_ratio_vs_dense=timing.time_ratio(dense_times, scheme_times),
            time_ratio_interval=timing.interval_doc(dense_times, scheme_times),
            step_times_s={"dense": dense_times, "scheme": scheme_times,
                          "dense_median": statistics.median(dense_times),
                          "scheme_median": statistics.median(scheme_times)},
            curve=trained.curve, mask_updates=trained.mask_updates,
            env=environment(self.device),
        )


class TrainingLoop:
    """The fixed-budget training loop as calls a caller drives: ``step()`` (one training step: batch,
    augmentation, forward, backward, optimizer, mask update, learning-rate schedule; timed here, and by a
    benchmark as one round) and ``between()`` (untimed: the learning curve's evaluation when it is due).
    Training seconds are the steps' wall time alone."""

    def __init__(self, cell_run: CellRun, run: Fresh):
        self.cell_run, self.run = cell_run, run
        budget, training = cell_run.budget, cell_run.training
        self.seconds_budget = budget.seconds
        self.steps = None if budget.seconds else cell_run.steps  # None: a wall-clock run
        self.losses: list[torch.Tensor] = []
        self.step_seconds: list[float] = []
        self.seconds = 0.0
        self.augment = get_augmentation(training.augment)
        self.augment_gen = torch.Generator().manual_seed(cell_run.seed + 7919)  # its own stream: the batch order stays
        self.curve = CurveRecorder(training.curve_points, self.steps, budget.seconds)
        self.rows = slice_rows(len(cell_run.task.y_test), training.curve_rows).to(cell_run.device)
        self.updater = getattr(run.model, "mask_updater", None)
        self.switches_shown = 0  # layer switches already announced
        self.bar = tqdm(total=self.steps, desc=str(cell_run.cell), unit="step", disable=not cell_run.settings.progress,
                        leave=False, dynamic_ncols=True)
        self.curve.add(0, 0.0, self.slice_accuracy())

    def slice_accuracy(self) -> float:
        task = self.cell_run.task
        return self.cell_run.evaluate(self.run.model, task.x_test[self.rows], task.y_test[self.rows])[0]

    @property
    def done(self) -> bool:
        return self.seconds >= self.seconds_budget if self.steps is None else len(self.losses) >= self.steps

    def between(self) -> None:
        if len(self.losses) and self.curve.due(len(self.losses), self.seconds):
            self.curve.add(len(self.losses), self.seconds, self.slice_accuracy())
            self.bar.set_postfix(loss=f"{float(self.losses[-1]):.3f}",
                                 slice_accuracy=f"{self.curve.recorded[-1].accuracy:.3f}", refresh=False)

    def step(self) -> None:
        cell_run, run = self.cell_run, self.run
        sync(cell_run.device)
        start = time.perf_counter()
        x, y = cell_run.batch(run.batches.next())
        if self.augment is not None:
            x = self.augment(x, self.augment_gen)
        loss = train_step(run.model, run.optimizer, x, y)
        updated = self.updater is not None and self.updater.step(run.optimizer)
        if run.schedule is not None:
            run.schedule.step()
        sync(cell_run.device)
        took = time.perf_counter() - start
        self.seconds += took
        self.step_seconds.append(took)
        self.losses.append(loss)
        self.curve.saw(loss)
        if updated and cell_run.settings.progress:
            for change in self.updater.switches[self.switches_shown:]:
                tqdm.write(f"{cell_run.cell}: layer {change['layer']} stored as {change['to']} from step "
                           f"{change['step']} (sparsity {change['sparsity']:.3f})")
            self.switches_shown = len(self.updater.switches)
        if len(self.losses) % 10 == 0:
            self.bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
        self.bar.update()

    def finish(self) -> Trained:
        self.between()
        self.curve.finish(len(self.losses), self.seconds, self.slice_accuracy)
        self.bar.close()
        cell_run, run = self.cell_run, self.run
        if not self.losses:
            raise RuntimeError(f"{cell_run.cell}: the training loop ran no step")
        losses = torch.stack(self.losses).float().cpu()
        if not torch.isfinite(losses).all():
            raise FloatingPointError(f"{cell_run.cell}: training loss became non-finite "
                                     f"at step {int((~torch.isfinite(losses)).nonzero()[0])}")
        return Trained(run.model, run.optimizer, losses, self.seconds, run.batches.batch_size,
                       self.curve.document(len(self.rows)), self.updater.report() if self.updater is not None else None,
                       self.step_seconds)
