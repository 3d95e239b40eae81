"""Build and trust the kernel library: built how, cached where, serialised by what, trusted when.

Each variant (``isa``) of one source (``csrc/``) is its own extension build in its own cached
directory, so a process loads exactly one.

Cache: ``<cache_dir>/kernels/<variant>-<key>/``, where the key hashes the sources, the flags, the
torch version and the platform. A build runs in a child process (``python -m sparsebench.kernels
_worker``), which also test-loads the library and runs its smoke test there, so a corrupt file's
crash (a truncated ``.so`` can end a process with a bus error) cannot take this process down. Only
then is the library's SHA-256 recorded in ``manifest.json``; a later process loads it only when the
hash matches, and otherwise names the file in one line, discards it and rebuilds. Builds of one
directory are serialised by ``atomic.locked`` on ``build.lock`` (an ``flock``, released by the kernel
when its owner dies, whatever the signal; the file names the owner's pid), and torch's own build
lock, which a killed build leaves behind, is removed under it, naming that pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from ..atomic import Lock, Locked, locked, write_json_atomic
from ..machine import cache_dir
from .errors import KernelsUnavailable
from .isa import ENV_ISA, FLAGS

LIBRARY = "sparse_linear"  # the torch.library namespace: torch.ops.sparse_linear.*
CSRC = Path(__file__).with_name("csrc")
SOURCES = ("ops.cpp", "bsr.cpp", "csr.cpp", "conv.cpp", "conv_width.cpp", "conv_width_narrow.cpp")
LOCK_WAIT_S = 1800  # a build on 2 cores takes minutes; a live build holding the lock longer is stuck


def extension_name(v: str) -> str:
    return f"sparsebench_{LIBRARY}_{v}"


def _key(v: str) -> str:
    import torch

    h = hashlib.sha256()
    for name in sorted(p.name for p in CSRC.iterdir() if p.suffix in (".cpp", ".h")):
        h.update(name.encode() + b"\0" + (CSRC / name).read_bytes() + b"\0")
    h.update(" ".join(FLAGS[v]).encode())
    h.update(f"{torch.__version__}|{platform.machine()}|{sys.version_info[:2]}|{os.environ.get('CXX', 'c++')}".encode())
    return h.hexdigest()[:12]


def build_dir(v: str) -> Path:
    return cache_dir() / "kernels" / f"{v}-{_key(v)}"


def library_path(v: str) -> Path:
    return build_dir(v) / f"{extension_name(v)}.so"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _notice(msg: str) -> None:
    print(f"sparsebench: {msg}", file=sys.stderr, flush=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_baton(directory: Path, previous: int | None) -> None:
    """Remove torch's own build baton (``<directory>/lock``), stale by construction once the build
    lock is held (every builder of the directory holds that first), naming the previous holder."""
    torch_baton = directory / "lock"
    if not torch_baton.exists():
        return
    other = previous is not None and previous != os.getpid()
    who = f"pid {previous}" if previous and other else "an earlier build"
    alive = other and _pid_alive(previous)
    _notice(f"removed the stale kernel build lock {torch_baton} left by {who}{' (killed)' if not alive else ''}")
    torch_baton.unlink(missing_ok=True)


@contextlib.contextmanager
def build_lock(directory: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[Lock]:
    """Hold ``<directory>/build.lock`` for the ``with`` block, saying once whose build it waits for;
    KernelsUnavailable naming the holder after ``wait_s`` seconds. Once held, torch's stale baton
    is removed."""
    path = directory / "build.lock"

    def waiting(owner: int | None) -> None:
        _notice(f"waiting for the kernel build of pid {owner} ({directory.name})")

    with contextlib.ExitStack() as held:
        try:
            lock = held.enter_context(locked(path, wait_s=wait_s, on_wait=waiting))
        except Locked as err:
            raise KernelsUnavailable(f"kernel build lock {path} still held by pid {err.owner} after "
                                     f"{wait_s:.0f} s; end that process or delete the directory") from None
        _remove_stale_baton(directory, lock.previous_owner)
        yield lock


def _verified(v: str) -> Path | None:
    """The library path if its manifest records this file's hash; None when there is none yet.
    A library whose hash does not match is named, discarded and None returned (rebuild)."""
    so, manifest = library_path(v), build_dir(v) / "manifest.json"
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        recorded = None
    if not so.exists():
        if recorded is not None:
            manifest.unlink(missing_ok=True)
        return None
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        # built but never verified (e.g. killed before the manifest): relinking from the kept object
        # files is cheap and certain, a test load of an unknown file is neither
        _notice(f"kernel library {so} has no recorded checksum (a build that did not finish); discarded, rebuilding")
        so.unlink(missing_ok=True)
        return None
    if _sha256(so) == recorded.get("sha256"):
        return so
    _notice(f"kernel library {so} does not match its recorded checksum (corrupt or truncated, "
            f"{so.stat().st_size} bytes); discarded, rebuilding")
    so.unlink(missing_ok=True)
    manifest.unlink(missing_ok=True)
    return None


def _compiler_problem() -> str | None:
    cxx = os.environ.get("CXX", "c++")
    exe = shutil.which(cxx.split()[0]) if cxx.strip() else None
    if exe is None:
        return f"C++ compiler {cxx!r} not found (install g++ or set CXX)"
    try:
        proc = subprocess.run([*cxx.split(), "--version"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"C++ compiler {cxx!r} does not run: {err}"
    if proc.returncode != 0:
        return f"C++ compiler {cxx!r} does not run (`{cxx} --version` exits {proc.returncode}; install g++ or set CXX)"
    return None


def _ensure_ninja_on_path() -> None:
    """torch runs ``ninja``; the pip package may sit in an un-activated venv's bin."""
    if shutil.which("ninja"):
        return
    try:
        import ninja  # type: ignore

        bin_dir = getattr(ninja, "BIN_DIR", None)
    except Exception:  # pragma: no cover - no ninja package
        bin_dir = None
    if bin_dir and os.path.isfile(os.path.join(bin_dir, "ninja")):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def _first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        low = ln.lower()
        if "error:" in low or "fatal" in low or low.startswith("kernelsunavailable"):
            return ln[:300]
    return (lines[-1] if lines else "no output")[:300]


def _run_worker(v: str) -> tuple[int, str]:
    """Build (if needed), test-load and smoke-test variant ``v`` in a child process."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop(ENV_ISA, None)  # the worker is told its variant explicitly
    proc = subprocess.run([sys.executable, "-m", "sparsebench.kernels", "_worker", v], env=env,
                          capture_output=True, text=True)
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        return proc.returncode, f"test load of the kernel library crashed ({sig})"
    return proc.returncode, _first_error_line(proc.stderr + "\n" + proc.stdout) if proc.returncode else ""


def ensure_built(v: str) -> Path:
    """The verified library of variant ``v``, building it first when needed. Raises
    KernelsUnavailable with one line naming the cause."""
    directory = build_dir(v)
    with build_lock(directory):
        so = _verified(v)
        if so is not None:
            return so
        if not library_path(v).exists():
            problem = _compiler_problem()
            if problem:
                raise KernelsUnavailable(f"kernel build failed: {problem}")
        for attempt in (1, 2):
            rc, message = _run_worker(v)
            so = library_path(v)
            if rc == 0 and so.exists():
                write_json_atomic(directory / "manifest.json", {"sha256": _sha256(so), "variant": v,
                                                                "flags": FLAGS[v], "size": so.stat().st_size})
                return so
            if attempt == 1 and so.exists():
                _notice(f"kernel library {so} failed its test load ({message}); discarded, rebuilding")
                so.unlink(missing_ok=True)
                continue
            raise KernelsUnavailable(f"kernel build failed ({v}): {message}")
    raise AssertionError("unreachable")


def compile_in_this_process(v: str) -> Path:
    """The worker's half: torch's JIT build of variant ``v`` into its directory (ninja; object files
    kept, so a discarded library is relinked, not recompiled), loaded into this process."""
    from torch.utils.cpp_extension import load

    _ensure_ninja_on_path()
    if shutil.which("ninja") is None:
        raise KernelsUnavailable("ninja not found (pip install ninja)")
    directory = build_dir(v)
    directory.mkdir(parents=True, exist_ok=True)
    load(name=extension_name(v), sources=[str(CSRC / s) for s in SOURCES],
         extra_cflags=["-O3", "-fopenmp", *FLAGS[v]], extra_ldflags=["-fopenmp"],
         extra_include_paths=[str(CSRC)], build_directory=str(directory), is_python_module=False, verbose=False)
    return library_path(v)
