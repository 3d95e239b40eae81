import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # benchmark helpers (layer_step.py) import as top-level modules

_LAYER_ROWS: list[dict] = []


def pytest_addoption(parser):
    parser.addoption("--rounds", type=int, default=5, help="timed rounds per layer-benchmark cell (default 5)")
    parser.addoption("--layer-table", default="results/layer_bench.md",
                     help="where the layer benchmark writes its markdown table")


@pytest.fixture
def rounds(request):
    return request.config.getoption("--rounds")


@pytest.fixture
def layer_table():
    return _LAYER_ROWS


def pytest_configure(config):
    torch.set_num_threads(torch.get_num_threads())  # explicit: the benchmark runs at the machine's thread count


def pytest_terminal_summary(terminalreporter, config):
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
