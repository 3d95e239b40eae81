"""Fault injection for the kernel cache and loader: a missing compiler, a stale build lock left by a
SIGKILLed build, corrupt / empty / truncated libraries, a library that fails its smoke test, a
forced variant this CPU cannot run. Each ends in one clear line or a correct, rebuilt library.

Every scenario runs in a child process with its own SPARSEBENCH_CACHE_DIR (a process loads one
library once). To stay fast, the good build of this process's variant (built once, in the normal
cache) is copied in: a discarded library is then relinked from the copied object files, not
recompiled.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sparsebench.kernels import build_cache, isa
from sparsebench.kernels.errors import KernelsUnavailable, required

ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 300  # a relink plus test load; a hang (the old stale-lock behaviour) fails here


@pytest.fixture(scope="module")
def good_build() -> Path:
    """The verified build directory of this process's variant (built now if the cache lacks it)."""
    if shutil.which(os.environ.get("CXX", "c++").split()[0]) is None and not build_cache.library_path(
            isa.variant()).exists():
        pytest.skip("no C++ compiler and no cached kernel build")
    try:
        build_cache.ensure_built(isa.variant())
    except KernelsUnavailable as err:
        if required():
            raise
        pytest.skip(str(err))
    return build_cache.build_dir(isa.variant())


def child_env(cache: Path, **env) -> dict[str, str]:
    full_env = dict(os.environ, SPARSEBENCH_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    full_env.pop("SPARSEBENCH_REQUIRE_KERNELS", None)
    full_env.update({k: str(v) for k, v in env.items()})
    return full_env


def child(code: str, cache: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=child_env(cache, **env),
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)


def copy_build(good: Path, cache: Path) -> Path:
    target = cache / "kernels" / good.name
    shutil.copytree(good, target)
    return target


REPORT = """
import sys
from sparsebench import kernels
try:
    ok = kernels.available()
except kernels.KernelsUnavailable as err:
    print("RAISED", err)
    sys.exit(3)
print("OK" if ok else "UNAVAILABLE", kernels.unavailable_reason())
"""


def one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_missing_compiler_is_one_line_when_required(tmp_path):
    proc = child(REPORT, tmp_path, CXX="/bin/false", SPARSEBENCH_REQUIRE_KERNELS=1)
    assert proc.returncode == 3, proc.stderr
    line = one_line(proc.stdout)
    assert "RAISED" in line and "/bin/false" in line and "SPARSEBENCH_REQUIRE_KERNELS=1" in line


def test_missing_compiler_is_a_reason_when_not_required(tmp_path):
    code = REPORT.replace('print("OK"', """
from torch import nn
from sparsebench import sparsify
m = sparsify(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), "random:0.5@csr", keep_dense=[])
print("FALLBACK", m[0].sparse_weight.kernel)
print("OK\"""")
    proc = child(code, tmp_path, CXX="/bin/false")
    assert proc.returncode == 0, proc.stderr
    assert "FALLBACK torch.sparse" in proc.stdout
    assert "UNAVAILABLE kernel build failed" in proc.stdout and "/bin/false" in proc.stdout


def test_csr_fallback_is_an_error_when_required(tmp_path):
    code = """
    import sys
    from torch import nn
    from sparsebench import kernels, sparsify
    try:
        sparsify(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), "random:0.5@csr", keep_dense=[])
    except kernels.KernelsUnavailable as err:
        print(err)
        sys.exit(3)
    """
    proc = child(code, tmp_path, CXX="/bin/false", SPARSEBENCH_REQUIRE_KERNELS=1)
    assert proc.returncode == 3, proc.stderr
    assert "/bin/false" in one_line(proc.stdout)


def test_stale_lock_of_a_sigkilled_build_is_broken(tmp_path, good_build):
    directory = copy_build(good_build, tmp_path)
    # a "build" that holds the lock, leaves torch's baton behind, and is SIGKILLed
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from sparsebench.kernels.build_cache import build_lock
        with build_lock(Path({str(directory)!r})):
            (Path({str(directory)!r}) / "lock").write_text("")
            print("locked", flush=True)
            time.sleep(600)
        """)], env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert (directory / "lock").exists()
    start = time.monotonic()
    proc = child(REPORT, tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("OK"), proc.stdout + proc.stderr
    assert "stale kernel build lock" in proc.stderr and f"pid {holder.pid}" in proc.stderr
    assert not (directory / "lock").exists()
    assert time.monotonic() - start < CHILD_TIMEOUT_S


def test_a_live_build_is_waited_for_not_broken(tmp_path, good_build):
    directory = copy_build(good_build, tmp_path)
    # a "build" that holds the lock until the waiter has said whose build it waits for
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from sparsebench.kernels.build_cache import build_lock
        with build_lock(Path({str(directory)!r})):
            print("locked", flush=True)
            sys.stdin.readline()
        """)], env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    waiter = None
    try:
        assert holder.stdout.readline().strip() == "locked"
        waiter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(REPORT)], env=child_env(tmp_path),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        notice = waiter.stderr.readline()
        assert notice == f"sparsebench: waiting for the kernel build of pid {holder.pid} ({directory.name})\n"
        assert waiter.poll() is None  # still waiting, the lock not broken
        holder.communicate("\n", timeout=60)
        out, err = waiter.communicate(timeout=CHILD_TIMEOUT_S)
    finally:
        for proc in (holder, waiter):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert waiter.returncode == 0 and out.startswith("OK None"), out + notice + err
    assert "stale" not in err


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage-unverified"])
def test_corrupt_library_is_named_discarded_and_rebuilt(tmp_path, good_build, damage):
    directory = copy_build(good_build, tmp_path)
    so = directory / build_cache.library_path(isa.variant()).name
    data = so.read_bytes()
    if damage == "truncated":
        so.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        so.write_bytes(b"")
    else:  # no manifest: the library is test-loaded in a child, which fails; discarded and relinked
        (directory / "manifest.json").unlink()
        so.write_bytes(b"\x7fELF" + os.urandom(4096))
    proc = child(REPORT, tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("OK None"), proc.stdout + proc.stderr
    assert str(so) in proc.stderr and ("discarded, rebuilding" in proc.stderr)
    assert so.stat().st_size > 0.5 * len(data)


def test_smoke_test_failure_is_an_error_when_required(tmp_path, good_build):
    copy_build(good_build, tmp_path)
    code = textwrap.dedent("""
    import sys
    from sparsebench.kernels import loader
    loader._smoke_test = lambda: "injected wrong product"
    """) + REPORT
    proc = child(code, tmp_path, SPARSEBENCH_REQUIRE_KERNELS=1)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "fails its smoke test: injected wrong product" in one_line(proc.stdout)
    proc = child(code, tmp_path)
    assert proc.returncode == 0 and "UNAVAILABLE" in proc.stdout and "smoke test" in proc.stdout


def test_a_build_lock_held_too_long_is_one_line_naming_its_holder(tmp_path, capsys):
    """A second holder of one build lock (here this process again, through another open file) says
    once whose build it waits for, then gives up with the holder's pid."""
    with build_cache.build_lock(tmp_path):
        with pytest.raises(KernelsUnavailable) as err:
            with build_cache.build_lock(tmp_path, wait_s=1):
                pass
    assert str(err.value) == (f"kernel build lock {tmp_path / 'build.lock'} still held by pid {os.getpid()} "
                              "after 1 s; end that process or delete the directory")
    waiting = f"sparsebench: waiting for the kernel build of pid {os.getpid()} ({tmp_path.name})\n"
    assert capsys.readouterr().err == waiting
    with build_cache.build_lock(tmp_path) as lock:  # released: taken at once
        assert lock.previous_owner == os.getpid()
    assert capsys.readouterr().err == ""


def test_forced_variant_the_cpu_cannot_run_is_refused(monkeypatch):
    monkeypatch.setattr(isa, "cpu_flags", lambda: frozenset({"sse2"}))
    monkeypatch.setattr(isa.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("SPARSEBENCH_CPU_ISA", "avx2")
    with pytest.raises(KernelsUnavailable) as err:
        isa.variant()
    assert str(err.value) == ("SPARSEBENCH_CPU_ISA=avx2: this CPU cannot run it (lacks avx2, bmi2, f16c, fma); "
                              "it runs generic")
    monkeypatch.setenv("SPARSEBENCH_CPU_ISA", "sse9")
    with pytest.raises(KernelsUnavailable) as err:
        isa.variant()
    assert str(err.value) == "SPARSEBENCH_CPU_ISA='sse9' is not a kernel variant; use one of avx512, avx2, generic"
    monkeypatch.delenv("SPARSEBENCH_CPU_ISA")
    assert isa.variant() == "generic"
    assert isa.supported_variants() == ["generic"]


def test_supported_variants_follow_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(isa.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(isa, "cpu_flags", lambda: frozenset(isa.CPU_NEEDS["avx2"]))
    assert isa.supported_variants() == ["avx2", "generic"]
    monkeypatch.setattr(isa, "cpu_flags", lambda: frozenset(isa.CPU_NEEDS["avx512"]))
    assert isa.supported_variants() == ["avx512", "avx2", "generic"]
    monkeypatch.setattr(isa.platform, "machine", lambda: "aarch64")  # the same flags name nothing on arm64
    assert isa.supported_variants() == ["generic"]


def test_each_variant_has_its_own_build_directory():
    dirs = {build_cache.build_dir(v) for v in isa.VARIANTS}
    assert len(dirs) == len(isa.VARIANTS)
    assert all("-march=native" not in " ".join(flags) for flags in isa.FLAGS.values())
