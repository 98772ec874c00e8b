"""nox sessions: ``nox -l`` lists them. Each installs what it needs into its own virtualenv.

torch comes from ``ATTNPERF_TORCH`` (default ``torch==2.13.0``, the CPU build this project's
machines carry), installed *before* attnperf so that pip never resolves a bare ``torch``
requirement to a multi-GB CUDA build on a CPU machine.
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
    session.install(*TORCH)
    session.install("-e", f".[{','.join(extras)}]" if extras else ".")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite on this machine (CPU; GPU tests too where CUDA is visible)."""
    install(session, "test")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def sweep(session: nox.Session) -> None:
    """A quick CLI sweep on the CPU: every variant × CPU backend at 256 and 1024 tokens."""
    install(session)
    args = session.posargs or ["--quick", "--backends", "eager,sdpa-math,sdpa-flash,tiled", "--json", "results/sweep.json"]
    session.run("attnperf", "sweep", *args)
