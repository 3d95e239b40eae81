"""What machine this is: the CPU's identity (vendor, family/model numbers, instruction-set flags,
cache sizes), the cache directory, and the machine class that time baselines belong to.

A CPU's marketing name does not tell machines apart ("AMD EPYC" covers AVX2-only and AVX-512
parts), so the class is built from the numbers and flags the kernel reports. Library core: this
module imports nothing from the harness, and torch only inside ``this_machine``.
"""

from __future__ import annotations

import hashlib
import os
import platform
from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
CPU_CACHE_SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")
# the flags that decide which kernel variant can run (and so what "fast" means on this CPU)
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512dq",
             "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "sve", "sve2")


def cache_dir() -> Path:
    """Where sparsebench caches decoded data, tokenizers, kernel builds and ``auto`` choices:
    ``$SPARSEBENCH_CACHE_DIR``, else ``~/.cache/sparsebench``."""
    return Path(os.environ.get("SPARSEBENCH_CACHE_DIR") or Path.home() / ".cache" / "sparsebench").expanduser()


@lru_cache(maxsize=1)
def cpuinfo() -> dict:
    """The first processor's fields from /proc/cpuinfo, lower-cased keys; ``flags`` as a sorted list.
    x86 reports ``flags``, arm64 ``Features``; both become ``flags``. Empty where there is no /proc."""
    fields: dict = {}
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return {"model name": platform.processor() or platform.machine(), "flags": []}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # end of the first processor's block
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = fields.pop("flags", None) or fields.pop("features", "")
    fields["flags"] = sorted(set(flags.split()))
    return fields


def cpu_flags() -> frozenset[str]:
    return frozenset(cpuinfo()["flags"])


def cpu_name() -> str:
    info = cpuinfo()
    return info.get("model name") or info.get("cpu model") or platform.processor() or platform.machine()


def _size_bytes(text: str) -> int | None:
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
    digits = text.rstrip("KMG")
    return int(digits) * scale if digits.isdigit() else None


@lru_cache(maxsize=1)
def cache_sizes() -> dict[str, int]:
    """Per-core cache sizes in bytes by level, e.g. ``{"L1d": 49152, "L2": 2097152, "L3": ...}``."""
    sizes: dict[str, int] = {}
    for index in sorted(CPU_CACHE_SYSFS.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = _size_bytes((index / "size").read_text())
        except OSError:
            continue
        if size is None:
            continue
        name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
        sizes[name] = size
    return sizes


def cpu_identity() -> dict:
    """The CPU as time baselines must see it: vendor, family, model, stepping, ISA flags, caches."""
    info = cpuinfo()
    return {
        "arch": platform.machine(),
        "name": cpu_name(),
        "vendor": info.get("vendor_id") or info.get("cpu implementer") or "",
        "family": info.get("cpu family") or info.get("cpu architecture") or "",
        "model": info.get("model") or info.get("cpu part") or "",
        "stepping": info.get("stepping") or info.get("cpu revision") or "",
        "isa": [f for f in ISA_FLAGS if f in cpu_flags()],
        "caches": cache_sizes(),
        "cores": os.cpu_count() or 1,
    }


def fingerprint(kernel_variant: str, threads: int, torch_version: str, device: str = "cpu",
                gpu: str | None = None) -> dict:
    """Everything that decides a time ratio: CPU identity, kernel variant, threads, torch, device."""
    return {"cpu": cpu_identity(), "kernel_variant": kernel_variant, "threads": int(threads),
            "torch": torch_version, "device": device, "gpu": gpu}


def this_machine(kernel_variant: str, device=None) -> tuple[dict, str]:
    """This process's fingerprint (kernel variant, torch threads and version, device and GPU name) and its
    machine class: the one place both are computed, for result documents and for ``auto``'s cache."""
    import torch  # late: this module's CPU identity is read without torch

    device = torch.device(device or "cpu")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    fp = fingerprint(kernel_variant, torch.get_num_threads(), torch.__version__, device.type, gpu)
    return fp, machine_class(fp)


def machine_class(fp: dict) -> str:
    """A short, file-safe name for a fingerprint: readable head, hash of the whole identity.

    e.g. ``x86_64-genuineintel-6-207-avx512-t2-5f3a9c1e``. The stepping and the exact cache sizes go
    into the hash only through the ISA flags and L2 size, which are what change kernel speed."""
    cpu = fp["cpu"]
    key = "|".join(str(x) for x in (cpu["arch"], cpu["vendor"], cpu["family"], cpu["model"], ",".join(cpu["isa"]),
                                     cpu["caches"].get("L2"), fp["kernel_variant"], fp["threads"], fp["torch"],
                                     fp["device"], fp.get("gpu")))
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    vendor = "".join(ch for ch in str(cpu["vendor"]).lower() if ch.isalnum()) or "cpu"
    head = [cpu["arch"], vendor, str(cpu["family"]), str(cpu["model"]), fp["kernel_variant"], f"t{fp['threads']}"]
    if fp["device"] != "cpu":
        head.append(fp["device"])
    return "-".join("".join(ch if ch.isalnum() or ch in "._" else "_" for ch in part) for part in head if part) \
        + "-" + digest
