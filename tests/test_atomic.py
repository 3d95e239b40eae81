"""atomic.py: the one lock (``locked``) that every shared file and directory is written under."""

import os
import signal
import subprocess
import sys
import time

import pytest

from sparsebench.atomic import Locked, locked

HOLD = """
import sys, time
from sparsebench.atomic import locked
with locked(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder():
    """A child process that holds the lock on a path until it is killed."""
    procs = []

    def hold(path):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_held_lock_refuses_a_second_holder_naming_the_owner(tmp_path, holder, kind):
    path = tmp_path / ("lock" if kind == "file" else "dir")
    if kind == "directory":
        path.mkdir()
    proc = holder(path)
    waits = []
    start = time.monotonic()
    with pytest.raises(Locked) as err:
        with locked(path, wait_s=0.3, on_wait=waits.append):
            pass
    assert time.monotonic() - start >= 0.3
    assert waits == [proc.pid if kind == "file" else None]
    assert err.value.owner == (proc.pid if kind == "file" else None)
    if kind == "directory":
        assert list(path.iterdir()) == []  # a directory lock leaves no file in it
    with pytest.raises(Locked):
        with locked(path, wait_s=0):
            pass


def test_a_killed_holder_leaves_no_stale_lock_and_its_pid_is_reported(tmp_path, holder):
    path = tmp_path / "lock"
    proc = holder(path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with locked(path, wait_s=0) as lock:
        assert lock.previous_owner == proc.pid  # what a holder that cleans up after a dead one reads
        assert path.read_text().strip() == str(os.getpid())


def test_waiting_forever_gets_the_lock_once_it_is_free(tmp_path, holder):
    path = tmp_path / "lock"
    proc = holder(path)
    waits = []

    def on_wait(owner):
        waits.append(owner)
        proc.kill()

    with locked(path, on_wait=on_wait):
        pass
    assert waits == [proc.pid]
