"""Executors: where the independent units of a long job (a grid's cells, a study's points) run.

A job is a list of ``Task`` values; an executor runs them and yields one ``Outcome`` per task as it
finishes (in any order). The driver, not the task, writes results, so every executor produces the
same files in the same layout. ``serial`` runs tasks one after another in this process; ``ray``
(optional extra, ``pip install sparsebench[ray]``) runs each as one Ray task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Task:
    key: str  # unique within a job: progress lines and error documents name it
    fn: Callable[..., Any]  # a module-level function (picklable), called in the worker
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    cpus: int = 1  # resources a distributed executor reserves for it
    gpus: int = 0


@dataclass(frozen=True)
class Outcome:
    task: Task
    value: Any = None  # fn's return value when it succeeded
    error: str | None = None  # one line, when the task failed for good (after its retry, where retried)
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


class SerialExecutor:
    """Each task in this process, in order. An exception propagates: a local run stops at the first
    failure with its traceback, as a plain loop would."""

    name = "serial"

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        for task in tasks:
            yield Outcome(task, task.fn(*task.args, **task.kwargs))


EXECUTORS: dict[str, Callable[..., Any]] = {"serial": SerialExecutor}


def get_executor(name: str, **options) -> Any:
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name](**options)
