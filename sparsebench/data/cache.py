"""The decoded datasets' caches: one file of tensors per dataset and settings, keyed by the source files.

The key changes when a source file's path, size or modification time changes (or ``CACHE_VERSION``), so a changed
file is decoded again. Every entry is checked when it is loaded; a corrupt one is named in one line on stderr,
discarded and rebuilt. Builders of the same dataset take a lock, so parallel workers wait for one build.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ..atomic import locked, write_atomic
from ..machine import cache_dir as machine_cache_dir
from .locate import HUB_NAMES, N_CLASSES, SPLITS

CACHE_VERSION = 1  # bump when the cached tensors' format or the tokenizer recipe changes


def key(*parts: object) -> str:
    return hashlib.sha256(repr((CACHE_VERSION, *parts)).encode()).hexdigest()[:16]


def source_key(name: str, files: dict[str, Path] | None) -> str:
    """A key that changes when the dataset's source files change (the hub dataset: its name)."""
    if files is None:
        return key("hub", HUB_NAMES[name])
    return key(*((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files.values()))


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir``, else the machine's cache directory; created if needed."""
    root = Path(cache_dir or machine_cache_dir())
    root.mkdir(parents=True, exist_ok=True)
    return root


def cached(path: Path, name: str, build: Callable[[], dict]) -> dict:
    """The tensors cached in ``path``; when there are none (or only a corrupt entry), ``build()``'s, saved there.

    The lock (``<name>.lock`` beside ``path``) makes parallel workers (pytest-xdist) wait for one of them to build
    the cache instead of all building it."""
    with locked(path.parent / f"{name}.lock"):
        tensors = _load(path, name)
        if tensors is None:
            tensors = build()
            write_atomic(path, lambda tmp: torch.save(tensors, tmp))
    return tensors


def _load(path: Path, name: str) -> dict | None:
    """The cached tensors in ``path``, or None when there are none. A corrupt entry (truncated, garbage, wrong
    contents) is named in one line on stderr and discarded, so the caller rebuilds it."""
    if not path.exists():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's warnings about a garbage pickle say nothing useful here
            t = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001  (whatever a broken file raises, the fix is the same)
        reason = f"torch.load failed: {type(e).__name__}"  # its text suggests weights_only=False: never for a cache
    else:
        try:
            _check(t, name)
            return t
        except ValueError as e:
            reason = str(e)
    print(f"sparsebench: cache {path} is corrupt ({reason}); discarding it and rebuilding", file=sys.stderr)
    path.unlink(missing_ok=True)
    return None


def _check(t, name: str) -> None:
    if not isinstance(t, dict):
        raise ValueError(f"expected a dict of tensors, got {type(t).__name__}")
    dims = 4 if name == "cifar10" else 2
    for s in SPLITS:
        x, y = t.get(f"x_{s}"), t.get(f"y_{s}")
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            raise ValueError(f"x_{s} or y_{s} missing")
        if x.dim() != dims or y.dim() != 1 or len(x) != len(y) or y.dtype != torch.int64:
            raise ValueError(f"x_{s} {tuple(x.shape)} and y_{s} {tuple(y.shape)} do not fit together")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= N_CLASSES[name]):
            raise ValueError(f"y_{s} holds labels outside 0..{N_CLASSES[name] - 1}")
    if name == "imdb" and not isinstance(t.get("vocab_size"), torch.Tensor):
        raise ValueError("vocab_size missing")


def take(x: torch.Tensor, n: int | None, what: str) -> torch.Tensor:
    """The first n rows of a cached split (a copy, so the rest can be freed); all rows when n is None."""
    if n is None:
        return x
    if not 0 < n <= len(x):
        raise ValueError(f"{what} must be between 1 and {len(x)}, got {n}")
    return x[:n].clone()
