"""The package as a user installs it: a wheel (not an editable install) in a fresh virtualenv, with
the library's dependencies only. Its kernels must build from the sources the wheel carries, and the
command line must say in one line that the harness is the ``bench`` extra.

Minutes (a wheel, a virtualenv, torch, a kernel build), so it runs in its own nox session
(``nox -s wheel``, which ``.ci/run`` calls) and is skipped elsewhere.
"""

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # as the noxfile installs it: the CPU build on this workplace's disk

pytestmark = pytest.mark.skipif(not os.environ.get("SPARSEBENCH_WHEEL_TEST"),
                                reason="builds a wheel and a virtualenv (minutes): `nox -s wheel` runs it")


def run(*cmd, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=1800, **kwargs)
    assert out.returncode == 0 or kwargs.get("check") is False, f"{cmd}: {out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel, the virtualenv's python) with the wheel and torch installed, nothing else of ours."""
    tmp = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp / "dist", ROOT)
    (wheel,) = (tmp / "dist").glob("sparsebench-*.whl")
    run(sys.executable, "-m", "venv", tmp / "venv")
    python = tmp / "venv" / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", TORCH)
    run(python, "-m", "pip", "install", "--quiet", wheel)
    return wheel, python


def test_the_wheel_carries_the_kernel_sources(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "sparsebench" / "kernels" / "csrc").iterdir()}
    assert sources and sources <= names, sorted(sources - names)


def test_the_installed_wheel_runs_csr_and_bsr_cpp_with_kernels_required(installed, tmp_path):
    _, python = installed
    code = textwrap.dedent("""
        import sparsebench, torch
        from sparsebench import kernels, sparsify
        assert "site-packages" in sparsebench.__file__, sparsebench.__file__  # the wheel, not the checkout
        for scheme in ("random:0.75@csr", "block:4x4:0.75@bsr_cpp"):
            model = sparsify(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Linear(64, 64),
                                                 torch.nn.Linear(64, 4)), scheme)
            model(torch.randn(8, 32)).sum().backward()
        assert kernels.available()
        print(kernels.variant())
    """)
    env = {**os.environ, "SPARSEBENCH_REQUIRE_KERNELS": "1", "PYTHONPATH": ""}
    out = run(python, "-c", code, cwd=tmp_path, env=env)  # cwd outside the checkout: nothing of it on the path
    assert out.stdout.strip() in {"avx512", "avx2", "generic"}


def test_the_library_installs_lean_and_the_command_line_names_the_bench_extra(installed, tmp_path):
    _, python = installed
    missing = run(python, "-c", "import importlib.util as u; print([m for m in ('datasets', 'memray', 'matplotlib', "
                  "'pytest', 'pytest_benchmark') if u.find_spec(m)])", cwd=tmp_path)
    assert missing.stdout.strip() == "[]", f"the library pulled in harness packages: {missing.stdout}"
    cli = run(python.parent / "sparsebench", "run", "--arch", "cnn", "--scheme", "dense",
              "--out", tmp_path / "cell.json", cwd=tmp_path, check=False)
    assert cli.returncode == 1
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and "sparsebench[bench]" in lines[0], cli.stderr[-2000:]
