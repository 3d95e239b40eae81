"""Budgets: how much training a cell gets. Plain frozen dataclasses; a result stores its budget's
settings, so every figure can be traced to exactly what produced it.

A budget is a fixed number of optimizer steps (epochs are converted to steps), so accuracy is
reproducible from a seed. ``--seconds`` on the command line replaces the step count with a
wall-clock limit for equal-time comparisons (not reproducible, recorded as such).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from .models import REFERENCE_TRANSFORMER, TransformerSize


@dataclass(frozen=True)
class Training:
    steps: int | None = None  # fixed optimizer steps; or
    epochs: int | None = None  # whole passes over the (sub)set
    batch_size: int = 64
    lr: float = 1e-3  # the peak learning rate under "onecycle"
    schedule: str = "constant"  # or "onecycle": warm up for a quarter of the steps, then anneal
    weight_decay: float = 0.0
    train_size: int | None = None  # first N training rows (rows are pre-shuffled); None = all
    test_size: int | None = None  # evaluation rows (IMDB: balanced, half per label); None = all
    eval_batch_size: int = 500

    def total_steps(self, n_train: int) -> int:
        if self.steps is not None:
            return self.steps
        return self.epochs * math.ceil(n_train / self.batch_size)


@dataclass(frozen=True)
class Budget:
    name: str
    cnn: Training
    transformer: Training
    transformer_size: TransformerSize = field(default_factory=TransformerSize)
    timing_steps: int = 5  # interleaved dense/scheme steps for time_ratio_vs_dense
    memory_steps: int = 2  # steps of the separate, untimed memray pass
    device: str = "cpu"  # "cuda" = use CUDA when there is one
    seconds: float | None = None  # wall-clock budget instead of steps

    def training(self, arch: str) -> Training:
        return getattr(self, arch)

    def with_seconds(self, seconds: float) -> Budget:
        return replace(self, seconds=seconds)

    def settings(self) -> dict:
        return asdict(self)


BUDGETS: dict[str, Budget] = {
    # a few steps on a few hundred samples: unit tests, seconds per cell
    "smoke": Budget(
        "smoke",
        cnn=Training(steps=3, batch_size=16, train_size=256, test_size=64, eval_batch_size=64),
        transformer=Training(steps=3, batch_size=8, train_size=256, test_size=64, eval_batch_size=64),
        transformer_size=TransformerSize(layers=1, heads=2, d_model=32, d_ff=64, seq_len=32, vocab_size=512),
        timing_steps=2, memory_steps=1,
    ),
    # CI gating on 2 CPU cores: the default grid in about 15 minutes
    "ci": Budget(
        "ci",
        cnn=Training(steps=600, batch_size=32, lr=2e-3, schedule="onecycle", test_size=None, eval_batch_size=100),
        transformer=Training(steps=400, batch_size=32, lr=2e-3, schedule="onecycle", test_size=2000,
                             eval_batch_size=250),
        transformer_size=TransformerSize(layers=2, heads=4, d_model=64, d_ff=256, seq_len=128, vocab_size=8192),
        timing_steps=5, memory_steps=2,
    ),
    # the reference experiment, on a GPU
    "full": Budget(
        "full",
        cnn=Training(epochs=50, batch_size=64, lr=1e-3),
        transformer=Training(epochs=50, batch_size=64, lr=1e-3),
        transformer_size=REFERENCE_TRANSFORMER,
        timing_steps=20, memory_steps=3, device="cuda",
    ),
}


def get_budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}; choose one of {', '.join(BUDGETS)}")
    return BUDGETS[name]
