"""Which kernel variant this process runs: one build per instruction set, chosen from the CPU's
flags or forced.

=========  ======================================================  ==========================
variant    compiler flags (besides ``-O3 -fopenmp``)                runs on
=========  ======================================================  ==========================
avx512     ``-mavx512f -mavx512bw -mavx512vl -mavx512dq`` + avx2's  x86-64-v4 CPUs
avx2       ``-mavx2 -mfma -mf16c -mbmi2`` (x86-64-v3)                x86-64-v3 CPUs
generic    none: portable C++17 (SSE2 on x86-64, NEON on arm64)    anything
=========  ======================================================  ==========================

No ``-march=native``: every machine of a variant runs the same program. The variant is the best
one the CPU's flags allow; ``SPARSEBENCH_CPU_ISA=generic|avx2|avx512`` forces one, and a forced
variant this CPU cannot run is refused in one line.
"""

from __future__ import annotations

import os
import platform

from ..machine import cpu_flags
from .errors import KernelsUnavailable

VARIANTS = ("avx512", "avx2", "generic")  # best first
_AVX2_FLAGS = ["-mavx2", "-mfma", "-mf16c", "-mbmi2"]
FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", *_AVX2_FLAGS],
    "avx2": _AVX2_FLAGS,
    "generic": [],
}
CPU_NEEDS = {  # /proc/cpuinfo flags a variant's instructions need
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c", "bmi2"},
    "avx2": {"avx2", "fma", "f16c", "bmi2"},
    "generic": set(),
}
ENV_ISA = "SPARSEBENCH_CPU_ISA"


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def supported_variants() -> list[str]:
    """The variants this CPU can run, best first (``generic`` always)."""
    flags = cpu_flags()
    return [v for v in VARIANTS if v == "generic" or (_is_x86() and CPU_NEEDS[v] <= flags)]


def forced_variant() -> str | None:
    value = os.environ.get(ENV_ISA, "").strip().lower()
    return value or None


def variant() -> str:
    """The variant this process uses: ``SPARSEBENCH_CPU_ISA`` when set, else the best this CPU runs.
    Needs no build. Raises KernelsUnavailable for an unknown variant or one this CPU cannot run."""
    forced = forced_variant()
    supported = supported_variants()
    if forced is None:
        return supported[0]
    if forced not in VARIANTS:
        raise KernelsUnavailable(f"{ENV_ISA}={forced!r} is not a kernel variant; use one of {', '.join(VARIANTS)}")
    if forced not in supported:
        missing = sorted(CPU_NEEDS[forced] - cpu_flags()) if _is_x86() else [f"an x86-64 CPU ({platform.machine()})"]
        raise KernelsUnavailable(f"{ENV_ISA}={forced}: this CPU cannot run it (lacks {', '.join(missing)}); "
                                 f"it runs {', '.join(supported)}")
    return forced
