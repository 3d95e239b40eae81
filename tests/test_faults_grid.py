"""Fault injection on the command line and the grid: bad arguments end in one line before any
training, a grid checks every cell before the first trains, an interrupted grid resumes, and a results
directory has one writer. Training is replaced by a fake that writes a valid document, so these are fast."""

import shutil
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch
from factories import make_result

from sparsebench import grid
from sparsebench.archs import get_arch
from sparsebench.budgets import BUDGETS
from sparsebench.cell import Cell
from sparsebench.cli import main
from sparsebench.results import read_result, write_result
from sparsebench.settings import RunSettings
from sparsebench.sparsify import LayerRefused, check_scheme

SMOKE = BUDGETS["smoke"]


@pytest.fixture
def fake_training(monkeypatch):
    """grid.run_one writes a valid smoke document instead of training; returns the cells it ran."""
    ran = []

    def fake(cell, budget, out_dir=None, settings=None, train=None):
        ran.append(str(cell))
        training = get_arch(cell.arch).training_for(budget)
        keep_dense = settings.keep_dense
        result = make_result(cell.arch, str(cell.scheme), budget=budget.name,
                             seed=settings.seed,
                             budget_settings=budget.settings() | {"arch_training": asdict(training), "arch_steps": 3},
                             model={"keep_dense": list(keep_dense)} if keep_dense else {})
        if out_dir is not None:
            write_result(out_dir, result)
        return result

    monkeypatch.setattr(grid, "run_one", fake)
    monkeypatch.setattr("sparsebench.report.build_report", lambda *a, **k: "report")
    return ran


def one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


@pytest.mark.parametrize("seconds", ["-1", "nan", "0", "inf"])
def test_seconds_must_be_finite_and_positive(seconds, capsys):
    assert main(["run", "--arch", "cnn", "--scheme", "dense", "--budget", "smoke", "--seconds", seconds,
                 "--out", "x.json"]) == 2
    one_line_error(capsys, "--seconds", "> 0")


def test_seed_out_of_range(capsys):
    assert main(["grid", "--out", "x", "--budget", "smoke", "--seed", "-1"]) == 2
    one_line_error(capsys, "--seed")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(tiny_data_dir, tmp_path, capsys, fake_training):
    assert main(["grid", "--out", str(tmp_path / "out"), "--budget", "smoke", "--archs", "cnn", "--schemes", "dense",
                 "--data-dir", str(tiny_data_dir), "--device", "cuda"]) == 2
    one_line_error(capsys, "CUDA is not available")
    assert fake_training == []


def test_run_out_naming_a_directory_is_refused_before_training(tiny_data_dir, tmp_path, capsys, fake_training):
    assert main(["run", "--arch", "cnn", "--scheme", "dense", "--budget", "smoke", "--data-dir", str(tiny_data_dir),
                 "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "is a directory")
    assert fake_training == []


def test_grid_with_the_second_archs_data_missing_trains_nothing(tiny_data_dir, tmp_path, capsys, fake_training):
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir / "cifar10", data / "cifar10")  # no imdb
    out = tmp_path / "out"
    assert main(["grid", "--out", str(out), "--budget", "smoke", "--schemes", "dense", "--data-dir", str(data)]) == 2
    one_line_error(capsys, "imdb")
    assert fake_training == [] and not list(out.rglob("*.json"))


def test_grid_with_a_scheme_that_cannot_tile_one_arch_trains_nothing(tiny_data_dir, tmp_path, capsys, fake_training):
    out = tmp_path / "out"
    assert main(["grid", "--out", str(out), "--budget", "smoke", "--archs", "cnn", "transformer",
                 "--schemes", "dense", "block:5x5:0.5", "--data-dir", str(tiny_data_dir)]) == 2
    one_line_error(capsys, "--keep-dense", "layer")
    assert fake_training == [] and not list(out.rglob("*.json"))


def test_keep_dense_names_checked_and_passed_on(tiny_data_dir, tmp_path, capsys, fake_training):
    base = ["grid", "--budget", "smoke", "--archs", "cnn", "--schemes", "random:0.5", "--data-dir", str(tiny_data_dir)]
    assert main(base + ["--out", str(tmp_path / "a"), "--keep-dense", "nope"]) == 2
    one_line_error(capsys, "nope")
    assert main(base + ["--out", str(tmp_path / "b"), "--keep-dense", "fc1"]) == 0
    assert fake_training == ["cnn random:0.5"]
    assert read_result(Cell.parse("cnn", "random:0.5").path(tmp_path / "b")).model == {"keep_dense": ["fc1"]}


def test_keep_dense_lets_a_non_tiling_layer_stay_dense():
    with pytest.raises(ValueError, match="--keep-dense") as e:
        grid.preflight([Cell.parse("cnn", "block:3x3:0.5")], SMOKE)
    layer = str(e.value).rsplit("--keep-dense ", 1)[1].rstrip(")")
    # layer by layer, keeping each refused one dense, until the scheme fits the rest
    kept = [layer]
    for _ in range(10):
        try:
            grid.preflight([Cell.parse("cnn", "block:3x3:0.5")], SMOKE, RunSettings(keep_dense=kept))
            break
        except ValueError as err:
            kept.append(str(err).rsplit("--keep-dense ", 1)[1].rstrip(")"))
    else:
        pytest.fail("keep_dense never took effect")


@pytest.mark.parametrize("scheme", ["block:3x3:0.5", "nm:2:5"])
def test_preflight_refuses_a_layer_as_sparsify_does_with_the_command_line_fix(scheme):
    arch = get_arch("cnn")
    with torch.device("meta"):
        model = arch.build(arch.size_for(SMOKE), SimpleNamespace(info={}))
    with pytest.raises(LayerRefused) as refused:
        check_scheme(model, scheme)  # what sparsify() raises for this model, before it replaces any layer
    with pytest.raises(ValueError) as err:
        grid.preflight([Cell.parse("cnn", scheme)], SMOKE)
    assert str(err.value) == (f"cnn {scheme}: {refused.value} (command line: --keep-dense {refused.value.layer})")
    assert repr(refused.value.layer) in str(refused.value)


def test_interrupted_grid_resumes_and_force_reruns(tiny_data_dir, tmp_path, capsys, fake_training):
    out = tmp_path / "out"
    argv = ["grid", "--out", str(out), "--budget", "smoke", "--archs", "cnn", "--schemes", "dense", "random:0.5",
            "--data-dir", str(tiny_data_dir)]
    assert main(argv) == 0 and len(fake_training) == 2
    (out / "cnn" / "random-0.5-masked.json").unlink()  # the cell in flight when the grid was killed
    orphan = out / "cnn" / ".random-0.5-masked.json.x1.tmp"
    orphan.write_text("{half")
    fake_training.clear()
    assert main(argv) == 0
    assert fake_training == ["cnn random:0.5"]  # dense was kept
    assert "kept from an earlier run" in capsys.readouterr().err
    assert not orphan.exists()
    fake_training.clear()
    assert main(argv + ["--seed", "1"]) == 0 and len(fake_training) == 2  # other settings: rerun
    fake_training.clear()
    assert main(argv + ["--seed", "1", "--force"]) == 0 and len(fake_training) == 2


def test_second_writer_of_a_results_dir_is_refused(tiny_data_dir, tmp_path, capsys, fake_training):
    out = tmp_path / "out"
    with grid.results_lock(out):
        assert main(["grid", "--out", str(out), "--budget", "smoke", "--archs", "cnn", "--schemes", "dense",
                     "--data-dir", str(tiny_data_dir)]) == 2
    one_line_error(capsys, "being written by another sparsebench (pid")
    assert fake_training == []
