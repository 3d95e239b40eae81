import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # benchmark helpers (layer_step.py) import as top-level modules

_LAYER_ROWS: list[dict] = []
_GATE_LINES: list[str] = []


def pytest_addoption(parser):
    group = parser.getgroup("sparsebench")
    group.addoption("--rounds", type=int, default=5, help="timed rounds per layer-benchmark cell (default 5)")
    group.addoption("--layer-table", default="results/layer_bench.md",
                    help="where the layer benchmark writes its markdown table")
    group.addoption("--budget", default="ci", help="grid budget: smoke, ci (default) or full")
    group.addoption("--grid-seed", type=int, default=0, help="seed of every grid cell (default 0)")
    group.addoption("--results-dir", default=None,
                    help="where grid result documents go (default: results/bench-<budget>, emptied at start)")
    group.addoption("--baselines", default="baselines", help="baselines root (default: baselines)")
    group.addoption("--no-gate", action="store_true", help="run and record the grid without checking baselines")
    group.addoption("--progress", action="store_true", help="show a progress bar per cell")


@dataclass
class GridSettings:
    budget: object
    settings: object  # sparsebench.settings.RunSettings: every cell's seed and progress bar
    results_dir: Path
    baselines: Path
    gate: bool


def _results_dir(config) -> Path:
    return Path(config.getoption("--results-dir") or f"results/bench-{config.getoption('--budget')}")


def pytest_sessionstart(session):
    # the controller (not an xdist worker) starts each grid run from an empty results directory,
    # so the report never mixes this run's cells with an earlier run's; a layer-benchmark run
    # (bench_layers.py, which only runs when named) leaves grid results alone
    config = session.config
    if os.environ.get("PYTEST_XDIST_WORKER") is None and not any("bench_layers" in str(a) for a in config.args):
        shutil.rmtree(_results_dir(config), ignore_errors=True)


@pytest.fixture(scope="session")
def grid(request):
    from sparsebench.budgets import get_budget
    from sparsebench.settings import RunSettings

    config = request.config
    try:
        budget = get_budget(config.getoption("--budget"))
        settings = RunSettings(seed=config.getoption("--grid-seed"), progress=config.getoption("--progress"))
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None
    return GridSettings(budget, settings, _results_dir(config),
                        Path(config.getoption("--baselines")), not config.getoption("--no-gate"))


@pytest.fixture
def rounds(request):
    return request.config.getoption("--rounds")


@pytest.fixture
def layer_table():
    return _LAYER_ROWS


def _grid_cells(items) -> list:
    return [item.callspec.params["cell"] for item in items
            if item.originalname == "test_cell" and "cell" in getattr(item, "callspec", object()).params]


def pytest_collection_finish(session):
    # the grid this run was asked for (after -k and the like) is what the gate expects at the end;
    # every xdist worker collects the same items, so they all write the same manifest
    cells = _grid_cells(session.items)
    if cells:
        from sparsebench.budgets import get_budget
        from sparsebench.grid import write_manifest

        try:
            budget = get_budget(session.config.getoption("--budget"))
        except ValueError as err:
            raise pytest.UsageError(str(err)) from None
        write_manifest(_results_dir(session.config), budget, cells)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """Gate the whole results directory once more: a cell that crashed or vanished left no document,
    and the run fails for it, one line per missing cell."""
    config = session.config
    if os.environ.get("PYTEST_XDIST_WORKER") is not None or config.getoption("--no-gate") or config.option.collectonly:
        return
    from sparsebench.grid import MANIFEST

    results = _results_dir(config)
    if not (results / MANIFEST).is_file():
        return
    from sparsebench.gate import check_dir

    report = check_dir(results, Path(config.getoption("--baselines")), config.getoption("--budget"))
    _GATE_LINES[:] = report.lines()
    if not report.ok:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_DEFAULT_STORAGE = "file://./.benchmarks"  # pytest-benchmark's own default for --benchmark-storage


def _this_machine() -> dict:
    """What pytest-benchmark's machine_info gains: the class time baselines belong to, and the kernel variant."""
    from sparsebench.machine import this_machine
    from sparsebench.measure import kernel_variant

    variant, forced = kernel_variant()
    fingerprint, machine_class = this_machine(variant, torch.device("cpu"))
    return {"machine_class": machine_class, "kernel_variant": variant, "kernel_variant_forced": forced,
            "fingerprint": fingerprint}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    torch.set_num_threads(torch.get_num_threads())  # explicit: the benchmark runs at the machine's thread count
    # saved runs of different machine classes (another CPU, a forced kernel variant) are stored apart, so
    # --benchmark-compare only finds runs of this class; before pytest-benchmark's session reads the option
    if getattr(config.option, "benchmark_storage", None) == _DEFAULT_STORAGE:
        config.option.benchmark_storage = f"{_DEFAULT_STORAGE}/{_this_machine()['machine_class']}"


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["sparsebench"] = _this_machine()


def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    ours = (machine_info.get("sparsebench") or {}).get("machine_class")
    theirs = ((compared_benchmark.get("machine_info") or {}).get("sparsebench") or {}).get("machine_class")
    if ours != theirs:
        benchmarksession.logger.warning(
            f"comparing with a run of another machine class ({theirs or 'unrecorded'}; this one is {ours}): "
            f"step times differ between classes by more than any regression tolerance, so this comparison "
            f"says nothing about the code")


def pytest_terminal_summary(terminalreporter, config):
    results = _results_dir(config)
    if os.environ.get("PYTEST_XDIST_WORKER") is None and results.is_dir() and any(results.rglob("*/*.json")):
        from sparsebench.report import build_report

        terminalreporter.write_sep("=", f"sparsebench report ({results})")
        terminalreporter.write_line(build_report(results))
    if _GATE_LINES:
        terminalreporter.write_sep("=", "sparsebench gate (whole results directory)")
        for line in _GATE_LINES:
            terminalreporter.write_line(line)
    if not _LAYER_ROWS:
        return
    from tabulate import tabulate

    table = tabulate(_LAYER_ROWS, headers="keys", floatfmt=".2f", tablefmt="github")
    terminalreporter.write_line("")
    terminalreporter.write_line(f"Layer benchmark ({torch.get_num_threads()} threads, torch {torch.__version__}):")
    terminalreporter.write_line(table)
    out = Path(config.getoption("--layer-table"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
