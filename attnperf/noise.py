"""The runner's noise calibration: per benchmark and timing, the between-process spread of log
medians measured by A/A processes on that runner (``attnperf calibrate``, or the trials' pool).

The judge reads it from the runner (``--noise``, ``ATTNPERF_NOISE``) or from the *base* commit's
``benchmarks/noise/<machine tag>.json``, never from the pull request's head, which could widen the
spread of the very benchmark it slows. A calibration counts only for the machine tag it was made
on (the tag names the GPU, driver, CUDA, torch and the kernel libraries' versions), for
:data:`MAX_AGE_DAYS`, and for the code that measured it (:data:`MEASURING_CODE`): a spread taken by
other sampling code (another warm-up, another way to time a call) is not this code's spread.
Otherwise the check says it is uncalibrated and gives no confident verdict.
"""

from __future__ import annotations

import hashlib
import math
import os
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnperf.errors import UsageError
from attnperf.files import read_json_file, write_json
from attnperf.records import ResultFile

SCHEMA = 2
MAX_AGE_DAYS = 30
#: The smallest σ a calibration stores: a spread measured as nearly 0 is a small sample's luck.
FLOOR = 0.001
TIME_KINDS = ("direct", "replay")
#: The files whose change changes how a time is taken, and so the spread a calibration holds: the
#: batch process, the one measuring function, sampling, CUDA graphs and how processes are started.
MEASURING_CODE = ("attnperf/batch.py", "attnperf/batchrun.py", "attnperf/point.py", "attnperf/measure.py",
                  "attnperf/graphs.py", "attnperf/processes.py")  # fmt: skip


def measuring_code(root: Path) -> str:
    """A hash of :data:`MEASURING_CODE` in the checkout at ``root`` (a missing file hashes as absent)."""
    digest = hashlib.sha256()
    for name in MEASURING_CODE:
        path = root / name
        digest.update(name.encode() + (path.read_bytes() if path.exists() else b"absent"))
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Noise:
    """σ (sd of log per-process medians) and its degrees of freedom, per timing kind and benchmark key."""

    sigma: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    dof: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    source: str = "none"
    #: Why this calibration cannot be trusted here (None: it can).
    why_uncalibrated: str | None = "no calibration given"

    @property
    def calibrated(self) -> bool:
        return self.why_uncalibrated is None

    def of(self, kind: str, key: str) -> tuple[float | None, int]:
        """(σ, degrees of freedom) of ``key``'s ``kind`` timing; (None, 0) where not calibrated."""
        if not self.calibrated:
            return None, 0
        sigma = self.sigma.get(kind, {}).get(key)
        return (None, 0) if sigma is None else (sigma, self.dof.get(kind, {}).get(key, 1))

    @classmethod
    def load(
        cls, path: Path, *, machine: str, code: str | None = None, what: str = "--noise", now: float | None = None
    ) -> Noise:
        """The calibration at ``path`` for this ``machine`` tag and measuring ``code`` (a
        :func:`measuring_code`; None: not compared); uncalibrated (with why) when it was made on
        another tag, by other measuring code or more than :data:`MAX_AGE_DAYS` ago. A malformed file
        is a :class:`~attnperf.errors.UsageError` naming it."""
        data = read_json_file(path, what)
        if not isinstance(data, dict) or not isinstance(data.get("sigma"), dict):
            raise UsageError(
                f"{what} {path}: not a noise calibration (no 'sigma' object; attnperf calibrate writes one)"
            )
        if data.get("schema", 1) == 1:  # one σ per key, for whatever the runner timed then
            flat = _numbers(data["sigma"], what, path, "sigma")
            dof = max(1, int(data.get("processes", 3)) - 2)
            sigma = dict.fromkeys(TIME_KINDS, flat)
            dofs = {kind: dict.fromkeys(flat, dof) for kind in TIME_KINDS}
        else:
            sigma = {kind: _numbers(v, what, path, f"sigma.{kind}") for kind, v in data["sigma"].items()}
            dofs = {kind: {k: int(n) for k, n in _numbers(v, what, path, f"dof.{kind}").items()}
                    for kind, v in (data.get("dof") or {}).items()}  # fmt: skip
        why = None
        made_on = data.get("machine")
        if made_on != machine:
            why = f"{path} was calibrated on machine {made_on!r}, this is {machine!r}; run attnperf calibrate here"
        elif code is not None and data.get("measuring_code") != code:
            made_by = data.get("measuring_code")
            why = (f"{path} was measured by other measuring code ({made_by or 'not recorded'}, this is {code}: "
                   f"{', '.join(MEASURING_CODE)} changed); run attnperf calibrate again")  # fmt: skip
        elif isinstance(data.get("created_unix"), (int, float)):
            days = ((now or time.time()) - data["created_unix"]) / 86400
            if days > MAX_AGE_DAYS:
                why = f"{path} is {days:.0f} days old (more than {MAX_AGE_DAYS}); run attnperf calibrate again"
        return cls(sigma, dofs, str(path), why)

    def save(self, path: Path, **about: Any) -> Path:
        return write_json(path, {"schema": SCHEMA, "sigma": self.sigma, "dof": self.dof, **about})


def _numbers(value: Any, what: str, path: Path, name: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise UsageError(f"{what} {path}: '{name}' must be an object of numbers")
    for key, x in value.items():
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            raise UsageError(f"{what} {path}: '{name}' of {key!r} must be a finite number >= 0, got {x!r}")
    return dict(value)


def runner_path(machine: str) -> Path | None:
    """Where ``ATTNPERF_NOISE`` puts this machine's calibration: the variable itself when it names a
    ``.json`` file, else ``<tag>.json`` in the folder it names (existing or not); None when unset."""
    given = os.environ.get("ATTNPERF_NOISE")
    if not given:
        return None
    path = Path(given)
    return path if path.suffix == ".json" else path / f"{machine}.json"


def replicate_of(run: ResultFile) -> tuple[Any, Any]:
    """(GPU UUID, code fingerprint): the processes one comparison may pool. A pull request's check
    compares processes of one GPU, and GPUs of one machine tag differ by a few percent on long
    kernels: pooled across GPUs, that difference would pass for noise."""
    return run.meta.get("gpu"), run.meta.get("fingerprint")


def calibrate(
    runs: Iterable[ResultFile], *, group: Any = None
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """Per timing kind and benchmark key, σ = the sd of log per-process medians within each group of
    processes (GPU, code state and ``group(run)``, e.g. a trial's A/B label), pooled, at least
    :data:`FLOOR`; and its degrees of freedom (processes minus groups)."""
    groups: dict[tuple[Any, ...], list[ResultFile]] = {}
    for run in runs:
        groups.setdefault((*replicate_of(run), group(run) if group else None), []).append(run)
    sigma: dict[str, dict[str, float]] = {}
    dofs: dict[str, dict[str, int]] = {}
    for kind in TIME_KINDS:
        squares: dict[str, float] = {}
        dof: dict[str, int] = {}
        for members in groups.values():
            logs: dict[str, list[float]] = {}
            for run in members:
                for r in run.records:
                    median = r.timing(kind)[0] if r.ok else None
                    if median:
                        logs.setdefault(r.key, []).append(math.log(median))
            for key, values in logs.items():
                if len(values) > 1:
                    squares[key] = squares.get(key, 0.0) + statistics.variance(values) * (len(values) - 1)
                    dof[key] = dof.get(key, 0) + len(values) - 1
        if dof:
            sigma[kind] = {key: max(FLOOR, math.sqrt(squares[key] / n)) for key, n in dof.items()}
            dofs[kind] = dof
    return sigma, dofs


def from_runs(runs: Sequence[ResultFile], *, source: str, group: Any = None) -> Noise:
    """A calibration of ``runs`` themselves (trusted as made here)."""
    sigma, dof = calibrate(runs, group=group)
    return Noise(sigma, dof, source, None)
