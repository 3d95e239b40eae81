"""Do the tests catch real faults? For each fault below: copy the repository to a temp dir, put the
fault in (one exact source text replaced), run the tests that should catch it, and expect them to fail.
Each selection is also run on the unchanged copy, where it must pass (the fault reverted).

    python tools/fault_check.py              # every fault
    python tools/fault_check.py -k masked    # faults whose name contains "masked"
    python tools/fault_check.py --no-clean   # skip the unchanged runs

One line per fault: CAUGHT (the tests failed with the fault in), MISSED (they passed: a test is
missing), or STALE (the source text is no longer in the file: update the fault). Exit status 0 only
if every fault is CAUGHT and every unchanged run passes.

Adding a fault is one ``Fault(...)`` entry in ``FAULTS``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".nox" / "tests" / "bin" / "python"


@dataclass(frozen=True)
class Fault:
    name: str
    file: str  # relative to the repository root
    source: str  # exact text, found exactly once in the file
    replacement: str
    pytest_args: tuple[str, ...]  # the tests that must catch it


FAULTS = [
    Fault("masked stops masking the weight gradient",
          "sparsebench/representations/masked.py",
          "return grad.mul_(ctx.kept), None\n        return grad * ctx.kept, None",
          "return grad, None\n        return grad, None",
          ("tests/test_representations.py", "-k", "masked")),
    Fault("make_mask keeps one weight more than the rounding rule (in the rule)",
          "sparsebench/patterns.py",
          "return min(math.floor(sparsity * n + 0.5), n - 1)",
          "return max(min(math.floor(sparsity * n + 0.5), n - 1) - 1, 0)",
          ("tests/test_patterns.py",)),
    Fault("make_mask keeps one weight more than the rounding rule (in the mask)",
          "sparsebench/patterns.py",
          "mask[tied[n_zero - int(torch.count_nonzero(keys < lo)):]] = True",
          "mask[tied[n_zero - 1 - int(torch.count_nonzero(keys < lo)):]] = True",
          ("tests/test_patterns.py",)),
    Fault("the csr kernel drops one kept value from the forward product",
          "sparsebench/kernels/csrc/csr.cpp",
          "v1 = vals[IND ? perm[k + 1] : k + 1];",
          "v1 = i == 0 ? 0.f : vals[IND ? perm[k + 1] : k + 1];",
          ("tests/test_kernels.py",)),
    Fault("the bsr_cpp forward kernel drops the bias of RxC blocks",
          "sparsebench/kernels/csrc/bsr.cpp",
          "for (int j = 0; j < NV; ++j) b0[j] = bias ? loadu<L>(bias + br * R + j * L) : V{};",
          "for (int j = 0; j < NV; ++j) b0[j] = V{};",
          ("tests/test_kernels.py", "-k", "bsr")),
    Fault("the gate compares accuracy in the wrong direction",
          "sparsebench/gate.py",
          "bad = measured < value - tol",
          "bad = measured > value + tol",
          ("tests/test_gate.py",)),
    Fault("the gate passes a grid result directory missing one expected cell",
          "sparsebench/gate.py",
          "for c in expected if (c.arch, str(c.scheme)) not in have]",
          "for c in expected if (c.arch, str(c.scheme)) not in have][1:]",
          ("tests/test_gate.py",)),
    Fault("the baseline tolerance rule loses its cap on the time ratio", "sparsebench/baselines.py",
          "tol = min(tol, cap * abs(median))", "tol = tol",
          ("tests/test_baselines.py", "-k", "tolerance_rule")),
    Fault("the time ratio's tolerance takes 3 x the runs' spread like the other metrics",
          "sparsebench/baselines.py",
          "_SPREAD_MULTIPLE = {\"time_ratio_vs_dense\": 2.0}",
          "_SPREAD_MULTIPLE = {}",
          ("tests/test_baselines.py", "-k", "tolerance_rule")),
    Fault("a baselines update swaps its class directory without the budget lock", "sparsebench/baselines.py",
          "    return locked(budget_dir)", "    return open(os.devnull)",
          ("tests/test_baselines.py::test_an_update_waits_for_the_budget_lock_and_leaves_no_lock_file",)),
    Fault("data: the cache key ignores a changed source file",
          "sparsebench/data/cache.py",
          "return key(*((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files.values()))",
          "return key(*(str(p) for p in files.values()))",
          ("tests/test_data.py", "-k", "changed_data")),
    Fault("data: a cached entry with labels out of range is used",
          "sparsebench/data/cache.py",
          "if len(y) and (int(y.min()) < 0 or int(y.max()) >= N_CLASSES[name]):",
          "if False:",
          ("tests/test_data.py", "-k", "labels_out_of_range")),
    Fault("data: the cache is built without holding its lock (<cache>/<name>.lock)",
          "sparsebench/data/cache.py",
          'with locked(path.parent / f"{name}.lock"):',
          'with locked(path.parent / f"{name}.lock-not-shared"):',
          ("tests/test_data.py", "-k", "holding_its_lock")),
    Fault("the one lock primitive never waits for a holder (every shared writer races)",
          "sparsebench/atomic.py",
          "fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait_s is None and told else fcntl.LOCK_NB))",
          "pass",
          ("tests/test_atomic.py",)),
    Fault("a scheme's pattern family keeps its sparsity level (the study would sweep one point per family)",
          "sparsebench/patterns.py",
          'return f"block:{self.rows}x{self.cols}"',
          'return str(self)',
          ("tests/test_schemes.py",)),
    Fault("the learning curve's clock keeps running while the slice is evaluated",
          "sparsebench/train.py",
          "                seconds += time.perf_counter() - start\n"
          "                curve.add(len(losses), seconds, slice_accuracy())\n",
          "                accuracy = slice_accuracy()\n"
          "                seconds += time.perf_counter() - start\n"
          "                curve.add(len(losses), seconds, accuracy)\n",
          ("tests/test_curves.py",)),
    Fault("time to accuracy takes a point just below the target as reached",
          "sparsebench/curves.py",
          'return next((p["seconds"] for p in points if p["accuracy"] >= target), None)',
          'return next((p["seconds"] for p in points if p["accuracy"] >= target - 0.01), None)',
          ("tests/test_curves.py", "tests/test_study_analysis.py")),
    Fault("time to accuracy pairs a pattern with another seed's dense",
          "sparsebench/study/analysis.py",
          "targets = {s: final_accuracy(dense[s]) - drop / 100 for s in seeds}",
          "targets = {s: final_accuracy(dense[min(dense)]) - drop / 100 for s in seeds}",
          ("tests/test_study_analysis.py",)),
    Fault("a drop-and-grow gives grown weights the values of dropped ones (not zero)",
          "sparsebench/restructure.py",
          "out = t.new_zeros((len(new_idx), *t.shape[1:]))",
          "out = t[torch.arange(len(new_idx), device=t.device) % max(len(t), 1)].clone()",
          ("tests/test_mask_updates.py", "-k", "masked_reference")),
    Fault("masked keeps the values of dropped weights after a mask update",
          "sparsebench/restructure.py",
          "param.mul_(both)  # dropped: zero",
          "param.mul_(1.0)  # dropped: zero",
          ("tests/test_mask_updates.py", "-k", "masked_reference")),
    Fault("RigL grows where the dense gradient is smallest",
          "sparsebench/updater.py",
          "out[torch.topk(free, k, sorted=False).indices] = True",
          "out[torch.topk(free.masked_fill(units.reshape(-1), math.inf), k, largest=False).indices] = True",
          ("tests/test_mask_updates.py", "-k", "rigl_grows")),
    Fault("ERK loses its largest-remainder step (the total is short of S)",
          "sparsebench/distributions.py",
          "    while short > 0:\n",
          "    while short > 0 and False:\n",
          ("tests/test_schedules.py", "-k", "erk")),
    Fault("GMP's cubic schedule becomes linear",
          "sparsebench/schedules.py",
          "return sparsity * (1.0 - (1.0 - progress) ** 3)",
          "return sparsity * progress",
          ("tests/test_schedules.py", "-k", "gmp")),
    Fault("a gradual schedule never moves a layer to sparse storage",
          "sparsebench/updater.py",
          "        if not fits:\n            return\n",
          "        if True:\n            return\n",
          ("tests/test_mask_updates.py", "-k", "gradual")),
    Fault("layers are chosen by exact type again (torch's attention out_proj is left dense)",
          "sparsebench/sparsify.py",
          "if isinstance(m, _KINDS) and not _own_forward(m)]",
          "if type(m) in _KINDS]",
          ("tests/test_library.py", "-k", "attention")),
    Fault("a Linear subclass with its own forward is replaced (its function changes)",
          "sparsebench/sparsify.py",
          "return type(module).forward is not base.forward",
          "return False",
          ("tests/test_library.py", "-k", "left_dense")),
    Fault("a sparse conv ignores its padding mode",
          "sparsebench/representations/base.py",
          'if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):',
          'if not isinstance(conv.padding, str):',
          ("tests/test_library.py", "-k", "padding")),
    Fault("unsparsify loses the pruned zeros (copies the initial dense weight)",
          "sparsebench/representations/base.py",
          "layer.weight.copy_(sparse.sparse_weight.to_dense())",
          "layer.weight.copy_(sparse.sparse_weight.to_dense() + 0.01)",
          ("tests/test_library.py", "-k", "unsparsify")),
    Fault("moving a bsr_cpp model to float64 is not refused at .to()",
          "sparsebench/representations/bsr_cpp.py",
          'return "its kernels run float32 on the CPU only"',
          "return None",
          ("tests/test_library.py", "-k", "dtype")),
    Fault("importing sparsebench turns the user's sparse invariant checks off",
          "sparsebench/representations/__init__.py",
          "from .base import RepresentationUnavailable",
          "import torch\ntorch.sparse.check_sparse_tensor_invariants.disable()\n"
          "from .base import RepresentationUnavailable",
          ("tests/test_library.py", "-k", "global")),
    Fault("a checkpoint drops the Adam moments of pruned weights",
          "sparsebench/checkpoint.py",
          "v = sw.densify(v.detach())[mask]  # at the kept positions, like the values",
          "v = torch.zeros(int(mask.sum()), dtype=v.dtype)",
          ("tests/test_checkpoint.py", "-k", "every_representation")),
    Fault("the kernels' load state is traced by torch.compile (a graph break)",
          "sparsebench/kernels/__init__.py",
          "        return _loader.loaded_variant() is not None\n",
          "        return _loader.state().variant is not None\n",
          ("tests/test_compile.py",)),
    Fault("the direct conv tile drops each entry list's last kept weight (forward and input gradient)",
          "sparsebench/kernels/csrc/conv_tiles.h",
          "  for (int64_t e = 0; e < ne; ++e) {\n    const float* xp = X + off[e];",
          "  for (int64_t e = 0; e + 1 < ne; ++e) {\n    const float* xp = X + off[e];",
          ("tests/test_kernels_conv.py",)),
    Fault("the direct conv weight gradient skips each row's last output position",
          "sparsebench/kernels/csrc/conv_tiles.h",
          "  for (int64_t p = 0; p < npos; ++p)",
          "  for (int64_t p = 0; p + 1 < npos; ++p)",
          ("tests/test_kernels_conv.py",)),
    Fault("the direct conv input gradient puts every kernel row in phase 0 (wrong for strides above 1)",
          "sparsebench/kernels/csrc/conv_tiles.h",
          "const int64_t rh = ((i - g.PH) % g.SH + g.SH) % g.SH,",
          "const int64_t rh = 0 * (((i - g.PH) % g.SH + g.SH) % g.SH),",
          ("tests/test_kernels_conv.py",)),
    Fault("the conv output's register transpose skips a stage (channels-last write-out)",
          "sparsebench/kernels/csrc/conv.cpp",
          "  transpose_stage<2>(r);\n",
          "",
          ("tests/test_kernels_conv.py",)),
    Fault("the width conv forward ignores the row stride",
          "sparsebench/kernels/csrc/conv_width.cpp",
          "xn + oh0 * g.SH * sr + q0 * L, g.SH * sr,",
          "xn + oh0 * sr + q0 * L, sr,",
          ("tests/test_kernels_conv.py", "-k", "width")),
    Fault("the width conv packing ignores the column phase of a stride",
          "sparsebench/kernels/csrc/conv_width.cpp",
          "off[e] = c * X.sc() + i * X.sr() + (w % X.S) * X.Wq + w / X.S;",
          "off[e] = c * X.sc() + i * X.sr() + w;",
          ("tests/test_kernels_conv.py", "-k", "width")),
    Fault("the width conv input gradient writes a strided phase contiguously",
          "sparsebench/kernels/csrc/conv_width.cpp",
          "for (int64_t v = 0; v < width; ++v) dst[v * g.SW] = src[v];",
          "for (int64_t v = 0; v < width; ++v) dst[v] = src[v];",
          ("tests/test_kernels_conv.py", "-k", "width")),
    Fault("the width conv weight gradient skips each image's last output row",
          "sparsebench/kernels/csrc/conv_width.cpp",
          "g.OH, g.SH * X.sr(), nvw,",
          "g.OH - 1, g.SH * X.sr(), nvw,",
          ("tests/test_kernels_conv.py", "-k", "width")),
    Fault("the conv path choice keeps the slowest measured path",
          "sparsebench/representations/conv_paths.py",
          "chosen = min(times, key=times.get)",
          "chosen = max(times, key=times.get)",
          ("tests/test_conv_paths.py",)),
    Fault("a forced conv path is ignored (the measured one runs)",
          "sparsebench/representations/conv_paths.py",
          "    if _forced:\n        return _forced[-1]\n",
          "",
          ("tests/test_conv_paths.py",)),
    Fault("the time gate judges a timing by its interval's far end (noise fails the gate)",
          "sparsebench/gate.py",
          "interval[0] if better == \"lower\" else interval[1]",
          "interval[1] if better == \"lower\" else interval[0]",
          ("tests/test_gate.py", "-k", "interval")),
    Fault("a masked cell timed faster than dense is no longer a measurement fault at all",
          "sparsebench/gate.py",
          "ci[1] >= 1.0 - FAULT_BIAS:",
          "ci[1] >= 0.0:",
          ("tests/test_gate.py", "-k", "fault")),
    Fault("the measurement-fault rule ignores the pairs' bias (dense against itself alarms)",
          "sparsebench/gate.py",
          "ci[1] >= 1.0 - FAULT_BIAS:",
          "ci[1] >= 1.0:",
          ("tests/test_gate.py", "-k", "fault")),
    Fault("a study accuracy document made with other training settings is kept",
          "sparsebench/study/documents.py",
          "budget = {k: v for k, v in settings[\"budget\"].items() if k not in _NOT_ACCURACY_SETTINGS}",
          "budget = {}",
          ("tests/test_study.py", "-k", "timing_pairs")),
    Fault("the time ratio's interval resamples the two steps of a pair apart (the pairing lost)",
          "sparsebench/timing.py",
          "ratios = np.median(cand[idx], axis=1) / np.median(ref[idx], axis=1)",
          "ratios = np.median(cand[idx], axis=1) / np.median(ref[idx[::-1]], axis=1)",
          ("tests/test_timing.py",)),
    Fault("peak memory is no longer gated on a machine class without baselines",
          "sparsebench/gate.py",
          "\"ledger_bytes\", \"peak_memory_bytes\")",
          "\"ledger_bytes\")",
          ("tests/test_gate.py", "-k", "class_without_baselines")),
    Fault("the side-by-side gate never fails on time",
          "sparsebench/continuous.py",
          "ok = low <= 1 + TIME_TOLERANCE",
          "ok = True",
          ("tests/test_continuous.py",)),
    Fault("a side's cells run from the caller's directory, not the side's own tree",
          "sparsebench/continuous.py",
          "done = subprocess.run(command, env=side.environment(), cwd=side.tree, capture_output=True, text=True)",
          "done = subprocess.run(command, env=side.environment(), cwd=Path.cwd(), capture_output=True, text=True)",
          ("tests/test_continuous.py",)),
    Fault("a conv path chosen with other kernels is reused",
          "sparsebench/representations/conv_paths.py",
          'key = "|".join([this_machine(kernels.variant(), x.device)[1], kernels.build_key(), layer])',
          'key = "|".join([this_machine(kernels.variant(), x.device)[1], layer])',
          ("tests/test_conv_paths.py",)),
    Fault("the side-by-side gate judges time from too few pairs",
          "sparsebench/continuous.py",
          "if pairs < MIN_GATED_PAIRS:",
          "if False:",
          ("tests/test_continuous.py", "-k", "few_pairs")),

]


def repo_files(root: Path) -> list[str]:
    """Tracked files and untracked ones git does not ignore: the working tree as a fresh clone plus edits."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         check=True, capture_output=True).stdout
    return sorted({f for f in out.decode().split("\0") if f and (root / f).is_file()})


def copy_repo(root: Path, dest: Path) -> None:
    for f in repo_files(root):
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, dest / f)


def run_tests(python: str, workdir: Path, args: tuple[str, ...], timeout: int) -> tuple[int, str]:
    """pytest on the copy in ``workdir`` (its sparsebench first on the path, not the installed one)."""
    # kernels required, as in CI: a kernel that fails its load-time smoke test is an error, not a skip
    env = {**os.environ, "PYTHONPATH": str(workdir), "PYTHONDONTWRITEBYTECODE": "1", "SPARSEBENCH_REQUIRE_KERNELS": "1"}
    where = subprocess.run([python, "-c", "import sparsebench; print(sparsebench.__file__)"], cwd=workdir, env=env,
                           capture_output=True, text=True)
    if not where.stdout.strip().startswith(str(workdir)):
        raise RuntimeError(f"the copy's sparsebench is not the one imported: {where.stdout or where.stderr}")
    try:
        done = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args], cwd=workdir,
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timed out"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, lines[-1] if lines else ""


def check(fault: Fault, python: str, clean: bool, timeout: int) -> bool:
    with tempfile.TemporaryDirectory(prefix="fault-check-") as tmp:
        workdir = Path(tmp)
        copy_repo(ROOT, workdir)
        ok = True
        if clean:
            rc, tail = run_tests(python, workdir, fault.pytest_args, timeout)
            if rc != 0:
                print(f"FAILS-CLEAN  {fault.name}: the tests fail without the fault ({tail})", flush=True)
                ok = False
        target = workdir / fault.file
        text = target.read_text()
        if text.count(fault.source) != 1:
            print(f"STALE   {fault.name}: source text found {text.count(fault.source)} times in {fault.file}",
                  flush=True)
            return False
        target.write_text(text.replace(fault.source, fault.replacement))
        rc, tail = run_tests(python, workdir, fault.pytest_args, timeout)
        caught = rc in (1, 2)  # tests failed, or collection stopped by an error (5: nothing ran is not a catch)
        print(f"{'CAUGHT' if caught else 'MISSED'}  {fault.name}  [{' '.join(fault.pytest_args)}: {tail}]", flush=True)
        return ok and caught


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="only faults whose name contains this text")
    parser.add_argument("--no-clean", action="store_true", help="skip running each selection without its fault")
    parser.add_argument("--python", default=str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable,
                        help="the interpreter that runs pytest (default: the nox tests venv)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per pytest run")
    args = parser.parse_args()
    faults = [f for f in FAULTS if args.k in f.name]
    results = [check(f, args.python, not args.no_clean, args.timeout) for f in faults]
    print(f"{sum(results)}/{len(results)} faults caught" + ("" if args.no_clean else ", unchanged tests passing"))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
