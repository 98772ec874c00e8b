"""Reading and writing attnperf's files: every write is atomic (a crash never leaves a corrupt
history), and every read of a JSON input goes through :func:`read_json_file`, which names the file
and the flag it came from when it cannot be read or parsed."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attnperf.errors import Failure, UsageError


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``os.umask`` can only
    be read by setting it, which would briefly affect other threads creating files)."""
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/self/status", encoding="ascii") as status:
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The file gets the permissions a plain ``open`` would give it (``mkstemp`` makes it private).
    """
    path = Path(path)
    try:
        return _write_atomic(path, text)
    except OSError as exc:  # "File too large", a full disk, a folder that went away: name the file
        raise Failure(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return write_atomic(path, buffer.getvalue())


def read_json(path: str | Path) -> Any:
    """A JSON file attnperf wrote itself (a cache, a points file): errors are bugs, not input."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_json_file(path: str | Path, what: str) -> Any:
    """The JSON value in ``path``, an input the user named (``what``: the flag or role, e.g.
    ``"--noise"``, ``"results file"``). A :class:`~attnperf.errors.UsageError` names both when the
    file is missing, a folder, unreadable, not UTF-8, empty, truncated or not JSON (NaN and
    Infinity, which Python's parser accepts, are refused too)."""
    path = Path(path)

    def refuse(why: str) -> UsageError:
        return UsageError(f"{what} {path}: {why}")

    if path.is_dir():
        raise refuse("is a folder; give a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise refuse(f"cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise refuse("is not a text file (not UTF-8)") from None
    if not text.strip():
        raise refuse("is empty")

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        return json.loads(text, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        raise refuse(f"is not valid JSON (truncated?): {exc.msg} at line {exc.lineno}") from None
    except ValueError as exc:
        raise refuse(str(exc)) from None
