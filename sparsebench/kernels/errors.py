"""What "unavailable" means for the kernels: the one error (``KernelsUnavailable``), and whether a
build or load that fails is that error or a reason to fall back (``SPARSEBENCH_REQUIRE_KERNELS``)."""

from __future__ import annotations

import os

ENV_REQUIRE = "SPARSEBENCH_REQUIRE_KERNELS"


class KernelsUnavailable(RuntimeError):
    """The kernels cannot be used here and they are required (or a variant was forced that this
    CPU cannot run). ``str()`` is one line naming the cause."""


def required() -> bool:
    """True when ``SPARSEBENCH_REQUIRE_KERNELS`` makes every "unavailable" a KernelsUnavailable."""
    return os.environ.get(ENV_REQUIRE, "").strip().lower() in ("1", "true", "yes", "on")
