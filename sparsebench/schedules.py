"""When a mask is chosen: small immutable values, each owning its string syntax and its timetable.

A scheme is ``PATTERN[/SCHEDULE][/DISTRIBUTION][@REPRESENTATION]`` (``schemes.py``); this module is
the ``/SCHEDULE`` part. ``SCHEDULES`` maps a name to its class:

- ``static`` (the default, never written): the mask is fixed when the model is built.
- ``gmp[:A-B]``: gradual magnitude pruning (Zhu & Gupta 2017). Dense until fraction A of training,
  then pruned by magnitude along the cubic ``s_t = S * (1 - (1 - p)^3)`` (``p`` the progress through
  the window) until fraction B, every ``ceil(T / 100)`` steps. Default window 0.1-0.6.
- ``oneshot[:F]``: dense until fraction F of training (default 0.3), then pruned by magnitude to S once.
- ``set[:DT:ALPHA]`` (Mocanu et al. 2018) and ``rigl[:DT:ALPHA]`` (Evci et al. 2020): S stays fixed;
  every DT steps a fraction ``alpha_t`` of each layer's kept units with the smallest magnitude is
  dropped and as many are grown: at random (SET) or where the dense gradient is largest (RigL).
  ``alpha_t = ALPHA / 2 * (1 + cos(pi t / T_end))`` with ``T_end`` = 75% of training, as in RigL.

Defaults scaled to the budget: RigL's alpha = 0.3 and T_end = 0.75 T are the paper's. Its DT = 100
steps is 0.1-0.3% of its runs (tens of thousands of steps); at this project's budgets (hundreds to a
few thousand steps of batch 64) that would leave a grown connection 3-8 steps before it can be
dropped again, so DT defaults to 1% of the run (``ceil(T / 100)``): about 75 updates before T_end.
GMP prunes on the same 1% grid.

A schedule needs the run's length T (optimizer steps); every fraction is of T. torch is not imported.
Adding a schedule: one frozen dataclass here implementing the methods of ``Static``, one entry in
``SCHEDULES``, and its update rule in ``updater.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .patterns import fmt

UPDATES_PER_RUN = 100  # the default update interval is ceil(T / UPDATES_PER_RUN) steps
RIGL_END = 0.75  # fraction of training after which the mask stays fixed (RigL's T_end)


def default_interval(total_steps: int) -> int:
    return max(1, math.ceil(total_steps / UPDATES_PER_RUN))


def _fraction(text: str, what: str, scheme: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise ValueError(f"scheme {scheme!r}: {what} {text!r} is not a number; give a fraction of training "
                         "such as 0.3") from None
    if not 0.0 <= f <= 1.0 or math.isnan(f):
        raise ValueError(f"scheme {scheme!r}: {what} {f} is outside [0, 1]; give a fraction of training such as 0.3")
    return f


def _interval(text: str, scheme: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"scheme {scheme!r}: update interval {text!r} must be a positive whole number of steps")
    return int(text)


@dataclass(frozen=True)
class Static:
    """The mask is fixed when the model is built: today's schemes."""

    name: ClassVar[str] = "static"
    syntax: ClassVar[str] = "static"
    dynamic: ClassVar[bool] = False  # False: nothing changes during training
    starts_dense: ClassVar[bool] = False  # True: every layer starts dense and is pruned towards S
    regrows: ClassVar[bool] = False  # True: updates drop and grow (S fixed)

    @classmethod
    def parse(cls, params: list[str], text: str) -> Static:
        if params:
            raise ValueError(f"scheme {text!r}: 'static' takes no parameters")
        return cls()

    def __str__(self) -> str:
        return self.name

    @property
    def slug(self) -> str:
        return self.name

    def level_at(self, step: int, total_steps: int, sparsity: float) -> float:
        """The sparsity the schedule asks for after ``step`` optimizer steps of ``total_steps``."""
        return sparsity

    def drop_fraction(self, step: int, total_steps: int) -> float:
        """The fraction of kept units to drop and regrow after ``step``; 0 where there is no update."""
        return 0.0


@dataclass(frozen=True)
class GMP(Static):
    """Gradual magnitude pruning along the cubic schedule, inside the window [start, end] of training."""

    start: float = 0.1
    end: float = 0.6
    name: ClassVar[str] = "gmp"
    syntax: ClassVar[str] = "gmp[:A-B]"
    dynamic: ClassVar[bool] = True
    starts_dense: ClassVar[bool] = True

    def __post_init__(self):
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(f"gmp window {fmt(self.start)}-{fmt(self.end)}: it must satisfy 0 <= A < B <= 1, "
                             "e.g. gmp:0.1-0.6")

    @classmethod
    def parse(cls, params: list[str], text: str) -> GMP:
        if not params:
            return cls()
        if len(params) != 1 or params[0].count("-") != 1:
            raise ValueError(f"scheme {text!r}: write the pruning window as gmp:A-B, e.g. gmp:0.1-0.6")
        a, b = params[0].split("-")
        start, end = _fraction(a, "window start", text), _fraction(b, "window end", text)
        try:
            return cls(start, end)
        except ValueError as e:
            raise ValueError(f"scheme {text!r}: {e}") from None

    def __str__(self) -> str:
        return "gmp" if (self.start, self.end) == (0.1, 0.6) else f"gmp:{fmt(self.start)}-{fmt(self.end)}"

    @property
    def slug(self) -> str:
        return str(self).replace(":", "").replace("-", "to")

    def level_at(self, step: int, total_steps: int, sparsity: float) -> float:
        t0, t1 = self.start * total_steps, self.end * total_steps
        if step < t0:
            return 0.0
        if step >= t1:
            return sparsity
        every = default_interval(total_steps)
        stepped = t0 + math.floor((step - t0) / every) * every  # held between pruning steps
        progress = (stepped - t0) / (t1 - t0)
        return sparsity * (1.0 - (1.0 - progress) ** 3)


@dataclass(frozen=True)
class OneShot(Static):
    """Dense until fraction ``at`` of training, then pruned by magnitude to S in one step."""

    at: float = 0.3
    name: ClassVar[str] = "oneshot"
    syntax: ClassVar[str] = "oneshot[:F]"
    dynamic: ClassVar[bool] = True
    starts_dense: ClassVar[bool] = True

    @classmethod
    def parse(cls, params: list[str], text: str) -> OneShot:
        if len(params) > 1:
            raise ValueError(f"scheme {text!r}: write one-shot pruning as oneshot:F, e.g. oneshot:0.3")
        return cls(_fraction(params[0], "pruning point", text)) if params else cls()

    def __str__(self) -> str:
        return "oneshot" if self.at == 0.3 else f"oneshot:{fmt(self.at)}"

    @property
    def slug(self) -> str:
        return str(self).replace(":", "")

    def level_at(self, step: int, total_steps: int, sparsity: float) -> float:
        return sparsity if step >= self.at * total_steps else 0.0


@dataclass(frozen=True)
class SET(Static):
    """Drop the smallest kept units and regrow as many at random, every ``every`` steps (None: 1% of the run)."""

    every: int | None = None
    alpha: float = 0.3
    name: ClassVar[str] = "set"
    syntax: ClassVar[str] = "set[:DT:ALPHA]"
    dynamic: ClassVar[bool] = True
    regrows: ClassVar[bool] = True

    @classmethod
    def parse(cls, params: list[str], text: str):
        if not params:
            return cls()
        if len(params) != 2:
            raise ValueError(f"scheme {text!r}: write {cls.name}:DT:ALPHA (update every DT steps, dropping "
                             f"fraction ALPHA), e.g. {cls.name}:100:0.3, or {cls.name} for the defaults")
        try:
            alpha = float(params[1])
        except ValueError:
            alpha = math.nan
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"scheme {text!r}: drop fraction {params[1]!r} must be a number in (0, 1), e.g. 0.3")
        return cls(_interval(params[0], text), alpha)

    def __str__(self) -> str:
        if self.every is None and self.alpha == 0.3:
            return self.name
        every = self.every if self.every is not None else "auto"
        return f"{self.name}:{every}:{fmt(self.alpha)}"

    @property
    def slug(self) -> str:
        return str(self).replace(":", "-")

    def interval(self, total_steps: int) -> int:
        return self.every if self.every is not None else default_interval(total_steps)

    def drop_fraction(self, step: int, total_steps: int) -> float:
        end = RIGL_END * total_steps
        if step <= 0 or step >= end or step % self.interval(total_steps):
            return 0.0
        return self.alpha / 2 * (1 + math.cos(math.pi * step / end))


@dataclass(frozen=True)
class RigL(SET):
    """As SET, but grown where the magnitude of the dense gradient (of the update step's batch) is largest."""

    name: ClassVar[str] = "rigl"
    syntax: ClassVar[str] = "rigl[:DT:ALPHA]"


STATIC = Static()
SCHEDULES: dict[str, type[Static]] = {cls.name: cls for cls in (Static, GMP, OneShot, SET, RigL)}


def parse_schedule(body: str, text: str | None = None) -> Static:
    """The schedule written ``body`` (``rigl:100:0.3``); ``text`` is the whole scheme, for messages."""
    text = body if text is None else text
    name, *params = body.split(":")
    if name not in SCHEDULES:
        raise ValueError(f"scheme {text!r}: unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)} "
                         "(written PATTERN/SCHEDULE, e.g. magnitude:0.9/gmp, random:0.9/rigl)")
    return SCHEDULES[name].parse(params, text)
