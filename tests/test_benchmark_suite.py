"""The pytest-benchmark suite as a user runs it: each training step of a cell is one round, the cell's
result rides in extra_info, and saved runs are stored apart per machine class with the class recorded."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_each_training_step_is_a_round_and_runs_are_saved_per_machine_class(tiny_data_dir, tmp_path):
    from sparsebench.machine import this_machine
    from sparsebench.measure import kernel_variant

    # the child is a pytest of its own: an inherited PYTEST_XDIST_WORKER (this suite under -n) would make
    # pytest-benchmark disable itself there
    parent = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env = {**parent, "SPARSEBENCH_DATA_DIR": str(tiny_data_dir), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "benchmarks" / "test_grid.py"), "--budget", "smoke", "--no-gate",
         "-k", "cnn-random-0.5-csr", "--results-dir", str(tmp_path / "results"), "--benchmark-autosave",
         "-p", "no:randomly", "-p", "no:cacheprovider", "-q"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _, machine_class = this_machine(kernel_variant()[0])
    saved = list((tmp_path / ".benchmarks" / machine_class).rglob("*.json"))
    assert len(saved) == 1, list((tmp_path / ".benchmarks").rglob("*"))
    run = json.loads(saved[0].read_text())
    assert run["machine_info"]["sparsebench"]["machine_class"] == machine_class
    assert run["machine_info"]["sparsebench"]["kernel_variant"] == kernel_variant()[0]
    (bench,) = run["benchmarks"]
    result = bench["extra_info"]
    assert bench["stats"]["rounds"] == result["steps"] > 1  # one round per training step
    assert abs(bench["stats"]["mean"] * result["steps"] - result["train_time_s"]) < 0.5 * result["train_time_s"]
    assert {"accuracy", "peak_memory_bytes", "time_ratio_vs_dense", "time_ratio_interval"} <= set(result)
