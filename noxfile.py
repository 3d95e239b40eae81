"""nox sessions: `nox -s bench` (the default grid, report and gate), `nox -s continuous` (the time gate
side by side with an earlier commit, where this machine class has no baselines), `nox -s tests`, `nox -s lint`,
`nox -s layers` (the layer benchmark), `nox -s ray` (the Ray executor on a local Ray instance),
`nox -s wheel` (the wheel in a fresh virtualenv, as a user installs it).
Arguments after `--` go to pytest.

Virtualenvs are reused between runs (torch is large); `nox -s tests --no-reuse-existing-virtualenvs`
forces a fresh one.
"""

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "tests"]

TORCH = "torch==2.13.0"  # the CPU build on this workplace's disk; see README


def install(session, extras="bench,dev"):
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session):
    """Unit and Hypothesis property tests; then, since a process loads one kernel variant, the kernel,
    sparse-representation and mask-update property tests once more per other variant this CPU runs."""
    install(session)
    session.run("pytest", "tests", "-q", *session.posargs)
    others = session.run("python", "-c", "from sparsebench import kernels; v = kernels.variant(); "
                         "print(' '.join(x for x in kernels.supported_variants() if x != v))", silent=True)
    for variant in (others or "").split():
        session.log(f"kernel variant {variant} (SPARSEBENCH_CPU_ISA={variant})")
        session.run("pytest", "tests/test_kernels.py", "tests/test_kernels_conv.py", "tests/test_representations.py",
                    "tests/test_mask_updates.py", "-q", "-k", "test_kernels or csr or bsr_cpp or masked_reference",
                    env={"SPARSEBENCH_CPU_ISA": variant})


@nox.session
def wheel(session):
    """The package as a user installs it: a wheel in a fresh virtualenv with the library's dependencies
    only, its kernels built from the sources it carries and required (tests/test_wheel.py)."""
    session.install("pytest")  # sparsebench itself is not installed here: tests/conftest.py is not loaded
    session.run("pytest", "tests/test_wheel.py", "--noconftest", "-q", "-p", "no:randomly", *session.posargs,
                env={"SPARSEBENCH_WHEEL_TEST": "1", "SPARSEBENCH_REQUIRE_KERNELS": "1"})


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", "sparsebench", "tests", "benchmarks", "noxfile.py")


@nox.session
def bench(session):
    """The default grid on the ci budget as pytest-benchmark tests: run saved (.benchmarks/), result
    documents in results/bench-ci/, the report table and plots, and the gate against baselines/."""
    install(session)
    session.run("pytest", "benchmarks/test_grid.py", "--benchmark-autosave", "--benchmark-group-by=group",
                "--benchmark-columns=median,iqr,min,rounds", "-p", "no:randomly", *session.posargs)


# the cells whose time the side-by-side gate checks in CI: the fast path of each kernel family, both architectures
CONTINUOUS_SCHEMES = ["random:0.9@csr", "block:16x16:0.9@bsr_cpp"]


@nox.session
def continuous(session):
    """The time gate of a machine class without stored baselines (what .ci/run runs after `bench`):
    `sparsebench continuous` against the last commit that changed the ci baselines, side by side on this
    machine, on the kernels' fast-path cells of both architectures. Where this class has baselines of its
    own, `bench` gated time against them, and this says so and stops. Arguments go to `sparsebench
    continuous` (e.g. `nox -s continuous -- --schemes dense random:0.5@csr`)."""
    install(session)
    probe = ("from sparsebench.baselines import own_class; c, has = own_class('baselines', 'ci'); "
             "print(c, int(has))")
    machine_class, has = session.run("python", "-c", probe, silent=True).split()
    if has == "1" and not session.posargs:
        session.log(f"machine class {machine_class} has ci baselines: `bench` gated time against them")
        return
    base = session.run("git", "log", "-1", "--format=%H", "--", "baselines/ci", external=True, silent=True).strip()
    if not base:
        session.error("no commit in this clone's history changed baselines/ci (a shallow clone?): "
                      "fetch the history, or run `sparsebench continuous BASE` with a BASE of your choice")
    session.log(f"machine class {machine_class} has no ci baselines: time gated side by side with {base[:12]}")
    session.run("sparsebench", "continuous", base, "--budget", "ci", "--schemes", *CONTINUOUS_SCHEMES,
                "--out", "results/continuous-ci", *session.posargs)


@nox.session
def layers(session):
    """The layer benchmark: one training step per representation at real layer shapes, vs dense.
    `nox -s layers -- --targets [--isa avx512 avx2 generic]` instead prints the kernel variants'
    table against the layer targets (benchmarks/layer_targets.py) and writes docs/layers.md."""
    install(session)
    if session.posargs[:1] == ["--targets"]:
        session.run("python", "benchmarks/layer_targets.py", *session.posargs[1:])
        return
    session.run("pytest", "benchmarks/bench_layers.py", "-q", *session.posargs)


@nox.session
def ray(session):
    """The Ray executor: a smoke grid on a local 2-CPU Ray instance started by the test, a worker
    killed mid-cell (retry, then an error document), and the same grid run serially, compared cell by cell.
    Ray is an optional extra, so it has its own virtualenv; here a missing ray fails instead of skipping."""
    install(session, "bench,dev,ray")
    session.run("pytest", "tests/test_ray.py", "-q", "-p", "no:randomly", *session.posargs,
                env={"SPARSEBENCH_REQUIRE_RAY": "1"})


@nox.session
def study(session):
    """The study's quick view on the ci budget: accuracy and cost across patterns, S = 0.5 and 0.9 and
    representations, then docs/study/STUDY.md and its plots. Its documents are committed in docs/study/,
    so it resumes from them. Arguments go to `sparsebench study` (e.g. `nox -s study -- --seeds 3`;
    `-- --levels 0.5 0.75 0.9 0.95` for the whole default sweep: 178 points against these 134)."""
    install(session)
    session.run("sparsebench", "study", "--out", "docs/study", "--levels", "0.5", "0.9", *session.posargs)


@nox.session(name="study-converge")
def study_converge(session):
    """The study at the `converge` budget (time to accuracy; the static subset about 2 hours on 2 cores per
    seed) and its method comparison (`--methods default`: masks chosen or moved during training, 8 more
    points of about 10 minutes each per seed and architecture), 2 seeds: documents, STUDY.md and plots in
    docs/study-converge, committed so a later run on any machine resumes it. Arguments go to `sparsebench
    study` (e.g. `nox -s study-converge -- --seeds 3`, `-- --executor ray`)."""
    install(session)
    session.run("sparsebench", "study", "--budget", "converge", "--out", "docs/study-converge", "--methods", "default",
                "--seeds", "2", *session.posargs)
