"""Training-time data augmentation: a registry from a name (``Training.augment``) to a function of a
batch in model-input form and a seeded generator. Only the training loop augments; evaluation, the
interleaved timing steps and the memory pass see the stored data as it is (augmentation costs the
same for dense and sparse, so leaving it out of the timed steps changes no ratio)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def horizontal_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image (N, C, H, W) mirrored left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None] = {
    "none": None,
    "hflip": horizontal_flip,
}


def get_augmentation(name: str):
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]
