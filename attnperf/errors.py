"""The failures the command expects, and how each ends: one line, and a documented exit code.

* :class:`UsageError`: a bad argument, option or input file, named with what is allowed. Exit 2.
  Only this class: a plain ``ValueError`` (a :class:`Case` refusing a combination, say) is
  converted where the command builds it from flags, so one raised by a bug keeps its traceback.
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


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message``: how a record names an error it went on after."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


class UsageError(ValueError):
    """A bad argument, option or input file (exit 2)."""


class Failure(RuntimeError):
    """An expected failure that is not the input's fault (exit 1)."""


def check_output(path: str | Path, flag: str, *, existing_ok: bool = True, lock: bool = True) -> Path:
    """Refuse an output path before any work is done, then lock it for the rest of the command: its
    folder must exist and be writable, and the path must be absent or a regular file (not a folder, a
    device or a pipe, which a replace would swap for a file); with ``existing_ok=False`` it must not
    exist at all. A second run that checks the same output fails at once (:func:`exclusive`);
    ``lock=False`` where a child process this command starts writes (and locks) the file itself."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise UsageError(f"{flag} {path} is not a regular file (a device or a pipe); give a file name")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable")
    if path.exists() and not existing_ok:
        raise UsageError(f"{flag} {path} exists; --resume continues that run, --force overwrites it")
    if lock:
        _HELD.enter_context(exclusive(path))
    return path


#: The locks of the outputs checked in this process (:func:`check_output`), held until the command
#: ends (:func:`release_outputs`): every file a command writes is locked for its whole run.
_HELD = contextlib.ExitStack()


def release_outputs() -> None:
    """Give up every output lock :func:`check_output` took (the command is done)."""
    _HELD.close()


def check_distinct(outputs: dict[str, Path | None]) -> None:
    """Refuse two outputs of one command that name the same file (one would overwrite the other)."""
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            raise UsageError(f"{flag} and {seen[resolved]} name the same file {path}; give two files")
        seen[resolved] = flag


def check_workdir(path: Path, flag: str) -> Path:
    """A folder a command will write many files into, checked before any work and created only when
    the work starts (bad input writes nothing): refused if it is a file, or if it or the nearest folder
    above it that exists is not writable."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file; give a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UsageError(f"{flag} {path}: {existing} is not a writable folder")
    return path


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold ``PATH.lock`` while writing ``path``, so two runs cannot write one results file (the
    second fails at once). An advisory ``flock``: a crashed run's lock dies with its process.

    The holder removes the lock file when it is done, so a run may open the file just before it
    is removed and then lock that removed file while a third run locks the new one at the same
    path: both would write. A lock therefore counts only while the path still names the locked
    file (same device and inode); otherwise it is dropped and the path locked again."""
    lock = path.with_name(f"{path.name}.lock")
    while True:
        handle = lock.open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise Failure(f"another run is writing {path} (it holds {lock})") from None
        if _names_file(lock, handle.fileno()):
            break
        handle.close()  # we locked a file its holder had already removed: lock the path's file
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # removed while held: a run that opened it sees that
            lock.unlink()
        handle.close()


def _names_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the open file ``fd`` (it was neither removed nor replaced)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
