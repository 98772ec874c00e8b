"""The failures the command expects, and how each ends: one line, and a documented exit code.

* :class:`UsageError` (and any ``ValueError`` from checking input, such as a :class:`Case` field
  out of range): a bad argument, option or input file, named with what is allowed. Exit 2.
* :class:`Failure`: something outside the input went wrong in an expected way (git refused, a
  file is locked by another run, nothing in a results file ran). Exit 1.
* Ctrl-C: exit 130, saying what was saved.

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(ValueError):
    """A bad argument, option or input file (exit 2)."""


class Failure(RuntimeError):
    """An expected failure that is not the input's fault (exit 1)."""


def check_output(path: str | Path, flag: str, *, existing_ok: bool = True) -> Path:
    """Refuse an output path before any work is done: its folder must exist and be writable, and it
    must not be a folder; with ``existing_ok=False`` it must not exist either."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable")
    if path.exists() and not existing_ok:
        raise UsageError(f"{flag} {path} exists; --resume continues that run, --force overwrites it")
    return path


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold ``PATH.lock`` while writing ``path``, so two runs cannot write one results file (the
    second fails at once). An advisory ``flock``: a crashed run's lock dies with its process."""
    lock = path.with_name(f"{path.name}.lock")
    with lock.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Failure(f"another run is writing {path} (it holds {lock})") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # removed while held: the next run locks a new file
                lock.unlink()
