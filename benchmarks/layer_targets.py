"""The kernel variants' layer table: one training step (forward, backward with input gradient, fused
Adam) of the transformer's feed-forward layer (4096 tokens x 512 -> 2048) and of the seed CNN's
sparse conv layers (conv2, conv3; batch 64), sparse against dense, timed interleaved in one process
on 2 threads, for each kernel variant this CPU runs; on the conv layers SparseProp too, where it is
installed (``pip install sparseprop``, best in its own environment: it builds with -march=native).

    python benchmarks/layer_targets.py [--isa avx512 avx2 generic] [--layers ffn conv2 conv3]
                                       [--steps 10] [--repeats 3] [--out docs/layers.md]

A process loads one kernel variant, so each variant is measured in its own child process with
SPARSEBENCH_CPU_ISA set. A variant below this CPU's best is measured twice: against dense capped to
the same instruction set (MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA), which is what a machine of
that kind measures and what the targets apply to, and against dense at this CPU's full set
(reported). Each cell is measured ``--repeats`` times (fresh interleaved runs of ``--steps`` steps
each) and the median speed-up is reported, with the range. Also ``nox -s layers -- --targets``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
THREADS = 2
# (layer shape, scheme) -> the speed-up against dense the avx512 and avx2 variants must reach (None: reported only)
TARGETS = {
    ("ffn", "block:16x16:0.9@bsr_cpp"): 2.5,
    ("ffn", "block:32x32:0.9@bsr_cpp"): 2.5,
    ("ffn", "block:16x16:0.95@bsr_cpp"): 4.0,
    ("ffn", "block:32x32:0.95@bsr_cpp"): 4.0,
    ("ffn", "block:4x4:0.9@bsr_cpp"): 2.0,
    ("ffn", "block:16x16:0.5@bsr_cpp"): 1.3,
    ("ffn", "random:0.9@csr"): 1.7,
    ("ffn", "block:16x16:0.9@auto"): 2.5,
    ("ffn", "block:32x32:0.9@auto"): 0.95,
    ("ffn", "block:16x16:0.95@auto"): 0.95,
    ("ffn", "block:32x32:0.95@auto"): 0.95,
    ("ffn", "block:4x4:0.9@auto"): 0.95,
    ("ffn", "block:16x16:0.5@auto"): 0.95,
    ("ffn", "random:0.9@auto"): 0.95,
    ("conv2", "random:0.9@csr"): 1.5,
    ("conv2", "random:0.95@csr"): 2.5,
    ("conv2", "block:4x4:0.9@bsr_cpp"): 1.5,
    ("conv3", "random:0.9@csr"): 1.5,
    ("conv3", "random:0.95@csr"): 2.5,
    ("conv3", "block:4x4:0.9@bsr_cpp"): 1.5,
}
# layers whose schemes are also measured through SparseProp, where it is installed: ours must be at least as fast
PEER_LAYERS = {"conv2", "conv3"}
LAYERS = list(dict.fromkeys(shape for shape, _ in TARGETS))
GATED = {"avx512", "avx2"}
# how the dense reference (torch's MKL and oneDNN) is held to a variant's instruction set
DENSE_CAPS = {"avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
              "generic": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}}


def _speedups(dense, other, steps: int, repeats: int):
    from sparsebench.timing import interleaved, time_ratio

    runs, dense_ms, other_ms = [], [], []
    for _ in range(repeats):
        ref, cand = interleaved(dense.step, other.step, steps, warmup=1)
        runs.append(1 / time_ratio(ref, cand))
        dense_ms.append(1e3 * statistics.median(ref))
        other_ms.append(1e3 * statistics.median(cand))
    return runs, statistics.median(dense_ms), statistics.median(other_ms)


def measure(steps: int, repeats: int, layers: list[str]) -> dict:
    """In this process (one variant): per (layer, scheme), the speed-ups of ``repeats`` interleaved
    runs, and SparseProp's on the same layer where it applies and is installed."""
    import torch

    sys.path.insert(0, str(HERE))
    from layer_step import LayerStep, PeerStep, peer_unavailable

    from sparsebench import kernels
    from sparsebench.machine import cpu_identity

    torch.set_num_threads(THREADS)
    kernels.available()  # build/load before anything is timed
    peer_missing = peer_unavailable()
    rows = []
    for layer in layers:
        dense = LayerStep(layer, "dense")
        for (shape, scheme) in TARGETS:
            if shape != layer:
                continue
            sparse = LayerStep(layer, scheme)
            runs, dense_ms, sparse_ms = _speedups(dense, sparse, steps, repeats)
            row = {"layer": layer, "scheme": scheme, "speedups": runs, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                   "stored_as": sparse.representation()}
            note = ""
            if layer in PEER_LAYERS and peer_missing is None:
                peer = PeerStep(sparse)
                peer_runs, _, peer_ms = _speedups(dense, peer, steps, repeats)
                row |= {"peer_speedups": peer_runs, "peer_ms": peer_ms, "peer_as": peer.representation()}
                note = f", SparseProp {statistics.median(peer_runs):.2f}x"
            rows.append(row)
            print(f"  {layer:6s} {scheme:28s} {statistics.median(runs):5.2f}x  ({sparse.representation()}{note})",
                  file=sys.stderr, flush=True)
    cpu = cpu_identity()
    return {"variant": kernels.variant(), "forced": kernels.variant_forced(), "cpu": cpu,
            "torch": torch.__version__, "rows": rows, "peer_missing": peer_missing}


def table(result: dict) -> list[str]:
    v = result["variant"]
    cpu = result["cpu"]
    caches = ", ".join(f"{k} {b // 1024} KiB" for k, b in cpu["caches"].items() if k in ("L2", "L3"))
    how = "forced with SPARSEBENCH_CPU_ISA" if result["forced"] else "native"
    capped = result.get("dense_capped")
    how += (f"; dense capped to the same instruction set ({capped}), as on such a machine" if capped
            else "; dense at this CPU's full instruction set")
    gated = v in GATED and (capped or v == result.get("best"))
    peer = ("SparseProp: " + result["peer_missing"]) if result.get("peer_missing") else (
        "SparseProp (`pip install sparseprop`, built with -march=native) on the same layer, kept weights, "
        "threads and interleaving; its speed-up is against the same dense layer")
    lines = [f"### `{v}` ({how})", "",
             f"CPU: {cpu['name']} (vendor {cpu['vendor']}, family {cpu['family']}, model {cpu['model']}; {caches}; "
             f"{cpu['cores']} cores), {THREADS} threads, torch {result['torch']}. {peer}.", "",
             "| layer | scheme | stored as | dense ms | sparse ms | speed-up (median) | range | target "
             "| SparseProp (median, range) | vs SparseProp |",
             "| --- | --- | --- | ---: | ---: | ---: | --- | --- | --- | --- |"]
    for row in result["rows"]:
        med = statistics.median(row["speedups"])
        target = TARGETS[(row["layer"], row["scheme"])]
        verdict = "reported" if not gated else (f">= {target}x " + ("met" if med >= target else "**missed**"))
        peer_cell = peer_verdict = "-"
        if "peer_speedups" in row:
            pmed = statistics.median(row["peer_speedups"])
            peer_cell = f"{pmed:.2f}x ({min(row['peer_speedups']):.2f}-{max(row['peer_speedups']):.2f}x)"
            peer_verdict = f"{med / pmed:.2f}x " + ("(at least as fast)" if med >= pmed else "(**slower**)")
        lines.append(f"| {row['layer']} | `{row['scheme']}` | {row['stored_as']} | {row['dense_ms']:.1f} | "
                     f"{row['sparse_ms']:.1f} | {med:.2f}x | {min(row['speedups']):.2f}-{max(row['speedups']):.2f}x | "
                     f"{verdict} | {peer_cell} | {peer_verdict} |")
    return lines + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isa", nargs="+", help="variants to measure (default: every one this CPU runs)")
    parser.add_argument("--steps", type=int, default=10, help="interleaved steps per run (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the median is reported (default 3)")
    parser.add_argument("--out", default="docs/layers.md", help="markdown file to write (default docs/layers.md)")
    parser.add_argument("--layers", nargs="+", choices=LAYERS, default=list(LAYERS),
                        help="layer shapes to measure (default: all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.steps, args.repeats, args.layers)))
        return 0
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    from layer_step import describe

    from sparsebench import kernels

    supported = kernels.supported_variants()
    best = supported[0]
    variants = args.isa or supported
    results = []
    for v in variants:
        caps = [DENSE_CAPS[v], {}] if v != best and v in DENSE_CAPS else [{}]
        for cap in caps:
            print(f"variant {v}" + (f", dense capped ({cap})" if cap else "") + ":", file=sys.stderr, flush=True)
            env = dict(os.environ, SPARSEBENCH_CPU_ISA=v, OMP_NUM_THREADS=str(THREADS), **cap)
            env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            proc = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps),
                                   "--repeats", str(args.repeats), "--layers", *args.layers],
                                  env=env, stdout=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                print(f"variant {v} failed (exit {proc.returncode})", file=sys.stderr)
                return 1
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["best"] = best
            result["dense_capped"] = ", ".join(f"{k}={val}" for k, val in cap.items()) or None
            results.append(result)
    command = "python benchmarks/layer_targets.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    lines = ["# Layer benchmark per kernel variant", "",
             f"Generated by `{command.strip()}` (or `nox -s layers -- --targets`); do not edit by hand.", "",
             "One training step (forward, backward with input gradient, fused Adam) of a layer, against the same "
             "layer dense, at these shapes: " + "; ".join(f"{k}: {describe(k)}" for k in args.layers) + "; "
             f"measured interleaved in one process on {THREADS} threads; speed-up = dense time / sparse time "
             f"(medians of {args.steps} steps; median of {args.repeats} runs, with their range). The targets "
             "apply to `avx512` and `avx2`, each against dense at its own instruction set (a "
             "variant below this CPU's best is also shown against dense at the full set, reported only); "
             "`generic` is reported as measured. The process uses the harness's allocator setting "
             "(sparsebench/allocator.py), dense and sparse alike.", ""]
    for result in results:
        lines += table(result)
    text = "\n".join(lines)
    print(text)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
