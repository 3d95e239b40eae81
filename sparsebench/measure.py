"""Measurements that are easy to get wrong: peak memory in a separate untimed pass (step timing is
``timing``'s), the saved model's size, realised sparsity, and the environment."""

from __future__ import annotations

import functools
import io
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from . import allocator, machine
from .representations import SparseConv2d, SparseLinear


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def syncer(device: torch.device):
    """What brackets a timed call on ``device`` (None on the CPU), for ``timing``."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def peak_memory(training_pass: Callable[[], None], device: torch.device) -> tuple[int, str]:
    """Peak memory of ``training_pass`` (which builds its model and optimizer itself).

    CPU: memray's peak heap of everything allocated during the pass (the dataset, loaded before,
    is not counted). CUDA: ``torch.cuda.max_memory_allocated``. Never used for timing."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        training_pass()
        return torch.cuda.max_memory_allocated(device) - base, "cuda.max_memory_allocated"
    return peak_heap(training_pass), "memray.peak_heap"


def peak_heap(fn: Callable[[], object]) -> int:
    """memray's peak heap, in bytes, while ``fn()`` runs: the most of what it allocated that was live at once
    (what was allocated before it started is not counted)."""
    import memray

    with tempfile.TemporaryDirectory() as tmp:
        capture = Path(tmp) / "peak.bin"
        with memray.Tracker(capture, native_traces=False, follow_fork=False):
            fn()
        return int(memray.FileReader(capture).metadata.peak_memory)


def saved_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the model as a user would store it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def sparsity_report(model: nn.Module) -> dict:
    """Realised sparsity and kept count per weight layer and in total.

    ``kept``: positions the representation stores as kept; ``nonzero``: stored values that are
    not zero. Realised sparsity is 1 - nonzero/count, so a pruned weight that drifts off zero
    (a mask that stops holding) shows as a fall in realised sparsity."""
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, (SparseLinear, SparseConv2d)):
            sw = module.sparse_weight
            count, kept, nonzero = sw.dense_numel, int(sw.mask().sum()), int(torch.count_nonzero(sw.stored))
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            count = kept = module.weight.numel()
            nonzero = int(torch.count_nonzero(module.weight))
        else:
            continue
        layers[name] = {"count": count, "kept": kept, "nonzero": nonzero, "realised": 1 - nonzero / count}
    count = sum(v["count"] for v in layers.values())
    nonzero = sum(v["nonzero"] for v in layers.values())
    total = {"count": count, "kept": sum(v["kept"] for v in layers.values()), "nonzero": nonzero,
             "realised": 1 - nonzero / count if count else 0.0}
    return {"total": total, "layers": layers}


def _sparse_weights(model: nn.Module):
    return ((name, m.sparse_weight) for name, m in model.named_modules() if isinstance(m, (SparseLinear, SparseConv2d)))


def representations_of(model: nn.Module) -> dict[str, str]:
    """Which representation stores each pruned layer (``auto`` resolves to one per layer)."""
    return {name: w.name for name, w in _sparse_weights(model)}


def kernels_of(model: nn.Module) -> dict[str, str]:
    """Which kernel computed each pruned layer, for representations that have more than one (csr)."""
    return {name: w.kernel for name, w in _sparse_weights(model) if hasattr(w, "kernel")}


def git_commit() -> str:
    """The code version that made a result: $SPARSEBENCH_COMMIT, or git's HEAD (+ '-dirty') as it was when
    this process first asked: a long study keeps running the code it loaded while the tree moves on."""
    if os.environ.get("SPARSEBENCH_COMMIT"):
        return os.environ["SPARSEBENCH_COMMIT"]
    return _loaded_commit()


@functools.cache
def _loaded_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def kernel_variant() -> tuple[str, bool]:
    """The sparse-kernel variant that runs here, and whether it was forced ($SPARSEBENCH_CPU_ISA)."""
    from . import kernels

    return kernels.variant(), kernels.variant_forced()


def environment(device: torch.device) -> dict:
    """Where a result was measured; ``machine`` is the fingerprint whose class its time baselines belong to."""
    variant, forced = kernel_variant()
    # the CPU's identity is in the fingerprint, so a variant forced here is never the class of that
    # variant native on another CPU
    fp, machine_class = machine.this_machine(variant, device)
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "threads": fp["threads"],
        "cpu": machine.cpu_name(),
        "gpu": fp["gpu"],
        "commit": git_commit(),
        "platform": platform.platform(),
        "kernel_variant": variant,
        "kernel_variant_forced": forced,
        "allocator": allocator.state(),
        "machine": fp,
        "machine_class": machine_class,
    }
