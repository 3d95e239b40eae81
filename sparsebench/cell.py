"""A cell of the grid: one architecture with one scheme. Parsed once, at the edge (command line,
pytest parameter), then passed as a value down to the result document."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .schemes import Scheme, parse_scheme


@dataclass(frozen=True, order=False)
class Cell:
    arch: str
    scheme: Scheme

    @classmethod
    def parse(cls, arch: str, scheme: str | Scheme) -> Cell:
        """ValueError naming the arch or the scheme when either is unknown."""
        from .archs import get_arch

        get_arch(arch)
        return cls(arch, scheme if isinstance(scheme, Scheme) else parse_scheme(scheme))

    @property
    def id(self) -> str:
        """File- and pytest-id-safe, e.g. ``cnn-block4x4-0.5-bsr``."""
        return f"{self.arch}-{self.scheme.slug}"

    def path(self, out_dir: str | os.PathLike) -> Path:
        """Where the cell's document goes: ``OUT_DIR/<arch>/<slug>.json``."""
        return Path(out_dir) / self.arch / f"{self.scheme.slug}.json"

    def __str__(self) -> str:
        return f"{self.arch} {self.scheme}"


def cells(archs: Iterable[str], schemes: Iterable[str | Scheme]) -> list[Cell]:
    """Every arch x scheme, all parsed up front so a typo fails before any training."""
    schemes = [s if isinstance(s, Scheme) else parse_scheme(s) for s in schemes]
    return [Cell.parse(arch, s) for arch in archs for s in schemes]
