"""``sparsebench study``: its arguments (added to the command line's parser) and what it does.

Bad input raises ValueError / argparse errors with one line; the command line turns them into one
line on stderr and exit status 2 (``cli.main``).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..arguments import seed_count, sparsity_level, writable_dir
from ..patterns import Pattern
from ..settings import RunSettings
from .points import (
    COST_BUDGETS,
    DEFAULT_LEVELS,
    DEFAULT_REPRESENTATIONS,
    FAMILIES,
    FIXED,
    LEVELS,
    METHODS,
    REPRESENTATIONS,
    Sweep,
)

DEFAULT_OUT = Path("results/study")


def pattern_type(text: str) -> str | Pattern:
    """A pattern family without its sparsity (``block:4x4``: its canonical text) or a fixed pattern
    (``nm:2:4``: the pattern value)."""
    from ..schemes import parse_scheme

    try:
        scheme = parse_scheme(text)
    except ValueError:
        try:
            return parse_scheme(f"{text}:0.5").pattern.family
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a pattern family (e.g. random, block:4x4) or a "
                                             f"fixed pattern (e.g. nm:2:4)") from None
    if "@" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: give patterns without a representation (see --representations)")
    if scheme.pattern.level is not None or not scheme.pattern.sparse:
        raise argparse.ArgumentTypeError(f"{text!r}: give a family without its sparsity (e.g. "
                                         f"{scheme.pattern.family}) and the levels with --levels")
    return scheme.pattern


def add_study_parser(sub) -> None:
    from ..archs import ARCHS
    from ..budgets import BUDGETS

    p = sub.add_parser(
        "study", help="the study: accuracy and cost across patterns, sparsity levels and representations",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Accuracy and its learning curve once per (arch, pattern, sparsity, seed) on the "
        "accuracy budget, trained with PATTERN@auto (time to accuracy from the curves); cost (step time "
        "split forward/backward/optimizer, peak memory, ledger, model size, "
        "inference) per (arch, size, pattern, sparsity, representation) against dense, interleaved in one "
        "process. One JSON document per point under OUT (an interrupted study resumes; --force reruns), then "
        "STUDY.md and PNG plots.",
        epilog="Default cost subset (--all lifts it): auto at every point; "
        + ", ".join(r for r in REPRESENTATIONS if r not in ("auto", "masked")) + " at S = 0.5 and 0.9 "
        "and for nm:2:4; masked once per pattern at S = 0.9 (its cost does not depend on S); magnitude at the "
        "ci size only (its cost is random's). --budget converge: S = 0.9 only and auto only, costed at the "
        "converge size: about 2 hours on 2 cores with one seed.\n\n"
        "Examples:\n  sparsebench study                      # the default study\n"
        "  sparsebench study --seeds 3 --only accuracy\n"
        "  sparsebench study --budget converge --out results/study-converge   # time to accuracy\n"
        "  sparsebench study --budget converge --methods default   # + gmp, oneshot, set, rigl, erk\n"
        "  sparsebench study --archs cnn --patterns block:16x16 --levels 0.9 --sizes reference\n"
        "  sparsebench study --report-only          # regenerate STUDY.md from the documents")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"study directory (default: {DEFAULT_OUT})")
    p.add_argument("--report-dir", type=Path, help="where STUDY.md and the PNGs go (default: OUT)")
    p.add_argument("--budget", default="ci", choices=sorted(COST_BUDGETS),
                   help="accuracy budget; it also picks the sizes costed (ci: ci and reference; converge: converge; "
                   "smoke: smoke)")
    p.add_argument("--sizes", nargs="+", choices=[b for b in BUDGETS if b != "full"],
                   help="budgets whose model sizes and batch are costed (default: by --budget)")
    p.add_argument("--seeds", type=seed_count, default=1, help="seeds per accuracy point (default 1)")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--patterns", nargs="+", type=pattern_type, metavar="PATTERN",
                   help="pattern families and fixed patterns (default: " + " ".join(map(str, FAMILIES + FIXED)) + ")")
    p.add_argument("--levels", nargs="+", type=sparsity_level, metavar="S",
                   help="sparsity levels (default: " + " ".join(map(str, LEVELS)) + "; with --budget converge "
                   + " ".join(map(str, DEFAULT_LEVELS["converge"])) + "; with --budget smoke "
                   + " ".join(map(str, DEFAULT_LEVELS["smoke"])) + ")")
    p.add_argument("--representations", nargs="+", choices=list(REPRESENTATIONS),
                   help="representations costed (default: all that apply; with --budget converge: auto)")
    p.add_argument("--all", action="store_true", help="cost every representation at every point and size")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="also train FAMILY/SCHEDULE[/DISTRIBUTION] accuracy points at --levels, masks chosen or moved "
                        "during training (e.g. magnitude/gmp random/rigl/erk block:16x16/rigl); 'default' for "
                        + " ".join(METHODS))
    p.add_argument("--only", choices=["accuracy", "cost"], help="run only one of the two sweeps")
    p.add_argument("--report-only", action="store_true", help="measure nothing; write STUDY.md from OUT")
    p.add_argument("--force", action="store_true", help="remeasure points already in OUT")
    p.add_argument("--data-dir", help="offline data directory (default: $SPARSEBENCH_DATA_DIR, then ../shared/data)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cpu")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def sweep_of(args) -> Sweep:
    patterns = args.patterns or list(FAMILIES + FIXED)
    levels = args.levels or DEFAULT_LEVELS[args.budget]
    return Sweep(archs=tuple(args.archs), families=tuple(p for p in patterns if isinstance(p, str)),
                 levels=tuple(sorted(set(levels))), fixed=tuple(p for p in patterns if not isinstance(p, str)),
                 representations=tuple(args.representations
                                       or DEFAULT_REPRESENTATIONS.get(args.budget, REPRESENTATIONS)), seeds=args.seeds,
                 budget=args.budget, sizes=tuple(args.sizes or COST_BUDGETS[args.budget]),
                 all_costs=args.all, accuracy=args.only != "cost", cost=args.only != "accuracy",
                 methods=methods_of(args.methods))


def methods_of(names: list[str] | None) -> tuple[str, ...]:
    """``--methods``: the names given, ``default`` standing for ``points.METHODS``."""
    out: list[str] = []
    for name in names or []:
        out += list(METHODS) if name == "default" else [name]
    return tuple(dict.fromkeys(out))


def command_line(args) -> str:
    """The command that regenerates this report (measuring what is missing), from the parsed arguments."""
    words = ["sparsebench", "study", "--out", str(args.out)]
    if args.report_dir:
        words += ["--report-dir", str(args.report_dir)]
    for flag in ("budget", "seeds"):
        if getattr(args, flag) != {"budget": "ci", "seeds": 1}[flag]:
            words += [f"--{flag}", str(getattr(args, flag))]
    for flag in ("sizes", "archs", "patterns", "levels", "representations", "methods"):
        if getattr(args, flag) and (flag != "archs" or args.archs != list(_arch_names())):
            words += [f"--{flag}", *map(str, getattr(args, flag))]
    for flag in ("all", "report_only"):
        if getattr(args, flag):
            words.append("--" + flag.replace("_", "-"))
    if args.only:
        words += ["--only", args.only]
    return " ".join(shlex.quote(w) for w in words)


def _arch_names():
    from ..archs import ARCHS

    return ARCHS


def settings_of(args) -> RunSettings:
    """The run settings every point uses (each point has its own seed)."""
    return RunSettings(data_dir=args.data_dir, device=args.device, progress=not args.quiet)


def run_command(args, executor=None) -> int:
    from .driver import load_documents, run_study
    from .report import build_study_report

    sweep = sweep_of(args)
    report_dir = args.report_dir or args.out
    if args.report_only and not args.out.is_dir():
        raise ValueError(f"study directory {args.out} does not exist; run the study first")
    for path in {args.out, report_dir}:
        writable_dir(path)
    if not args.report_only:
        run_study(sweep, args.out, settings_of(args), executor, args.force)
    docs, problems = load_documents(sweep, args.out)
    path = build_study_report(docs, problems, report_dir, command_line(args))
    print(f"study: {len(docs)} points ({len(problems)} missing or unusable) -> {path}")
    return 0
