"""Executors: where the independent units of a long job (a grid's cells, a study's points) run.

A job is a list of ``Task`` values; an executor runs them and yields one ``Outcome`` per task as it
finishes (in any order). The driver, not the task, writes results, so every executor produces the
same files in the same layout. ``serial`` runs tasks one after another in this process; ``ray``
(optional extra, ``pip install 'sparsebench[ray]'``) runs each as one Ray task.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

RAY_INSTALL = "pip install 'sparsebench[ray]'"


class ExecutorUnavailable(RuntimeError):
    """The executor cannot run here (e.g. Ray is not installed); the message is one line that says how to fix it."""


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

    def close(self) -> None:
        pass


def _call_in_worker(fn: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any], cpus: int) -> Any:
    """The body of every Ray task: torch gets as many threads as the task reserved CPUs, then ``fn`` runs."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    return fn(*args, **dict(kwargs))


def one_line(err: BaseException) -> str:
    """A failure as one line: the task's own exception (``ValueError: ...``) for a task that raised, the Ray
    error's first line for a worker that died (``WorkerCrashedError: The worker died unexpectedly ...``)."""
    cause = getattr(err, "cause", None)  # ray.exceptions.RayTaskError: the exception the task raised
    if isinstance(cause, BaseException) and cause is not err:
        err = cause
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class RayExecutor:
    """Each task as one Ray task reserving its ``cpus`` and ``gpus``, on the cluster at ``address`` (``HEAD:6379``,
    ``ray://HEAD:10001`` or ``auto``) or, without one, on a Ray instance started here for this process (or the one
    this process has already initialised). A task that raises or whose worker dies is run once more (``retries``),
    then yields an Outcome with ``error`` set; the other tasks go on. Tasks are handed to Ray only as the
    cluster's CPUs/GPUs can take them, so "running" in the progress line means running."""

    name = "ray"

    def __init__(self, address: str | None = None, retries: int = 1, progress: bool = True,
                 num_cpus: int | None = None, poll_s: float = 30.0):
        try:
            import ray  # noqa: F401  (lazy: ray is an optional extra)
        except ImportError:
            raise ExecutorUnavailable(f"--executor ray needs Ray, which is not installed here: {RAY_INSTALL}") from None
        self.address, self.retries, self.progress = address, retries, progress
        self.num_cpus, self.poll_s = num_cpus, poll_s  # num_cpus: of a local instance started here (None: all)
        self._started = False

    def _connect(self):
        import ray

        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, logging_level="warning")
            else:  # a local instance, for this process only; no dashboard (it would eat a core of a small machine)
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, logging_level="warning")
            self._started = True
        return ray

    def close(self) -> None:
        """Shut down the Ray instance this executor started (a cluster it joined keeps running)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def _say(self, text: str) -> None:
        if self.progress:
            print(f"[ray] {text}", file=sys.stderr, flush=True)

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        ray = self._connect()
        remote = ray.remote(_call_in_worker)
        waiting = list(tasks)  # not yet handed to Ray
        in_flight: dict[Any, tuple[Task, int]] = {}  # ObjectRef -> (task, attempt)
        done = failed = 0
        start = time.perf_counter()

        def fits(task: Task) -> bool:
            if not in_flight:
                return True  # something always runs (a task too big for the cluster waits in Ray for resources)
            total = ray.cluster_resources()
            cpus = sum(t.cpus for t, _ in in_flight.values()) + task.cpus
            gpus = sum(t.gpus for t, _ in in_flight.values()) + task.gpus
            return cpus <= total.get("CPU", 0) and gpus <= total.get("GPU", 0)

        def submit(task: Task, attempt: int) -> None:
            ref = remote.options(num_cpus=task.cpus, num_gpus=task.gpus, max_retries=0,
                                 name=f"sparsebench:{task.key}"[:200]).remote(task.fn, task.args, task.kwargs,
                                                                              task.cpus)
            in_flight[ref] = (task, attempt)

        def status() -> str:
            return (f"{done}/{len(tasks)} done, {len(in_flight)} running, {len(waiting)} waiting, {failed} failed "
                    f"({time.perf_counter() - start:.0f} s)")

        def fill() -> None:
            while waiting and fits(waiting[0]):
                submit(waiting.pop(0), 1)

        try:
            while waiting or in_flight:
                fill()
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=self.poll_s)
                if not ready:
                    self._say(status())
                    continue
                ref = ready[0]
                task, attempt = in_flight.pop(ref)
                try:
                    value = ray.get(ref)
                except Exception as err:  # RayTaskError (the task raised) or RayError (its worker or node died)
                    reason = one_line(err)
                    if attempt <= self.retries:
                        self._say(f"{task.key}: attempt {attempt} failed ({reason}); retrying")
                        submit(task, attempt + 1)
                        continue
                    failed += 1
                    done += 1
                    fill()  # so the counts below say what runs now
                    self._say(f"{task.key}: failed after {attempt} attempts ({reason}); {status()}")
                    yield Outcome(task, error=reason, attempts=attempt)
                    continue
                done += 1
                fill()
                self._say(f"{task.key}: done{f' on attempt {attempt}' if attempt > 1 else ''}; {status()}")
                yield Outcome(task, value, attempts=attempt)
        finally:  # the driver stopped early (Ctrl-C, an error writing a result): do not leave cells running
            for ref in in_flight:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001  (already finished or its node is gone)
                    pass


EXECUTORS: dict[str, Callable[..., Any]] = {"serial": SerialExecutor, "ray": RayExecutor}


def get_executor(name: str, **options) -> Any:
    """An executor by name, with its options. ``serial`` takes none: it ignores them, but refuses an ``address``
    (a cluster needs a distributed executor), so a driver can pass the same options to either."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    if EXECUTORS[name] is SerialExecutor:
        if options.get("address") is not None:
            raise ValueError(f"--address {options['address']} needs a distributed executor: add --executor ray")
        return SerialExecutor()
    return EXECUTORS[name](**options)
