"""RunSettings: how a run trains and where it reads from, apart from what it trains (the cell) and
for how long (the budget). Built once at the edge (the command line, a pytest fixture) and passed
down as one value, so a setting added here reaches every cell, study point and worker."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

DEVICES = (None, "cpu", "cuda")  # None: the budget's own (cuda for `full` where there is one, else cpu)


@dataclass(frozen=True)
class RunSettings:
    seed: int = 0
    data_dir: Path | None = None  # None: $SPARSEBENCH_DATA_DIR, else the default locations (data.locate)
    device: str | None = None
    progress: bool = True  # a progress bar per cell on stderr
    keep_dense: tuple[str, ...] = field(default=())  # layers kept dense besides the model's default ones

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed {self.seed!r} must be a whole number >= 0")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; use cpu or cuda")
        if self.data_dir is not None and not isinstance(self.data_dir, Path):
            object.__setattr__(self, "data_dir", Path(os.fspath(self.data_dir)))
        object.__setattr__(self, "keep_dense", tuple(sorted(set(self.keep_dense or ()))))

    def but(self, **changes) -> RunSettings:
        """A copy with some settings changed: ``settings.but(progress=False)``."""
        return replace(self, **changes)
