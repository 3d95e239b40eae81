"""The architecture registry: everything the harness needs to know about an architecture, in one entry.

An entry names its dataset loader, its model builder, how a stored batch becomes model input, and
what each budget gives it (training settings and model size). Adding an architecture is one entry
in ``ARCHS``; nothing else in the harness tests an architecture's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from typing import Any

import torch
from torch import nn

from . import data as datasets
from .budgets import Budget, Training
from .models import CNN, REFERENCE_TRANSFORMER, Transformer, TransformerSize

CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
CIFAR_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


@dataclass
class LoadedData:
    """An architecture's data in memory on the device; ``info`` is what the result records about it."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    info: dict

    def to(self, device: torch.device) -> LoadedData:
        return LoadedData(self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                          self.y_test.to(device), self.info)


@dataclass(frozen=True)
class Arch:
    name: str
    load: Callable[[Training, Any, Any], LoadedData]  # (training, model size, data_dir) -> LoadedData
    build: Callable[[Any, LoadedData], nn.Module]  # (model size, loaded data) -> a fresh model
    inputs: Callable[[torch.Tensor], torch.Tensor]  # a stored batch -> model input
    training: Mapping[str, Training]  # budget name -> training settings
    size: Mapping[str, Any] = field(default_factory=dict)  # budget name -> model size (missing: reference)
    reference_size: Any = None
    data: str = ""  # the dataset's name in the data directory (checked before any cell trains)

    def training_for(self, budget: Budget) -> Training:
        """The budget's own override for this arch (custom budgets), else the registry's entry."""
        if self.name in budget.training:
            return budget.training[self.name]
        if budget.name not in self.training:
            raise ValueError(f"architecture {self.name!r} has no training settings for budget {budget.name!r}")
        return self.training[budget.name]

    def size_for(self, budget: Budget) -> Any:
        return self.size.get(budget.name, self.reference_size)

    def describe(self, model: nn.Module, size: Any) -> dict:
        """What the result records about the model: its size settings and parameter count."""
        described = asdict(size) if is_dataclass(size) else dict(size or {})
        return described | {"parameters": sum(p.numel() for p in model.parameters())}


# --- cnn on CIFAR-10 ----------------------------------------------------------------------------------------

def _cifar_inputs(x: torch.Tensor) -> torch.Tensor:
    # uint8 images -> normalised floats, per batch: the dataset stays a quarter of the float size
    return (x.float().div_(255) - CIFAR_MEAN.to(x.device)) / CIFAR_STD.to(x.device)


def _load_cifar(training: Training, size, data_dir) -> LoadedData:
    d = datasets.load_cifar10(data_dir, train_size=training.train_size, test_size=training.test_size)
    return LoadedData(d.x_train, d.y_train, d.x_test, d.y_test,
                      {"name": d.name, "train_size": len(d.y_train), "test_size": len(d.y_test)})


CNN_SIZE = {"conv_filters": [64, 128, 256], "fc": [4096, 512, 10]}  # the reference sizes, in every budget

# `converge`: epochs where dense's learning curve has flattened (docs/design.md, "The converge budget")
CNN_CONVERGE_EPOCHS = 4
TRANSFORMER_CONVERGE_EPOCHS = 2
CONVERGE_CURVE_POINTS = 12
# the ci transformer's width and depth with four times its context. At 256 tokens it flattened at 0.84
# after two epochs: much of a review (about 300 tokens, many longer) went unread. 512 tokens read nearly
# every review whole; with them and a peak lr of 2e-3 it flattens at 0.865 after 1.5 epochs.
CONVERGE_TRANSFORMER = TransformerSize(layers=2, heads=4, d_model=64, d_ff=256, seq_len=512, vocab_size=8192)


# --- transformer on IMDB ------------------------------------------------------------------------------------

def _load_imdb(training: Training, size: TransformerSize, data_dir) -> LoadedData:
    d = datasets.load_imdb(data_dir, vocab_size=size.vocab_size, seq_len=size.seq_len,
                           train_size=training.train_size, test_size=training.test_size)
    return LoadedData(d.x_train, d.y_train, d.x_test, d.y_test,
                      {"name": d.name, "vocab_size": d.vocab_size, "seq_len": d.seq_len,
                       "test_subset": "balanced: the first half of test_size rows of each label, in file order",
                       "train_size": len(d.y_train), "test_size": len(d.y_test)})


def _build_transformer(size: TransformerSize, loaded: LoadedData) -> nn.Module:
    # the vocabulary the tokenizer actually learned (fewer ids on small data)
    return Transformer(replace(size, vocab_size=loaded.info.get("vocab_size", size.vocab_size)))


ARCHS: dict[str, Arch] = {
    "cnn": Arch(
        "cnn", load=_load_cifar, build=lambda size, loaded: CNN(), inputs=_cifar_inputs, reference_size=CNN_SIZE,
        data="cifar10",
        training={
            "smoke": Training(steps=3, batch_size=16, train_size=256, test_size=64, eval_batch_size=64),
            "ci": Training(steps=600, batch_size=32, lr=2e-3, schedule="onecycle", eval_batch_size=100),
            "full": Training(epochs=50, batch_size=64, lr=1e-3),
            "reference": Training(steps=4, batch_size=64, lr=1e-3, train_size=2048, test_size=1000,
                                  eval_batch_size=250),
            # the seed's Adam at batch 64 and peak lr 1e-3, with two changes: random horizontal flips (without
            # them the CNN overfits before 0.76) and a one-cycle schedule (at a constant 1e-3 the test
            # accuracy wanders by a point from epoch to epoch once it has flattened, from epoch 4)
            "converge": Training(epochs=CNN_CONVERGE_EPOCHS, batch_size=64, lr=1e-3, schedule="onecycle",
                                 augment="hflip", eval_batch_size=500, curve_points=CONVERGE_CURVE_POINTS,
                                 curve_rows=2000),
        },
    ),
    "transformer": Arch(
        "transformer", load=_load_imdb, build=_build_transformer, inputs=lambda x: x,
        reference_size=REFERENCE_TRANSFORMER, data="imdb",
        training={
            "smoke": Training(steps=3, batch_size=8, train_size=256, test_size=64, eval_batch_size=64),
            "ci": Training(steps=400, batch_size=32, lr=2e-3, schedule="onecycle", test_size=2000,
                           eval_batch_size=250),
            "full": Training(epochs=50, batch_size=64, lr=1e-3),
            # the reference model (6 x d512, ff 2048, 256 tokens); batch 16 x 256 = 4096 tokens a step
            "reference": Training(steps=4, batch_size=16, lr=1e-3, train_size=2048, test_size=512,
                                  eval_batch_size=64),
            # the seed's Adam at batch 64 with a one-cycle schedule (as the CNN's) and a peak lr of 2e-3, the
            # ci budget's: at 1e-3 it was still underfitting (train loss 0.34) when it flattened at 0.84.
            # The whole test split (25,000 reviews)
            "converge": Training(epochs=TRANSFORMER_CONVERGE_EPOCHS, batch_size=64, lr=2e-3, schedule="onecycle",
                                 eval_batch_size=500, curve_points=CONVERGE_CURVE_POINTS, curve_rows=2000),
        },
        size={
            "smoke": TransformerSize(layers=1, heads=2, d_model=32, d_ff=64, seq_len=32, vocab_size=512),
            "ci": TransformerSize(layers=2, heads=4, d_model=64, d_ff=256, seq_len=128, vocab_size=8192),
            "converge": CONVERGE_TRANSFORMER,
        },
    ),
}


def get_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[name]
