"""The command line: ``sparsebench run | grid | report | check | baselines update | continuous | study``.

Every failure the user can fix (bad arguments, missing data, missing baselines, unwritable
output) ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .arguments import UsageError, layer_list, positive_seconds, seed_value, writable_dir

EXIT_REGRESSION = 1  # the gate found a regression
EXIT_USAGE = 2  # the user asked for something that cannot be done as asked


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + traceback
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def add_cell_options(p: argparse.ArgumentParser) -> None:
    from .budgets import BUDGETS

    p.add_argument("--budget", default="ci", choices=list(BUDGETS), help="training budget (default: ci)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of weights, masks and batch order (default: 0)")
    p.add_argument("--data-dir", help="offline data directory with cifar10/ and imdb/ parquet files "
                                      "(default: $SPARSEBENCH_DATA_DIR, then ../shared/data)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda for the full budget when present, else cpu")
    p.add_argument("--seconds", type=positive_seconds,
                   help="train for this wall-clock time (> 0) instead of the budget's steps")
    p.add_argument("--keep-dense", type=layer_list, metavar="LAYER[,LAYER]",
                   help="keep these layers dense too, besides the model's first layer and classifier "
                        "(e.g. a layer a block pattern does not tile)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def add_executor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=["serial", "ray"], default="serial",
                   help="serial: one cell (study: point) after another here (default); ray: each one Ray task "
                        "(pip install 'sparsebench[ray]'), results written here as they arrive")
    p.add_argument("--address", help="with --executor ray: the Ray cluster, e.g. HEAD:6379 "
                                     "(default: start a local Ray instance)")


def executor_of(args):
    from .executors import get_executor

    options = {"address": args.address} | ({"progress": not args.quiet} if args.executor != "serial" else {})
    return get_executor(args.executor, **options)


def build_parser() -> Parser:
    from .archs import ARCHS
    from .budgets import BUDGETS
    from .grid import DEFAULT_ARCHS, DEFAULT_SCHEMES

    parser = Parser(prog="sparsebench", description="Train sparse CNN/Transformer cells and measure what sparsity "
                    "costs and buys: accuracy, peak memory, training and inference time, model size.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("run", help="train and measure one cell", description="Train one architecture under one "
                       "scheme and budget; write its result document (JSON).")
    p.add_argument("--arch", required=True, choices=list(ARCHS))
    p.add_argument("--scheme", required=True, help="PATTERN[@REPRESENTATION], e.g. dense, random:0.5@csr, "
                   "block:4x4:0.5@bsr, nm:2:4, magnitude:0.9")
    p.add_argument("--out", required=True, type=Path, help="result file to write (JSON)")
    add_cell_options(p)

    p = sub.add_parser("grid", help="run the grid of cells", description="Run every arch x scheme cell; each "
                       "result is written to OUT/<arch>/<scheme>.json as soon as it is done; then print the report.")
    p.add_argument("--out", required=True, type=Path, help="results directory")
    p.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), choices=list(ARCHS))
    p.add_argument("--schemes", nargs="+", default=list(DEFAULT_SCHEMES), help="default: the default grid: "
                   + " ".join(DEFAULT_SCHEMES))
    p.add_argument("--force", action="store_true", help="rerun cells already written in OUT with the same settings "
                   "(default: keep them, so an interrupted grid resumes)")
    add_executor_options(p)
    add_cell_options(p)

    p = sub.add_parser("report", help="tables and plots from a results directory",
                       description="Print the trade-off table and write report.md and PNG plots.")
    p.add_argument("results", type=Path, help="results directory (searched recursively)")
    p.add_argument("--out", type=Path, help="where report.md and the PNGs go (default: the results directory)")

    p = sub.add_parser("check", help="gate a results directory against the stored baselines",
                       description="Gate against the baselines of the machine class the results ran on (on a "
                       "class without baselines: the machine-independent metrics against the nearest class). "
                       "Exit 1 and list every regression (cell, metric, baseline, measured, tolerance) and every "
                       "cell of the run's grid (its grid.json, else the default grid) that has no result.")
    p.add_argument("results", type=Path)
    p.add_argument("--budget", default="ci")
    p.add_argument("--baselines", type=Path, default=Path("baselines"), help="baselines root (default: baselines)")

    p = sub.add_parser("baselines", help="manage stored baselines")
    bsub = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    u = bsub.add_parser("update", help="write baselines from complete, green result directories",
                        description="Write baselines/<budget>/<machine-class>/<arch>/<scheme>.json (and the class's "
                        "machine.json) from one or more complete runs of the default grid on this machine class "
                        "(several runs: their spread sets the tolerances). Atomic.")
    u.add_argument("results", type=Path, nargs="+", help="results directories (repeated runs of the same grid)")
    u.add_argument("--budget", default="ci")
    u.add_argument("--baselines", type=Path, default=Path("baselines"))
    u.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), choices=list(ARCHS))
    u.add_argument("--schemes", nargs="+", default=list(DEFAULT_SCHEMES))

    p = sub.add_parser("continuous", help="gate HEAD against BASE, both run side by side on this machine",
                       description="Run the grid's cells on two versions of this checkout, alternating cell by cell "
                       "on this machine (after `asv continuous`), and gate HEAD against BASE: the time ratio against "
                       "dense by HEAD's over BASE's with its 95%% interval (a regression only when the whole "
                       "interval lies beyond the tolerance), every other gated metric against BASE's value. Needs "
                       "no stored baselines: the time gate of a machine class that has none. Exit 1 on a "
                       "regression.")
    p.add_argument("base", metavar="BASE", help="the commit to compare with (id, branch, tag, HEAD~1, ...)")
    p.add_argument("head", metavar="HEAD", nargs="?", help="the commit to judge (default: the working tree)")
    p.add_argument("--out", type=Path, help="where both sides' result documents and comparison.json go "
                   "(default: results/continuous)")
    p.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), choices=list(ARCHS))
    p.add_argument("--schemes", nargs="+", default=list(DEFAULT_SCHEMES), help="default: the default grid")
    p.add_argument("--budget", default="ci", choices=list(BUDGETS), help="training budget (default: ci)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of every cell (default: 0)")
    p.add_argument("--data-dir", help="offline data directory (default: $SPARSEBENCH_DATA_DIR, then ../shared/data)")
    p.add_argument("--quiet", action="store_true", help="no progress output")

    from .study.command import add_study_parser

    add_study_parser(sub)
    add_executor_options(sub.choices["study"])  # each point one Ray task with --executor ray
    return parser


def budget_of(args):
    from .budgets import get_budget

    budget = get_budget(args.budget)
    return budget.with_seconds(args.seconds) if args.seconds is not None else budget


def settings_of(args):
    """The RunSettings of ``add_cell_options``' arguments: built here once, passed down as one value."""
    from .settings import RunSettings

    return RunSettings(seed=args.seed, data_dir=args.data_dir, device=args.device, progress=not args.quiet,
                       keep_dense=args.keep_dense or ())


def cmd_run(args) -> int:
    from .cell import Cell
    from .grid import preflight, run_one
    from .results import write_json_atomic

    cell = Cell.parse(args.arch, args.scheme)
    budget = budget_of(args)
    if args.out.is_dir():
        raise UsageError(f"--out {args.out} is a directory; name the result file, e.g. {args.out / 'result.json'}")
    writable_dir(args.out.resolve().parent)
    settings = settings_of(args)
    preflight([cell], budget, settings)
    result = run_one(cell, budget, None, settings)
    write_json_atomic(args.out, result.to_dict())
    if result.ok:
        print(f"{cell}: accuracy {result.accuracy:.4f}, train {result.train_time_s:.1f} s, "
              f"time x{result.time_ratio_vs_dense:.2f} of dense, peak {result.peak_memory_bytes / 2**20:.1f} MiB "
              f"-> {args.out}")
    else:
        print(f"{cell}: skipped ({result.reason}) -> {args.out}")
    return 0


def cmd_grid(args) -> int:
    from .grid import default_cells, run_grid
    from .report import build_report

    cells = default_cells(args.archs, args.schemes)
    budget = budget_of(args)
    writable_dir(args.out)
    executor = executor_of(args)  # ray missing: one line, before anything runs
    try:
        run_grid(cells, budget, args.out, settings_of(args), force=args.force, executor=executor)
    finally:
        executor.close()
    print(build_report(args.out))
    return 0


def cmd_report(args) -> int:
    from .report import build_report

    if not args.results.is_dir():
        raise UsageError(f"results directory {args.results} does not exist; make one with: sparsebench grid --out DIR")
    if args.out:
        writable_dir(args.out)
    print(build_report(args.results, args.out))
    return 0


def cmd_check(args) -> int:
    from .gate import check_dir

    report = check_dir(args.results, args.baselines, args.budget)
    print("\n".join(report.lines()))
    return 0 if report.ok else EXIT_REGRESSION


def cmd_baselines(args) -> int:
    from .baselines import update_baselines
    from .grid import default_cells

    for line in update_baselines(args.results, args.baselines, args.budget, default_cells(args.archs, args.schemes)):
        print(line)
    return 0


def cmd_continuous(args) -> int:
    from .archs import get_arch
    from .budgets import get_budget
    from .continuous import run_continuous
    from .data import resolve_data_dir
    from .grid import default_cells

    cells = default_cells(args.archs, args.schemes)
    budget = get_budget(args.budget)
    out = args.out or Path("results/continuous")
    writable_dir(out)
    # both sides read the data from one absolute place: BASE runs from its own source tree
    data = resolve_data_dir(args.data_dir, names=sorted({get_arch(a).data for a in args.archs if get_arch(a).data}))
    comparison = run_continuous(args.base, args.head, cells, budget, out, str(Path(data).resolve()), args.seed,
                                progress=not args.quiet)
    print("\n".join(comparison.lines()))
    return 0 if comparison.ok else EXIT_REGRESSION


def cmd_study(args) -> int:
    from .study.command import run_command

    executor = None if args.report_only else executor_of(args)  # ray missing: one line, before anything runs
    try:
        return run_command(args, executor)
    finally:
        if executor is not None:
            executor.close()


COMMANDS = {"run": cmd_run, "grid": cmd_grid, "report": cmd_report, "check": cmd_check, "baselines": cmd_baselines,
            "continuous": cmd_continuous, "study": cmd_study}


# what ``pip install 'sparsebench[bench]'`` adds to the library: the command line needs them, sparsify does not
HARNESS_MODULES = {"datasets", "pyarrow", "PIL", "tokenizers", "memray", "matplotlib", "tqdm", "pytest",
                   "pytest_benchmark", "xdist"}


def main(argv: list[str] | None = None) -> int:
    import importlib.util

    missing = sorted(m for m in HARNESS_MODULES if importlib.util.find_spec(m) is None)
    if missing:  # the library alone is installed: say what to install, in one line, before anything else
        print(f"sparsebench: error: the command line needs the benchmark harness, which is not installed here "
              f"(missing {', '.join(missing)}); pip install 'sparsebench[bench]'", file=sys.stderr)
        return 1
    try:
        return _main(argv)
    except ModuleNotFoundError as err:  # a harness module that find_spec saw but that does not import
        if (err.name or "").split(".")[0] not in HARNESS_MODULES:
            raise
        print(f"sparsebench: error: the command line needs the benchmark harness, which is not installed here "
              f"(no module {err.name!r}); pip install 'sparsebench[bench]'", file=sys.stderr)
        return 1


def _main(argv: list[str] | None) -> int:
    from .baselines import BaselineError
    from .data import DataNotFound
    from .executors import ExecutorUnavailable
    from .grid import ResultsLocked
    from .kernels import KernelsUnavailable

    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except KernelsUnavailable as err:  # required kernels that cannot build: one line, not a traceback
        print(f"sparsebench: error: {err}", file=sys.stderr)
        return 1
    except (UsageError, ValueError, DataNotFound, BaselineError, FileNotFoundError, PermissionError,
            ResultsLocked, ExecutorUnavailable) as err:
        message = str(err) if isinstance(err, UsageError) else f"sparsebench: error: {err}"
        print(message, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sparsebench: interrupted; results already written are complete, the cell in flight was dropped",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
