"""Files that matter are written atomically: readers see the old file or the new one, never half;
and the one lock every writer of a shared file or directory takes (``locked``).

Everything goes to a fsynced temp file beside the target (a name that starts with ``.`` and ends in
``.tmp``, so no scan mistakes it for a result), then ``os.replace``. ``clean_orphans`` removes temp
files a killed writer left. Library core: no harness imports, no torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh, empty temp file beside ``path`` (mode as an ordinary file), for writers that need a name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results and caches are ordinary files
    os.close(fd)
    return Path(tmp)


def write_temp(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_name)`` on a temp file beside ``path``, fsync it, and return its path (the
    caller renames it). The temp file is removed if ``write`` fails."""
    tmp = temp_path(path)
    try:
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the bytes are on disk before a rename makes them visible
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename a finished temp file over ``path`` and make the rename durable."""
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(Path(path).parent)


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp_name)`` then rename over ``path``: e.g. ``write_atomic(p, lambda t: torch.save(x, t))``."""
    commit(write_temp(path, write), path)


def json_text(obj) -> str:
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"  # NaN is not JSON: fail here, not in a reader


def write_json_temp(path: str | os.PathLike, obj) -> Path:
    text = json_text(obj)
    return write_temp(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    commit(write_json_temp(path, obj), path)


def clean_orphans(directory: str | os.PathLike, older_than_s: float = 60.0) -> list[Path]:
    """Remove temp files (``.*.tmp``) under ``directory`` that a killed writer left; returns them.
    Only files older than ``older_than_s`` go, so a writer still at work in another process keeps its own."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    now = time.time()
    for tmp in directory.rglob(f".*{TMP_SUFFIX}"):
        try:
            if tmp.is_file() and now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    return removed


class Locked(Exception):
    """``locked`` gave up: another process holds the lock. ``owner`` is its pid where it is known."""

    def __init__(self, path: Path, owner: int | None, waited_s: float):
        self.path, self.owner, self.waited_s = path, owner, waited_s
        held = f"pid {owner}" if owner else "another process"
        super().__init__(f"{path} is locked by {held}" + (f" (waited {waited_s:.0f} s)" if waited_s else ""))


@dataclass
class Lock:
    """A held lock: its path, and the pid of the previous holder (a killed one's pid is still there)."""

    path: Path
    previous_owner: int | None


def _owner(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:  # a directory
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def locked(path: str | os.PathLike, wait_s: float | None = None,
           on_wait: Callable[[int | None], None] | None = None) -> Iterator[Lock]:
    """Hold an exclusive ``flock`` on ``path`` for the ``with`` block.

    A directory is locked itself (no file is left in it); anything else is a lock file, created if
    needed, with the holder's pid written into it so a waiter can name it. The kernel drops an flock
    when its holder dies, so a killed process never leaves a stale lock. ``wait_s``: None waits as long
    as it takes, 0 fails at once, else gives up after that many seconds; giving up raises ``Locked``.
    ``on_wait(owner_pid)`` is called once, when the lock is busy."""
    import fcntl

    path = Path(path)
    is_dir = path.is_dir()
    if not is_dir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY if is_dir else os.O_RDWR | os.O_CREAT, 0o666)
    try:
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait_s is None and told else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if wait_s is not None and waited >= wait_s:
                    raise Locked(path, _owner(fd), waited) from None
                if not told:
                    told = True
                    if on_wait is not None:
                        on_wait(_owner(fd))
                if wait_s is not None:
                    time.sleep(min(0.2, wait_s))
        previous = _owner(fd)
        if not is_dir:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield Lock(path, previous)
    finally:
        os.close(fd)  # releases the flock


def read_json(path: str | os.PathLike, what: str):
    """The JSON value in ``path``; ValueError ``{what} {path}: cannot read it as JSON (why)`` when the file cannot
    be read or is not JSON (a caller adds its fix: ``raise ValueError(f"{e}; rerun the grid")``)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path}: cannot read it as JSON ({e})") from e
