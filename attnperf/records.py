"""What a measured point is: a :class:`Record` with a :class:`Status`, and the file records live in.

Every entry point that checks and times (``attnperf sweep``, ``analyze --measure``, ``tune``, the
batch runner behind the pull-request check and the history, context parallelism's single-device
baselines) ends each point in one :class:`Record`, written by :func:`attnperf.point.measure_point`.
Records are read and written here only (:meth:`Record.to_dict`, :meth:`Record.from_dict`,
:func:`save_records`, :func:`load_records`), so the commands, the verdict, the trials, the history
and the plots agree on one versioned format. A reader of an older file gets today's records:
:data:`SCHEMA` 1 had two shapes (the sweep's ``median_s`` and the batch runner's ``median``), both
still readable.

Two timings per point, because users pay both: the **direct** call (``median_s``: what a model
calling the backend from Python pays, host work and launches included) and, on CUDA where the
call can be captured, its **CUDA-graph replay** (``replay_median_s``: the device's work alone, as a
serving engine that captures its step pays it). Derived figures (tokens/s, TFLOP/s, the
analyzer's predicted peak) are filled in by :func:`attnperf.point.derived` and nowhere else.

Trials' injected measurements (a point deliberately slowed) are records with an ``injection``;
they live in a results file's own ``injected`` list, never among the plain records.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from attnperf.benchgrid import FORWARD, PointSpec
from attnperf.errors import UsageError
from attnperf.files import read_json_file, write_json

#: The version of :meth:`Record.to_dict`'s form and of the results file around it.
SCHEMA = 2


class Status(str, Enum):
    """What happened to a point. A ``str`` enum: it is written to JSON as its value."""

    OK = "ok"  #: checked against the reference, then measured
    UNSUPPORTED = "unsupported"  #: the backend cannot run the case here (the reason says why)
    WRONG = "wrong"  #: the result differs from the float64 reference beyond the bound: never timed
    OOM = "oom"  #: an allocation failed while it ran
    REFUSED = "refused"  #: inputs, output and predicted peak exceed the free memory: not run
    FAILED = "failed"  #: any other error (the run records it and goes on)

    def __str__(self) -> str:
        return self.value


#: The timings a record can hold, by name: (median field, samples field, number field).
TIMINGS = {"direct": ("median_s", "samples_s", "number"),
           "replay": ("replay_median_s", "replay_samples_s", "replay_number")}  # fmt: skip


@dataclass(frozen=True)
class Record:
    """One point: a backend on a variant's case at one length, batch size and mode."""

    spec: PointSpec
    status: Status
    #: The case the point ran (``Case.id`` and its fields); for a point whose case could not be
    #: built or does not run here, ``case_id`` is "" and ``case`` the shape it was asked for.
    case_id: str = ""
    case: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None
    #: The kernel a dispatching backend (``sdpa``) picked for this case.
    kernel: str | None = None
    rel_error: float | None = None
    bound: float | None = None
    #: The correctness verdict came from the runner's cache of this very code (not checked again).
    check_cached: bool | None = None
    #: The direct call: median seconds per call, every sample, calls per sample.
    median_s: float | None = None
    samples_s: Sequence[float] = ()
    number: int | None = None
    #: The CUDA-graph replay of the call (CUDA points that can be captured).
    replay_median_s: float | None = None
    replay_samples_s: Sequence[float] = ()
    replay_number: int | None = None
    #: Why a CUDA point has no replay timing (it cannot be captured, or its replay differed).
    graph_reason: str | None = None
    #: Seconds of the first call in this process (compilation, autotuning, lazy initialisation).
    first_call_s: float | None = None
    peak_bytes: int | None = None
    peak_kind: str | None = None
    #: The backend's predicted peak extra memory of the call (the analyzer's figure).
    predicted_peak_bytes: int | None = None
    #: A refused point: inputs, output and predicted peak, what it needed free ...
    needed_bytes: int | None = None
    #: ... and what the device had free.
    available_bytes: int | None = None
    tokens_per_s: float | None = None
    useful_tflops: float | None = None
    executed_tflops: float | None = None
    #: Why the derived figures are missing (no FLOP or memory model for this pair).
    model_reason: str | None = None
    speedup: float | None = None
    memory_ratio: float | None = None
    #: Where the point's seconds went in a batch process (check, first_call, measure, total).
    seconds: Mapping[str, float] = field(default_factory=dict)
    #: A trial's deliberate slowdown of this point (kind, pct, target_s, …); None for a real one.
    injection: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def variant(self) -> str:
        return self.spec.variant

    @property
    def mechanism(self) -> str:
        return self.spec.mechanism

    @property
    def backend(self) -> str:
        return self.spec.backend

    @property
    def seq_len(self) -> int:
        return self.spec.seq_len

    @property
    def batch(self) -> int:
        return self.spec.batch

    @property
    def mode(self) -> str:
        return self.spec.mode

    @property
    def key(self) -> str:
        """The point's stable id (:attr:`PointSpec.key`), the same for a plain and an injected record."""
        return self.spec.key

    @property
    def point(self) -> tuple[str, str, int, int]:
        """(variant, backend, seq_len, batch): what identifies a forward point within one sweep."""
        return self.variant, self.backend, self.seq_len, self.batch

    def timing(self, kind: str) -> tuple[float | None, Sequence[float], int | None]:
        """(median, samples, number) of the ``direct`` or ``replay`` timing."""
        median, samples, number = TIMINGS[kind]
        return getattr(self, median), getattr(self, samples), getattr(self, number)

    @property
    def shown_s(self) -> float | None:
        """The time a table shows: the replay where there is one, else the direct call."""
        return self.replay_median_s if self.replay_median_s is not None else self.median_s

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every field that is set, the spec as its dict, and the key for readers."""
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or (isinstance(value, (tuple, list, dict, Mapping)) and not value):
                continue
            if isinstance(value, tuple):
                value = list(value)
            data[f.name] = value
        data |= {"spec": self.spec.as_dict(), "status": self.status.value, "key": self.key,
                 "case": dict(self.case)}  # fmt: skip
        if self.injection is not None:
            data["injection"] = dict(self.injection)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """A record from its JSON form, today's or schema 1's; a ``ValueError`` names the field that is
        missing, of the wrong type, not finite or negative."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a record must be an object, got {type(data).__name__}")
        values = dict(data) if "spec" in data and "median" not in data else _from_schema1(data)
        try:
            status = Status(values.get("status"))
        except ValueError:
            raise ValueError(
                f"status must be one of {[s.value for s in Status]}, got {values.get('status')!r}"
            ) from None
        spec_data = values.get("spec")
        if not isinstance(spec_data, Mapping):
            raise ValueError("spec must be an object (the point's backend, variant, seq_len, …)")
        try:
            spec = PointSpec.from_dict(dict(spec_data))
        except TypeError as exc:
            raise ValueError(f"spec: {exc}") from None
        _check_spec(spec)
        names = {f.name for f in dataclasses.fields(cls)}
        # null is "not set": a field left out, never a value of the wrong type later on
        kept = {k: v for k, v in values.items() if k in names and k not in ("spec", "status") and v is not None}
        for name, value in kept.items():
            _check_field(name, value)
        for name in ("samples_s", "replay_samples_s"):
            if name in kept:
                kept[name] = tuple(kept[name])
        record = cls(spec=spec, status=status, **kept)
        if record.ok and record.median_s is None and record.replay_median_s is None:
            raise ValueError("an ok record needs median_s or replay_median_s")
        return record


#: Each optional field's JSON type: numbers are finite and not negative (rel_error may be inf? no:
#: an ok point's error is finite; a wrong one's may be inf, which JSON cannot carry, so it is absent).
_NUMBERS = {"rel_error", "bound", "median_s", "replay_median_s", "first_call_s", "tokens_per_s", "useful_tflops",
            "executed_tflops", "speedup", "memory_ratio"}  # fmt: skip
_INTEGERS = {"number", "replay_number", "peak_bytes", "predicted_peak_bytes", "needed_bytes", "available_bytes"}
_STRINGS = {"case_id", "reason", "kernel", "graph_reason", "peak_kind", "model_reason", "key"}
_SAMPLES = {"samples_s", "replay_samples_s"}
_OBJECTS = {"case", "seconds", "injection"}


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and not negative, got {value!r}")


def _check_field(name: str, value: Any) -> None:
    if value is None:
        return
    if name in _NUMBERS:
        _number(name, value)
    elif name in _INTEGERS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    elif name in _STRINGS:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
    elif name in _SAMPLES:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list of seconds, got {value!r}")
        for item in value:
            _number(name, item)
    elif name in _OBJECTS:
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be an object, got {value!r}")
    elif name == "check_cached" and not isinstance(value, bool):
        raise ValueError(f"check_cached must be true or false, got {value!r}")


def _check_spec(spec: PointSpec) -> None:
    for name in ("backend", "variant", "dtype", "mode", "device"):
        if not isinstance(getattr(spec, name), str):
            raise ValueError(f"spec.{name} must be a string, got {getattr(spec, name)!r}")
    for name in ("seq_len", "head_dim", "heads", "batch"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"spec.{name} must be an integer >= 0, got {value!r}")


def _from_schema1(data: Mapping[str, Any]) -> dict[str, Any]:
    """Schema 1's two record shapes as today's fields.

    * The batch runner's: ``key``, ``spec``, ``median``/``samples``/``number`` (a CUDA-graph replay
      where ``cuda_graph`` was true, else the direct call), ``tflops``, ``predicted_bytes``, and for
      an injected one ``injected_pct``, ``target_s``, ``spin_s`` ….
    * The sweep's: ``variant``, ``backend``, ``seq_len``, ``batch``, ``case`` and ``median_s`` (a
      replay with ``cuda_graph``); a refused record written before ``needed_bytes`` existed held
      that sum under ``predicted_peak_bytes``."""
    out = {k: v for k, v in data.items() if k not in ("cuda_graph", "median", "samples", "number", "tflops",
                                                      "predicted_bytes", "base_key", "mechanism")}  # fmt: skip
    replay = bool(data.get("cuda_graph"))
    if "spec" in data:  # the batch runner's
        timing = ("replay_median_s", "replay_samples_s", "replay_number") if replay else TIMINGS["direct"]
        for old, new in zip(("median", "samples", "number"), timing, strict=True):
            if old in data:
                out[new] = data[old]
        if "tflops" in data:
            out["useful_tflops"] = data["tflops"]
        if "predicted_bytes" in data:
            out["predicted_peak_bytes"] = data["predicted_bytes"]
        injection = {k: out.pop(k) for k in ("injected_pct", "target_s", "spin_s", "spin_fixed_s", "spin_slope")
                     if k in out}  # fmt: skip
        if injection:
            out["injection"] = {"kind": "spin", "pct": injection.pop("injected_pct", None), **injection}
        return out
    for name in ("variant", "backend", "seq_len", "batch"):
        if name not in data:
            raise ValueError(f"record lacks {name}")
    case = data.get("case") or {}
    if not isinstance(case, Mapping):
        raise ValueError(f"case must be an object, got {case!r}")
    out["spec"] = {"backend": data["backend"], "variant": data["variant"], "seq_len": data["seq_len"],
                   "batch": data["batch"], "head_dim": case.get("head_dim", 0), "dtype": case.get("dtype", ""),
                   "mode": FORWARD, "device": case.get("device", ""), "heads": case.get("heads", 0)}  # fmt: skip
    for name in ("variant", "backend", "seq_len", "batch"):
        out.pop(name, None)
    if replay and "median_s" in data:
        out["replay_median_s"], out["replay_samples_s"] = out.pop("median_s"), out.pop("samples_s", [])
    if data.get("status") == Status.REFUSED and "needed_bytes" not in data and "predicted_peak_bytes" in data:
        out["needed_bytes"] = out.pop("predicted_peak_bytes")  # written when that name held the sum
    return out


def with_ratios(records: Sequence[Record], baseline: str) -> list[Record]:
    """The records with ``speedup`` (baseline time / time, of the time tables show) and
    ``memory_ratio`` against the baseline backend measured at the same point in the same run."""
    base = {(r.variant, r.seq_len, r.batch): r for r in records if r.backend == baseline and r.ok}
    out = []
    for r in records:
        ref = base.get((r.variant, r.seq_len, r.batch))
        if not r.ok or ref is None or r.shown_s is None or ref.shown_s is None:
            out.append(r)
            continue
        memory = r.peak_bytes / ref.peak_bytes if r.peak_bytes and ref.peak_bytes else None
        out.append(dataclasses.replace(r, speedup=ref.shown_s / r.shown_s, memory_ratio=memory))
    return out


@dataclass
class ResultFile:
    """A results file: the records of one sweep or one batch process, with what it says about itself
    (``meta``: the machine, and for a batch process its label, fingerprint, GPU, seconds …)."""

    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    #: A trial process's deliberately slowed measurements (never read as real ones).
    injected: list[Record] = field(default_factory=list)

    @property
    def label(self) -> str | None:
        return self.meta.get("label")

    def to_dict(self) -> dict[str, Any]:
        data = self.meta | {"schema": SCHEMA, "records": [r.to_dict() for r in self.records]}
        if self.injected:
            data["injected"] = [r.to_dict() for r in self.injected]
        return data

    def save(self, path: str | Path | None = None) -> Path:
        """Write the file atomically (to ``path``, else where it was read from)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("a results file needs a path to be saved")
        return write_json(target, self.to_dict())


def save_records(path: str | Path, records: Iterable[Record], *, machine: Mapping[str, Any], **meta: Any) -> Path:
    """Write a sweep's records and the machine they ran on (and what else the sweep derived from them,
    such as ``crossovers``: kept as the file's meta), atomically."""
    return ResultFile(Path(path), {"machine": dict(machine), **meta}, list(records)).save()


def parse_results(data: Any, path: Path | None, what: str = "results file") -> ResultFile:
    """A results file's parsed JSON, validated: a :class:`~attnperf.errors.UsageError` names the file,
    the record and the field. Schema 1's batch outputs kept injected records among the plain ones
    (with ``injected_pct``): they are moved to ``injected``."""
    where = f"{what} {path}" if path is not None else what
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise UsageError(f"{where} is not attnperf results (no 'records' list; attnperf sweep --json and the batch "
                         "runner write them)")  # fmt: skip
    schema = data.get("schema", 1)
    if not isinstance(schema, int) or schema > SCHEMA:
        raise UsageError(f"{where}: schema {schema!r} is newer than this attnperf reads ({SCHEMA})")
    records, injected = [], []
    for name in ("records", "injected"):
        items = data.get(name) or []
        if not isinstance(items, list):
            raise UsageError(f"{where}: '{name}' must be a list")
        for i, item in enumerate(items):
            try:
                record = Record.from_dict(item)
            except (ValueError, TypeError) as exc:
                raise UsageError(f"{where}: {name}[{i}]: {exc}") from None
            (injected if record.injection is not None else records).append(record)
    meta = {k: v for k, v in data.items() if k not in ("records", "injected", "schema")}
    if "machine" in meta and not isinstance(meta["machine"], (dict, str)):
        raise UsageError(f"{where}: 'machine' must be an object or a machine tag, got {meta['machine']!r}")
    return ResultFile(path, meta, records, injected)


def load_records(path: str | Path, what: str = "results file") -> ResultFile:
    """Read a results file (a sweep's or a batch process's), validated (:func:`parse_results`)."""
    path = Path(path)
    return parse_results(read_json_file(path, what), path, what)
