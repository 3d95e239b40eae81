"""Layer benchmark: one training step (forward, backward, Adam) of a Linear layer at the reference
models' shapes, per representation and sparsity, timed with pytest-benchmark.

The speed-up against dense is measured interleaved in the same process: before every timed round
of the sparse step, pedantic's (untimed) setup runs and times one dense step, so both see the same
machine state. ``speedup = median(dense) / median(sparse)``; above 1.0 the sparse layer is faster.
Run: ``nox -s layers`` or ``pytest benchmarks/bench_layers.py`` (named explicitly: the file is
not collected by ``pytest benchmarks``, which runs the grid); the table lands in
``results/layer_bench.md``.
"""

from __future__ import annotations

import pytest
from layer_step import SHAPES, LayerStep

from sparsebench import RepresentationUnavailable
from sparsebench.timing import time_ratio, timed

SPARSITIES = [0.5, 0.75, 0.9, 0.95]
PATTERNS = ["random:{s}", "block:4x4:{s}", "block:16x16:{s}", "block:32x32:{s}"]
REPRESENTATIONS = ["masked", "csr", "bsr", "bsr_cpp", "auto"]
BLOCK_ONLY = {"bsr", "bsr_cpp"}


def cases():
    for shape in SHAPES:
        for s in SPARSITIES:
            for pattern in PATTERNS:
                for rep in REPRESENTATIONS:
                    if rep in BLOCK_ONLY and not pattern.startswith("block"):
                        continue
                    yield pytest.param(shape, f"{pattern.format(s=s)}@{rep}", id=f"{shape}-{pattern.format(s=s)}@{rep}")


@pytest.mark.parametrize("shape, scheme", list(cases()))
def test_layer_step(benchmark, layer_table, shape, scheme, rounds):
    benchmark.group = f"layer-{shape}"
    try:
        dense, sparse = LayerStep(shape, "dense"), LayerStep(shape, scheme)
    except RepresentationUnavailable as why:
        pytest.skip(str(why))
    dense.step(), sparse.step()  # warm-up: allocator, kernel selection, optimizer state
    dense_times = []

    def run_dense_first():
        dense_times.append(timed(dense.step))

    benchmark.pedantic(sparse.step, setup=run_dense_first, rounds=rounds, iterations=1, warmup_rounds=0)
    sparse_times = list(benchmark.stats.stats.data)
    ledger, dense_ledger = sparse.ledger(), dense.ledger()
    row = {
        "shape": shape,
        "tokens x in -> out": "{} x {} -> {}".format(*SHAPES[shape]),
        "scheme": scheme,
        "stored as": sparse.representation(),
        "dense ms": 1e3 * min(dense_times),
        "sparse ms": 1e3 * min(sparse_times),
        "speedup vs dense": 1 / time_ratio(dense_times, sparse_times),
        "ledger / dense": ledger["total"] / dense_ledger["total"],
        "ledger MiB": ledger["total"] / 2**20,
    }
    benchmark.extra_info.update(row | {"ledger": ledger, "dense_ledger": dense_ledger})
    layer_table.append(row)
    assert ledger["dense_total"] == dense_ledger["total"]  # the ledger's dense equivalent is the real dense layer
