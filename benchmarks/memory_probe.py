"""Peak training memory of sparse schemes against dense, at the ci and the reference sizes.

For each (arch, size) and scheme: memray's peak heap over a training pass that builds its model
(seeded init, sparsify), makes a fused Adam and trains ``--steps`` steps on one synthetic batch (the
data is made before the pass, as train.py loads its data before its memory pass). Every scheme first
runs one untracked pass at the ci size, so the process's one-time allocations (thread pools, kernel
libraries, ~85 MiB) land outside every tracked pass. Also the peak of building the model alone.

Columns: peak MiB; peak / dense; ledger saving (dense_total - total, MiB); share of that saving
that reaches the peak ((dense peak - peak) / saving); build MiB (peak of seeding + sparsify only).

    python benchmarks/memory_probe.py                      # ci and reference sizes, both archs
    python benchmarks/memory_probe.py --sizes ci --archs cnn
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from sparsebench.ledger import memory_ledger
from sparsebench.measure import peak_heap
from sparsebench.models import CNN, REFERENCE_TRANSFORMER, Transformer, TransformerSize
from sparsebench.sparsify import sparsify

MiB = 2**20
SCHEMES = ["dense", "block:4x4:0.5@bsr_cpp", "block:16x16:0.9@bsr_cpp", "random:0.5@csr", "random:0.9@csr",
           "block:16x16:0.9@auto", "random:0.9@auto"]
CI_TRANSFORMER = TransformerSize(layers=2, heads=4, d_model=64, d_ff=256, seq_len=128, vocab_size=8192)
SIZES = {  # (arch, size) -> (model builder, batch maker)
    ("cnn", "ci"): 32,
    ("cnn", "ref"): 64,
    ("transformer", "ci"): (CI_TRANSFORMER, 32),
    ("transformer", "ref"): (REFERENCE_TRANSFORMER, 16),
}


def setup(arch: str, size: str):
    """(build, x, y): a model builder and one seeded synthetic batch."""
    gen = torch.Generator().manual_seed(1)
    if arch == "cnn":
        batch = SIZES[arch, size]
        x = torch.randn(batch, 3, 32, 32, generator=gen)
        return CNN, x, torch.randint(0, 10, (batch,), generator=gen)
    tsize, batch = SIZES[arch, size]
    x = torch.randint(1, tsize.vocab_size, (batch, tsize.seq_len), generator=gen)
    x[batch // 2:, tsize.seq_len * 3 // 4:] = 0  # some padding, as real reviews have
    return (lambda: Transformer(replace(tsize))), x, torch.randint(0, 2, (batch,), generator=gen)


def build(make, scheme, x):
    torch.manual_seed(0)
    return sparsify(make(), scheme, seed=0, example_inputs=x)


def training_pass(make, scheme, x, y, steps, keep):
    model = build(make, scheme, x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    if keep is not None:
        keep["ledger"] = memory_ledger(model, opt)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="cnn,transformer")
    parser.add_argument("--sizes", default="ci,ref")
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    schemes = args.schemes.split(",")
    if schemes[0] != "dense":
        schemes.insert(0, "dense")
    torch.set_num_threads(2)
    for arch in args.archs.split(","):
        make, x, y = setup(arch, "ci")
        for scheme in schemes:  # warm-up: one-time allocations (and auto's calibration) outside the tracked passes
            training_pass(make, scheme, x, y, 1, None)
        for size in args.sizes.split(","):
            make, x, y = setup(arch, size)
            training_pass(make, "dense", x, y, 1, None)
            print(f"\n{arch} {size} (input {tuple(x.shape)}, {args.steps} Adam steps)", flush=True)
            print(f"{'scheme':26} {'peak MiB':>9} {'x dense':>8} {'ledger saving MiB':>18} {'share in peak':>14} "
                  f"{'build MiB':>10} {'s':>5}")
            dense_peak = None
            for scheme in schemes:
                start, keep = time.perf_counter(), {}
                peak = peak_heap(lambda: training_pass(make, scheme, x, y, args.steps, keep))  # noqa: B023
                build_peak = peak_heap(lambda: build(make, scheme, x))  # noqa: B023
                ledger = keep["ledger"]
                saving = (ledger["dense_total"] - ledger["total"]) / MiB
                if dense_peak is None:
                    dense_peak = peak
                share = f"{(dense_peak - peak) / MiB / saving:.0%}" if saving > 0.01 else "-"
                print(f"{scheme:26} {peak / MiB:9.1f} {peak / dense_peak:8.2f} {saving:18.1f} {share:>14} "
                      f"{build_peak / MiB:10.1f} {time.perf_counter() - start:5.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
