"""CIFAR-10 as uint8 image tensors, decoded from the PNGs once and cached."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass

import numpy as np
import torch

from .cache import cache_root, cached, source_key, take
from .locate import labels, parquet_files, read_splits, source


@dataclass(frozen=True)
class ImageData:
    """CIFAR-10 as uint8 images (N, 3, 32, 32) and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str = "cifar10"


def _decode_images(table) -> np.ndarray:
    """PNG bytes -> uint8 (N, 32, 32, 3). A plain PIL loop into one array beats datasets' numpy formatting."""
    from PIL import Image

    pngs = table.column("img").combine_chunks().field("bytes").to_pylist()
    out = np.empty((len(pngs), 32, 32, 3), dtype=np.uint8)
    for i, png in enumerate(pngs):
        img = Image.open(io.BytesIO(png))
        if img.mode != "RGB":
            img = img.convert("RGB")
        if img.size != (32, 32):
            raise ValueError(f"CIFAR-10 image {i} is {img.size[0]}x{img.size[1]}, expected 32x32")
        out[i] = np.asarray(img)
    return out


def load_cifar10(data_dir=None, cache_dir=None, train_size: int | None = None,
                 test_size: int | None = None) -> ImageData:
    """CIFAR-10 as uint8 tensors; the first train_size / test_size rows when given."""
    files = parquet_files("cifar10", data_dir)
    cache_dir = cache_root(cache_dir)
    path = cache_dir / f"cifar10-{source_key('cifar10', files)}.pt"

    def build() -> dict:
        with read_splits("cifar10", files, cache_dir) as tables:
            n = sum(t.num_rows for t in tables.values())
            print(f"sparsebench: decoding CIFAR-10 ({n:,} images, once; cached in {path})", file=sys.stderr)
            tensors = {}
            for s, t in tables.items():
                tensors[f"y_{s}"] = torch.from_numpy(labels(t, "cifar10", source("cifar10", files, s)))
                tensors[f"x_{s}"] = torch.from_numpy(_decode_images(t)).permute(0, 3, 1, 2).contiguous()
        return tensors

    t = cached(path, "cifar10", build)
    return ImageData(take(t["x_train"], train_size, "train_size"), take(t["y_train"], train_size, "train_size"),
                     take(t["x_test"], test_size, "test_size"), take(t["y_test"], test_size, "test_size"))
