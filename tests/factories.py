"""The one factory of result values for the tests: a complete, valid ``Result`` with plausible made-up
numbers, any field overridden. The schema itself lives in sparsebench/results.py only."""

from __future__ import annotations

from sparsebench.results import SCHEMA_VERSION, MiB, Result
from sparsebench.schemes import parse_scheme

MACHINE_CLASS = "x86_64-testvendor-6-1-avx2-t2-0000test"


def make_fingerprint(**overrides) -> dict:
    cpu = {"arch": "x86_64", "name": "Test CPU", "vendor": "TestVendor", "family": "6", "model": "1",
           "stepping": "0", "isa": ["avx2", "fma"], "caches": {"L2": 1 << 20}, "cores": 2}
    fp = {"cpu": cpu, "kernel_variant": "avx2", "threads": 2, "torch": "2.13.0", "device": "cpu", "gpu": None}
    for key, value in overrides.items():
        (cpu if key in cpu else fp)[key] = value
    return fp


def make_env(machine_class: str = MACHINE_CLASS, **fingerprint) -> dict:
    fp = make_fingerprint(**fingerprint)
    return {"torch": fp["torch"], "python": "3.11.7", "device": fp["device"], "threads": fp["threads"],
            "cpu": "Test CPU", "gpu": None, "commit": "abc123", "platform": "test",
            "kernel_variant": fp["kernel_variant"], "kernel_variant_forced": False,
            "machine": fp, "machine_class": machine_class}


def result_fields(arch: str = "cnn", scheme: str = "dense", **overrides) -> dict:
    s = parse_scheme(scheme)
    target = s.target_sparsity
    fields = {
        "schema_version": SCHEMA_VERSION, "status": "ok", "arch": arch, "scheme": str(s), "slug": s.slug,
        "pattern": s.pattern.name, "representation": s.representation, "target_sparsity": target,
        "budget": "ci", "budget_settings": {}, "seed": 0, "dataset": {}, "model": {},
        "accuracy": round(0.7 - target / 5, 6), "final_loss": 1.0, "train_time_s": 10.0 + 20 * target, "steps": 10,
        "samples": 640, "step_time_s": 1.0, "inference_time_s": 1.0, "inference_samples_per_s": 1234.5,
        "peak_memory_bytes": 100 * MiB, "peak_memory_method": "memray.peak_heap",
        "ledger": {"total": 4 * MiB, "dense_total": 8 * MiB}, "ledger_bytes": 4 * MiB,
        "model_size_bytes": 512 * 1024, "dense_model_size_bytes": 1024 * 1024,
        "sparsity": {"total": {"realised": target * 0.95, "kept": 1, "count": 2}, "layers": {}},
        "realised_sparsity": target * 0.95,
        "time_ratio_vs_dense": 1.0 + target,
        "env": make_env(),
    }
    fields.update(overrides)
    return fields


def make_result(arch: str = "cnn", scheme: str = "dense", **overrides) -> Result:
    """A complete, valid result (validated on construction, as training's are)."""
    return Result(**result_fields(arch, scheme, **overrides))


def make_doc(arch: str = "cnn", scheme: str = "dense", **overrides) -> dict:
    """The same as a JSON document, not validated: for tests of what reading refuses."""
    return {k: v for k, v in result_fields(arch, scheme, **overrides).items() if v is not None}


# --- results directories of made-up results, and where their baselines go ---------------------------------------

RUN_CELLS = [("cnn", "dense"), ("cnn", "random:0.5@csr"), ("cnn", "block:4x4:0.5@bsr"), ("transformer", "dense")]


def run_cells(pairs=RUN_CELLS) -> list:
    """``(arch, scheme)`` pairs as grid cells."""
    from sparsebench.cell import Cell

    return [Cell.parse(arch, scheme) for arch, scheme in pairs]


def write_run(directory, pairs=RUN_CELLS, **overrides):
    """Write one ok result per ``(arch, scheme)`` of ``pairs`` into ``directory`` (any field overridden)."""
    from sparsebench.results import write_result

    for arch, scheme in pairs:
        write_result(directory, make_result(arch, scheme, **overrides))
    return directory


def ci_baseline_path(root, arch: str, slug: str, machine_class: str = MACHINE_CLASS):
    """The file of one cell's ``ci`` baseline under ``root``."""
    from sparsebench.baselines import baseline_path

    return baseline_path(root, "ci", machine_class, arch, slug)


def write_baselined_run(directory):
    """A run under ``directory/run`` and the ``ci`` baselines made from it under ``directory/baselines``:
    (results dir, baselines root)."""
    from sparsebench.baselines import update_baselines

    run, root = write_run(directory / "run"), directory / "baselines"
    update_baselines(run, root, "ci")
    return run, root
