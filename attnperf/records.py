"""What a measured point is: a :class:`Record` with a :class:`Status`, and its file.

Every entry point that checks and times (``attnperf sweep``, ``analyze --measure``, ``tune``, the
batch runner) says what happened to each point with one of the statuses below, and a sweep's
records are read and written here only (:func:`save_records`, :func:`load_records`), so the
command, the plots and the tests agree on one format. Display code formats records; nothing
else changes them (:func:`with_ratios` returns new ones).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from attnperf.errors import UsageError
from attnperf.results import write_json


class Status(str, Enum):
    """What happened to a point. A ``str`` enum: it is written to JSON as its value."""

    OK = "ok"  #: checked against the reference, then measured
    UNSUPPORTED = "unsupported"  #: the backend cannot run the case here (the reason says why)
    WRONG = "wrong"  #: the result differs from the float64 reference beyond the bound: never timed
    OOM = "oom"  #: an allocation failed while it ran
    REFUSED = "refused"  #: inputs, output and predicted peak exceed the free memory: not run
    FAILED = "failed"  #: any other error (the batch runner records it and goes on)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Record:
    """One point of a sweep: a backend on a variant's case at one length and batch size."""

    variant: str
    mechanism: str
    backend: str
    seq_len: int
    batch: int
    case_id: str
    case: Mapping[str, Any]
    status: Status
    reason: str | None = None
    #: The kernel a dispatching backend (``sdpa``) picked for this case.
    kernel: str | None = None
    rel_error: float | None = None
    median_s: float | None = None
    samples_s: Sequence[float] = ()
    spread: float | None = None
    tokens_per_s: float | None = None
    useful_tflops: float | None = None
    executed_tflops: float | None = None
    peak_bytes: int | None = None
    peak_kind: str | None = None
    #: The backend's predicted peak extra memory of the call (the analyzer's figure, as in
    #: ``analyze`` and asv's ``track_predicted_peak_bytes``); set on refused points.
    predicted_peak_bytes: int | None = None
    #: A refused point: inputs, output and predicted peak, what it needed free ...
    needed_bytes: int | None = None
    #: ... and what the device had free.
    available_bytes: int | None = None
    speedup: float | None = None
    memory_ratio: float | None = None
    #: Timed as a CUDA-graph replay (``sweep --cuda-graphs``), not call by call.
    cuda_graph: bool | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def point(self) -> tuple[str, str, int, int]:
        """(variant, backend, seq_len, batch): what identifies a point within one machine's run."""
        return self.variant, self.backend, self.seq_len, self.batch

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every field that is set (the status as its value)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["status"] = self.status.value
        data["samples_s"] = list(self.samples_s)
        data["case"] = dict(self.case)
        return {k: v for k, v in data.items() if v is not None and v != []}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """A record from its JSON form; a ``ValueError`` names what is missing or unknown. A refused
        record written before ``needed_bytes`` existed held that sum under ``predicted_peak_bytes``:
        it is read as ``needed_bytes``, so that the name means one quantity in every record."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"record lacks {', '.join(missing)}")
        try:
            status = Status(data["status"])
        except ValueError:
            raise ValueError(
                f"record status must be one of {[s.value for s in Status]}, got {data['status']!r}"
            ) from None
        values = {k: v for k, v in data.items() if k in names}
        if status is Status.REFUSED and "needed_bytes" not in values and "predicted_peak_bytes" in values:
            values["needed_bytes"] = values.pop("predicted_peak_bytes")  # written when that name held the sum
        return cls(**values | {"status": status, "samples_s": tuple(values.get("samples_s", ()))})


def with_ratios(records: Sequence[Record], baseline: str) -> list[Record]:
    """The records with ``speedup`` (baseline time / time) and ``memory_ratio`` against the baseline
    backend measured at the same point in the same run."""
    base = {(r.variant, r.seq_len, r.batch): r for r in records if r.backend == baseline and r.ok}
    out = []
    for r in records:
        ref = base.get((r.variant, r.seq_len, r.batch))
        if not r.ok or ref is None or r.median_s is None or ref.median_s is None:
            out.append(r)
            continue
        memory = r.peak_bytes / ref.peak_bytes if r.peak_bytes and ref.peak_bytes else None
        out.append(dataclasses.replace(r, speedup=ref.median_s / r.median_s, memory_ratio=memory))
    return out


def save_records(path: str | Path, records: Iterable[Record], *, machine: Mapping[str, Any]) -> Path:
    """Write a sweep's records and the machine they ran on, atomically."""
    return write_json(path, {"machine": dict(machine), "records": [r.to_dict() for r in records]})


@dataclass(frozen=True)
class ResultFile:
    """A sweep's result file, read and validated."""

    path: Path
    machine: Mapping[str, Any] = field(default_factory=dict)
    records: Sequence[Record] = ()


def load_records(path: str | Path) -> ResultFile:
    """Read a file written by :func:`save_records`; a :class:`~attnperf.errors.UsageError` (a bad
    input file: exit 2 from the command) names the file and the problem (missing, empty,
    truncated, not a sweep's results, a malformed record)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"results file {path}: cannot read it ({exc.strerror or exc})") from None
    if not text.strip():
        raise UsageError(f"results file {path} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"results file {path} is not valid JSON (truncated?): {exc.msg} at line {exc.lineno}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise UsageError(f"results file {path} is not a sweep's results (no 'records' list; write it with "
                         "attnperf sweep --json)")  # fmt: skip
    records = []
    for i, item in enumerate(data["records"]):
        try:
            if not isinstance(item, dict):
                raise ValueError("not an object")
            records.append(Record.from_dict(item))
        except (ValueError, TypeError) as exc:
            raise UsageError(f"results file {path}: record {i}: {exc}") from None
    return ResultFile(path, data.get("machine") or {}, records)
