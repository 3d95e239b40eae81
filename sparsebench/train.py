"""One cell of the grid, end to end: data, model, sparsify, the fixed-budget training loop,
evaluation, and every measurement of SPEC §2, returned as the result document."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import data as datasets
from .budgets import Budget, Training
from .ledger import memory_ledger
from .measure import (
    environment,
    interleaved_step_times,
    kernels_of,
    peak_memory,
    representations_of,
    saved_size,
    sparsity_report,
    sync,
    time_ratio,
    timed,
)
from .models import TransformerSize, build_model, model_sizes
from .results import SCHEMA_VERSION
from .schemes import Scheme, parse_scheme
from .sparsify import sparsify

CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
CIFAR_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


@dataclass
class Task:
    """An architecture's data, in memory on the device, and how a batch becomes model input."""

    arch: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    info: dict

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch == "cnn":  # uint8 images -> normalised floats, per batch (cheap, saves 600 MB)
            return (x.float().div_(255) - CIFAR_MEAN.to(x.device)) / CIFAR_STD.to(x.device)
        return x


def load_task(arch: str, budget: Budget, device: torch.device, data_dir=None) -> Task:
    training = budget.training(arch)
    if arch == "cnn":
        d = datasets.load_cifar10(data_dir, train_size=training.train_size, test_size=training.test_size)
        info = {"name": d.name}
    elif arch == "transformer":
        size = budget.transformer_size
        d = datasets.load_imdb(data_dir, vocab_size=size.vocab_size, seq_len=size.seq_len,
                               train_size=training.train_size, test_size=training.test_size)
        info = {"name": d.name, "vocab_size": d.vocab_size, "seq_len": d.seq_len,
                "test_subset": "balanced: the first half of test_size rows of each label, in file order"}
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose one of cnn, transformer")
    info |= {"train_size": len(d.y_train), "test_size": len(d.y_test)}
    return Task(arch, d.x_train.to(device), d.y_train.to(device), d.x_test.to(device), d.y_test.to(device), info)


def transformer_size(budget: Budget, task: Task) -> TransformerSize:
    """The budget's transformer, with the vocabulary the tokenizer actually learned (fewer ids on small data)."""
    return replace(budget.transformer_size, vocab_size=task.info.get("vocab_size", budget.transformer_size.vocab_size))


def make_model(arch: str, scheme: Scheme, budget: Budget, seed: int, device: torch.device, task: Task) -> nn.Module:
    """A fresh model: same seed -> same initial weights and same masks."""
    torch.manual_seed(seed)
    model = build_model(arch, transformer_size(budget, task)).to(device)
    example = task.inputs(task.x_train[:budget.training(arch).batch_size])  # lets `auto` time the real shapes
    return sparsify(model, scheme, seed=seed, example_inputs=example)


def make_optimizer(model: nn.Module, training: Training) -> torch.optim.Optimizer:
    # fused: one pass over each parameter instead of a dozen elementwise kernels; on this CPU the
    # unfused Adam step of the CNN's 4096 x 512 layer took 7.5 ms, fused 0.8 ms
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


def train_step(model, optimizer, task: Task, idx: torch.Tensor) -> torch.Tensor:
    idx = idx.to(task.x_train.device)
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(task.inputs(task.x_train[idx])), task.y_train[idx])
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate(model, task: Task, batch_size: int) -> tuple[float, float]:
    """Top-1 accuracy on the test set, and the wall time of predicting it."""
    model.eval()
    device = task.x_test.device
    correct = torch.zeros((), dtype=torch.int64, device=device)

    def predict_all():
        nonlocal correct
        for i in range(0, len(task.y_test), batch_size):
            logits = model(task.inputs(task.x_test[i:i + batch_size]))
            correct += (logits.argmax(1) == task.y_test[i:i + batch_size]).sum()

    seconds = timed(predict_all, device)
    model.train()
    return int(correct) / len(task.y_test), seconds


def interleaved_times(arch, scheme, budget, seed, dev, task) -> tuple[list[float], list[float]]:
    """Step times of a fresh dense and a fresh scheme model on the same batch, interleaved in this process."""
    training = budget.training(arch)
    dense = make_model(arch, parse_scheme("dense"), budget, seed, dev, task)
    sparse = make_model(arch, scheme, budget, seed, dev, task)
    dense_opt, sparse_opt = make_optimizer(dense, training), make_optimizer(sparse, training)
    idx = Batches(len(task.y_train), training.batch_size, seed + 1).next()
    return interleaved_step_times(lambda: train_step(dense, dense_opt, task, idx),
                                  lambda: train_step(sparse, sparse_opt, task, idx), budget.timing_steps, dev)


class CellRun:
    """One cell in three phases, so a benchmark can time the training alone:
    ``fresh()`` (a new seeded model, optimizer and batch order; untimed), ``train()`` (the fixed-budget
    loop, timed), ``measure()`` (evaluation and every other measurement; returns the document)."""

    def __init__(self, arch: str, scheme: str | Scheme, budget: Budget, seed: int = 0, data_dir=None,
                 device: str | None = None, progress: bool = True):
        self.arch, self.budget, self.seed, self.progress = arch, budget, seed, progress
        self.scheme = parse_scheme(scheme) if isinstance(scheme, str) else scheme
        self.device = torch.device(device or ("cuda" if budget.device == "cuda" and torch.cuda.is_available()
                                              else "cpu"))
        self.training = budget.training(arch)
        self.task = load_task(arch, budget, self.device, data_dir)
        self.steps = self.training.total_steps(len(self.task.y_train))
        self.model = None

    def new_model(self, scheme: Scheme | None = None) -> nn.Module:
        return make_model(self.arch, scheme or self.scheme, self.budget, self.seed, self.device, self.task)

    def fresh(self) -> None:
        self.model = self.new_model()
        self.optimizer = make_optimizer(self.model, self.training)
        self.schedule = make_schedule(self.optimizer, self.training, None if self.budget.seconds else self.steps)
        self.batches = Batches(len(self.task.y_train), self.training.batch_size, self.seed)

    def train(self) -> None:
        if self.model is None:
            raise RuntimeError("call fresh() before train(): every training run starts from a fresh seeded model")
        model, optimizer, task, budget = self.model, self.optimizer, self.task, self.budget
        losses = []
        bar = tqdm(total=None if budget.seconds else self.steps, desc=f"{self.arch} {self.scheme}", unit="step",
                   disable=not self.progress, leave=False, dynamic_ncols=True)
        sync(self.device)
        start = time.perf_counter()
        while (time.perf_counter() - start < budget.seconds) if budget.seconds else len(losses) < self.steps:
            losses.append(train_step(model, optimizer, task, self.batches.next()))
            if self.schedule is not None:
                self.schedule.step()
            if len(losses) % 10 == 0:
                bar.set_postfix(loss=f"{float(losses[-1]):.3f}", refresh=False)
            bar.update()
        sync(self.device)
        self.train_time = time.perf_counter() - start
        bar.close()
        self.losses = torch.stack(losses).float().cpu()
        self.trained, self.model = (self.model, self.optimizer), None  # never train these weights again
        if not torch.isfinite(self.losses).all():
            raise FloatingPointError(f"{self.arch} {self.scheme}: training loss became non-finite "
                                     f"at step {int((~torch.isfinite(self.losses)).nonzero()[0])}")

    def memory_pass(self) -> None:
        """A short training pass that allocates its own model and optimizer (for the peak-memory tracker)."""
        model = self.new_model()
        optimizer = make_optimizer(model, self.training)
        batches = Batches(len(self.task.y_train), self.training.batch_size, self.seed)
        for _ in range(self.budget.memory_steps):
            train_step(model, optimizer, self.task, batches.next())

    def measure(self) -> dict:
        arch, scheme, budget, task, training = self.arch, self.scheme, self.budget, self.task, self.training
        model, optimizer = self.trained
        accuracy, inference_time = evaluate(model, task, training.eval_batch_size)
        ledger = memory_ledger(model, optimizer)
        sparsity = sparsity_report(model)
        representations = representations_of(model)
        layer_kernels = kernels_of(model)
        model_size = saved_size(model)
        sizes = model_sizes(arch, model, transformer_size(budget, task))
        dense_model_size = saved_size(self.new_model(parse_scheme("dense")))
        del self.trained, model, optimizer
        dense_times, scheme_times = interleaved_times(arch, scheme, budget, self.seed, self.device, task)
        peak, peak_method = peak_memory(self.memory_pass, self.device)
        steps, losses = len(self.losses), self.losses
        return {
            "schema_version": SCHEMA_VERSION,
            "status": "ok",
            "arch": arch,
            "scheme": str(scheme),
            "slug": scheme.slug,
            "pattern": scheme.pattern,
            "representation": scheme.representation,
            "target_sparsity": scheme.target_sparsity,
            "budget": budget.name,
            "budget_settings": budget.settings() | {"arch_steps": self.steps},
            "seed": self.seed,
            "dataset": task.info,
            "model": sizes,
            "accuracy": accuracy,
            "final_loss": float(losses[-20:].mean()),  # mean of the last 20 steps: one batch is noisy
            "train_time_s": self.train_time,
            "steps": steps,
            "samples": steps * self.batches.batch_size,
            "step_time_s": self.train_time / steps,
            "inference_time_s": inference_time,
            "inference_samples_per_s": len(task.y_test) / inference_time,
            "peak_memory_bytes": peak,
            "peak_memory_method": peak_method,
            "ledger": ledger,
            "model_size_bytes": model_size,
            "dense_model_size_bytes": dense_model_size,
            "sparsity": sparsity,
            "realised_sparsity": sparsity["total"]["realised"],
            "representations": representations,
            "kernels": layer_kernels,
            "time_ratio_vs_dense": time_ratio(dense_times, scheme_times),
            "step_times_s": {"dense": dense_times, "scheme": scheme_times,
                             "dense_median": statistics.median(dense_times),
                             "scheme_median": statistics.median(scheme_times)},
            "env": environment(self.device),
        }


def run_cell(arch: str, scheme: str | Scheme, budget: Budget, seed: int = 0, data_dir=None,
             device: str | None = None, progress: bool = True) -> dict:
    """Train one cell under ``budget`` and measure it; returns the result document (SPEC §2)."""
    cell = CellRun(arch, scheme, budget, seed, data_dir, device, progress)
    cell.fresh()
    cell.train()
    return cell.measure()
