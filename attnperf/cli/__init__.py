"""The ``attnperf`` command (also ``python -m attnperf``): every command is a subcommand, and every
subcommand ends through one error path.

* A bad argument, option, input file or output path is a :class:`~attnperf.errors.UsageError`:
  one line naming it, exit 2, checked before anything is measured where it can be.
* An expected failure outside the input (git refused, a held lock, a batch process that died) is a
  :class:`~attnperf.errors.Failure`: one line, exit 1; so is a command's own failing outcome (a
  ``wrong`` point, a confirmed regression).
* Ctrl-C: exit 130, saying so (a sweep says what it saved; worktrees are removed on the way out).

Anything else is a bug and keeps its traceback: only UsageError is bad input, so a ``ValueError``
raised inside the library is not passed off as the user's mistake.

Each group of commands sits in a module of its own, its flags beside its body: ``explore`` (list,
check, sweep, profile, tune), ``analyze`` (analyze, plot), ``model``, ``prcheck`` (regress, trials,
calibrate), ``history`` (history, batch) and ``cp``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from attnperf.cli import analyze, cp, explore, history, model, prcheck
from attnperf.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, Failure, UsageError, release_outputs

GROUPS = (explore, analyze, model, prcheck, history, cp)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnperf", description="Attention mechanisms × backends: check, time, compare."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; expected failures end in one line and the exit codes above."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    name = f"attnperf {args.command}"
    try:
        return int(args.func(args))
    except UsageError as exc:  # bad input (a flag, a combination Case refuses, a file): name it
        print(f"{name}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Failure as exc:
        print(f"{name}: failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # a file or device that went away after it was checked
        print(f"{name}: failed: {exc.filename or ''} {exc.strerror or exc}".strip(), file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        release_outputs()


def shim(command: str) -> None:
    """``python -m attnperf.<command> ARGS`` as ``attnperf <command> ARGS`` (the old entry points)."""
    raise SystemExit(main([command, *sys.argv[1:]]))
