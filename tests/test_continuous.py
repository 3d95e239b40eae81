"""Side-by-side runs of two commits: the comparison's verdicts on made-up results, and the whole command on
a clone of this checkout, where an injected slowdown in the working tree fails and an unchanged one passes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from factories import make_result
from test_timing import noisy_pairs

from sparsebench.continuous import (
    MIN_GATED_PAIRS,
    TIME_TOLERANCE,
    checkout_root,
    metric_verdicts,
    resolve,
    time_verdict,
)
from sparsebench.results import MiB

ROOT = Path(__file__).resolve().parents[1]


def timed(ratio, seed, pairs=30):
    dense, scheme = noisy_pairs(ratio, pairs, seed=seed)
    return {"time_ratio_vs_dense": ratio, "step_times_s": {"dense": dense, "scheme": scheme}}


def test_time_verdict_gates_the_change_by_its_interval():
    base = make_result("cnn", "random:0.9@csr", **timed(1.2, 1))
    same = make_result("cnn", "random:0.9@csr", **timed(1.2, 2))
    slower = make_result("cnn", "random:0.9@csr", **timed(1.2 * (1 + 2 * TIME_TOLERANCE), 3))
    assert time_verdict("cell", base, same, "BASE x").ok
    verdict = time_verdict("cell", base, slower, "BASE x")
    assert not verdict.ok and verdict.line.startswith("FAIL cell time_ratio_vs_dense")
    assert "95% CI" in verdict.line and "vs BASE x" in verdict.line


def test_too_few_pairs_show_the_time_change_but_do_not_gate_it():
    few = MIN_GATED_PAIRS - 1
    base = make_result("cnn", "random:0.9@csr", **timed(1.2, 1, few))
    slower = make_result("cnn", "random:0.9@csr", **timed(2.4, 3, few))
    verdict = time_verdict("cell", base, slower, "BASE x")
    assert verdict.ok and verdict.line.startswith("note cell time_ratio_vs_dense") and "x2.0" in verdict.line
    assert f"{few} timed pairs" in verdict.line
    enough = make_result("cnn", "random:0.9@csr", **timed(2.4, 3, MIN_GATED_PAIRS))
    assert not time_verdict("cell", make_result("cnn", "random:0.9@csr", **timed(1.2, 1, MIN_GATED_PAIRS)),
                            enough, "BASE x").ok


def test_other_metrics_are_compared_with_base_under_the_tolerance_floors():
    base = make_result("cnn", "random:0.9@csr")
    bigger = make_result("cnn", "random:0.9@csr", peak_memory_bytes=base.peak_memory_bytes + 20 * MiB,
                         accuracy=base.accuracy - 0.01)
    verdicts = {v.metric: v for v in metric_verdicts("cell", base, bigger, "BASE x")}
    assert set(verdicts) == {"accuracy", "peak_memory_bytes", "model_size_bytes", "ledger_bytes", "realised_sparsity"}
    assert not verdicts["peak_memory_bytes"].ok and verdicts["accuracy"].ok  # 20% > 10% floor; 0.01 < 0.03
    assert verdicts["peak_memory_bytes"].line.startswith("FAIL cell peak_memory_bytes")


def test_bad_revisions_and_places_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="names no commit"):
        resolve(ROOT, "no-such-branch-anywhere")
    with pytest.raises(ValueError, match="is not a commit"):
        resolve(ROOT, "--all")
    with pytest.raises(ValueError, match="not in one"):
        checkout_root(tmp_path)


SLOWDOWN = '''
import time as _time
for _name in ("linear", "linear_bias"):
    def _slowed(self, *args, _f=getattr(CsrWeight, _name)):
        _time.sleep(0.005)
        return _f(self, *args)
    setattr(CsrWeight, _name, _slowed)
'''


SKIP_DIRS = {".git", ".nox", ".hypothesis", ".pytest_cache", ".benchmarks", "__pycache__", "results", "docs"}


def working_tree_files(root: Path) -> list[str]:
    """The files of the tree under test: git's view where this is a checkout (tracked, and untracked but not
    ignored), else every file outside caches and results (a copy without .git, as fault_check makes)."""
    if (root / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                                capture_output=True, check=True).stdout.decode().split("\0")
        return [f for f in listed if f and (root / f).is_file()]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        found += [str(Path(folder, f).relative_to(root)) for f in files]
    return found


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A git repository whose one commit is the working tree under test."""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    target = tmp_path_factory.mktemp("clone") / "sparsebench"
    for name in working_tree_files(ROOT):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target / name)
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "the tree under test"]):
        subprocess.run(["git", *args], cwd=target, check=True)
    return target


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module's runs: both sides, and both tests, share one kernel build (same sources)."""
    return tmp_path_factory.mktemp("cache")


def continuous(clone, tiny_data_dir, cache, tmp_path, *extra):
    out = Path(os.path.relpath(tmp_path / "out", clone))  # relative to where it runs, as a user writes it
    done = subprocess.run([sys.executable, "-m", "sparsebench", "continuous", "HEAD", *extra, "--budget", "smoke",
                           "--archs", "transformer", "--schemes", "random:0.5@csr", "--data-dir", str(tiny_data_dir),
                           "--out", str(out), "--quiet"], cwd=clone, capture_output=True, text=True,
                          env={**os.environ, "SPARSEBENCH_CACHE_DIR": str(cache),
                               "PYTHONPATH": str(clone)})
    return done, out


def test_a_commit_compared_with_itself_passes(clone, tiny_data_dir, cache, tmp_path):
    done, out = continuous(clone, tiny_data_dir, cache, tmp_path, "HEAD")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "continuous PASSED" in done.stdout and "side by side with BASE" in done.stdout
    assert (clone / out / "comparison.json").is_file() and (clone / out / "base" / "transformer").is_dir()


def test_an_injected_slowdown_in_the_working_tree_fails(clone, tiny_data_dir, cache, tmp_path):
    csr = clone / "sparsebench" / "representations" / "csr.py"
    original = csr.read_text()
    try:
        csr.write_text(original + SLOWDOWN)
        done, _ = continuous(clone, tiny_data_dir, cache, tmp_path)
    finally:
        csr.write_text(original)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL transformer random:0.5@csr time_ratio_vs_dense" in done.stdout
    assert "continuous FAILED" in done.stdout


def test_the_command_line_refuses_a_place_without_git_in_one_line(tmp_path, monkeypatch, capsys, tiny_data_dir):
    from sparsebench.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["continuous", "HEAD~1", "--budget", "smoke", "--data-dir", str(tiny_data_dir),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not in one" in err and "Traceback" not in err
