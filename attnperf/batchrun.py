"""Many points measured in one process: the unit the regression check replicates.

asv runs every (benchmark, parameter combination) in a process of its own, paying interpreter
start-up, imports, a CUDA context, compilation, the float64 check and a warm-up for every point, so
a grid of hundreds of points cannot fit a pull request's time. This runner measures a list of
points in one process with :func:`attnperf.point.measure_point`, loads each library once, warms
the device once, and keeps the correctness verdicts per code fingerprint in a file, so that a
commit's later processes skip the check its first process passed (the check itself still runs
once per commit and point, before anything is timed). Every point is timed as called and, on
CUDA where its call can be captured, as a CUDA-graph replay. Its output, a
results file of :class:`~attnperf.records.Record` (:mod:`attnperf.records`), feeds the verdict
and asv's history.

Trials only (``--inject``): each point of the named backends is measured again deliberately
slowed, and the slowed records go to the file's ``injected`` list:

* ``spin``: a device kernel of a known duration after every call (a ``torch.cuda._sleep``; a busy
  wait on the CPU), sized to PCT % of the median this process just measured; what a spin adds
  behind queued work is fitted before each point's injections (:func:`attnperf.measure.spin_cost`),
  and a slowdown below the shortest spin's cost is recorded ``unsupported`` with both sizes;
* ``host``: a busy wait of N µs on the host before every direct call (Python work, launches or a
  sync a change adds): invisible to a graph replay by construction;
* ``pass``: N extra elementwise passes over a tensor of q's size before every call (a real
  kernel-side change), captured into the replay's graph too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import attnperf
from attnperf.backends import BACKENDS
from attnperf.benchgrid import BACKWARD, PointSpec
from attnperf.correctness import CheckResult
from attnperf.errors import UsageError
from attnperf.files import read_json, write_json
from attnperf.measure import SpinCost, measure_time, spin_cost, spinner
from attnperf.noise import measuring_code
from attnperf.point import DIRECT, REPLAY, Point, free_memory, measure_point, timing_fields
from attnperf.records import Record, ResultFile, Status


def seconds_since_start() -> float | None:
    """Seconds since this process started (Linux): interpreter start-up and imports included."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as uptime:
            now = float(uptime.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return now - start_ticks / os.sysconf("SC_CLK_TCK")


#: Distributions whose versions change what a backend computes: part of the fingerprint, so a
#: runner image with another flash-attn or Triton checks again instead of reusing old verdicts.
FINGERPRINT_PACKAGES = ("torch", "triton", "flash-attn-4", "fa3-fwd", "xformers", "fla-core", "onnxruntime")


def code_fingerprint() -> str:
    """A hash of the attnperf sources being run and the versions of torch and the backends'
    libraries: the key of cached correctness verdicts."""
    from importlib import metadata

    digest = hashlib.sha256(torch.__version__.encode())
    for package in FINGERPRINT_PACKAGES:
        try:
            digest.update(f"{package}=={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package} absent".encode())
    root = Path(attnperf.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class VerdictCache:
    """Correctness verdicts by code fingerprint, in a JSON file shared by the processes of a check:
    a commit's later processes (and another commit with the very same attnperf sources) reuse
    the verdicts its first process reached."""

    def __init__(self, path: Path | None, fingerprint: str) -> None:
        self.path, self.fingerprint = path, fingerprint
        self.by_code: dict[str, dict[str, dict[str, Any]]] = {}
        if path is not None and path.exists():
            self.by_code = read_json(path).get("fingerprints", {})
        self.entries = self.by_code.setdefault(fingerprint, {})

    def get(self, spec: PointSpec) -> CheckResult | None:
        entry = self.entries.get(cache_key(spec))
        return None if entry is None else CheckResult.from_dict(entry)

    def put(self, spec: PointSpec, result: CheckResult) -> None:
        self.entries[cache_key(spec)] = result.as_dict()
        if self.path is not None:
            write_json(self.path, {"fingerprints": self.by_code})


def cache_key(spec: PointSpec) -> str:
    """The whole point (device, heads and batch too), not only its asv name."""
    return json.dumps(spec.as_dict(), sort_keys=True)


KINDS = {"spin": "%", "host": "µs", "pass": "passes"}


@dataclass(frozen=True)
class Injection:
    """A trial's deliberate slowdown of some backends: ``kind`` at each of ``levels``."""

    kind: str
    backends: frozenset[str] | None  #: None: every backend
    levels: tuple[float, ...]

    def applies(self, spec: PointSpec) -> bool:
        return self.backends is None or spec.backend in self.backends


def parse_inject(text: str | None) -> tuple[Injection, ...]:
    """``KIND:BACKENDS=L1,L2[;KIND:BACKENDS=…]`` (KIND spin, host or pass; BACKENDS comma-separated
    or ``all``; ``BACKEND=PCT,…`` alone is a spin). A :class:`~attnperf.errors.UsageError` names the
    flag and what is allowed."""
    if not text:
        return ()
    out = []
    for item in text.split(";"):
        head, _, levels = item.strip().partition("=")
        kind, _, names = head.rpartition(":") if ":" in head else ("spin", "", head)
        try:
            values = tuple(float(x) for x in levels.split(",") if x.strip())
        except ValueError:
            values = ()
        usage = (f"--inject must be KIND:BACKENDS=L1[,L2…] (KIND one of {', '.join(KINDS)}; levels > 0 in "
                 f"{', '.join(f'{k}: {u}' for k, u in KINDS.items())}), got {item!r}")  # fmt: skip
        if kind not in KINDS or not names or not values or any(not v > 0 for v in values):
            raise UsageError(usage)
        backends = None if names == "all" else frozenset(n.strip() for n in names.split(",") if n.strip())
        unknown = sorted((backends or set()) - set(BACKENDS))
        if unknown:
            raise UsageError(f"--inject: unknown backends {unknown}; allowed: all or {', '.join(BACKENDS)}")
        out.append(Injection(kind, backends, values))
    return tuple(out)


class BatchRunner:
    """Measures points one after another in this process (see the module text)."""

    def __init__(self, *, cache: VerdictCache, repeat: int, min_sample_s: float | None = None,
                 injections: Sequence[Injection] = ()) -> None:  # fmt: skip
        self.cache, self.repeat, self.min_sample_s = cache, repeat, min_sample_s
        self.injections = tuple(injections)
        self.spins: dict[str, Callable[[float], None]] = {}

    def measure(self, spec: PointSpec) -> list[Record]:
        """The record of ``spec``, then its injected records (when asked)."""
        started = time.perf_counter()
        injections = [i for i in self.injections if i.applies(spec)]
        records = measure_point(spec, repeat=self.repeat, min_sample_s=self.min_sample_s, timings=(DIRECT, REPLAY),
                                checks=self.cache, then=self._injected if injections else None)  # fmt: skip
        seconds = dict(records[0].seconds) | {"total": time.perf_counter() - started}
        return [dataclasses.replace(records[0], seconds=seconds), *records[1:]]

    def _injected(self, point: Point, plain: Record) -> list[Record]:
        out = []
        for injection in self.injections:
            if injection.applies(point.spec):
                for level in injection.levels:
                    out.append(self._slowed(point, plain, injection.kind, level))
        return out

    def _slowed(self, point: Point, plain: Record, kind: str, level: float) -> Record:
        """``point`` measured again with one injected slowdown (its direct call and, where it has one,
        its replay); an injection that cannot be made here is recorded ``unsupported`` with why."""
        device = point.case.device
        about: dict[str, Any] = {"kind": kind, "level": level, "unit": KINDS[kind]}
        if kind == "host" and plain.median_s is None:
            return Record(point.spec, Status.UNSUPPORTED, case_id=plain.case_id, injection=about,
                          reason="no direct timing to slow on the host")  # fmt: skip
        try:
            direct, replay, about = self._slowed_calls(point, plain, kind, level, about)
        except _CannotInject as exc:
            return Record(point.spec, Status.UNSUPPORTED, case_id=plain.case_id, injection=about, reason=str(exc))
        grad = torch.enable_grad() if point.spec.mode == BACKWARD else torch.no_grad()
        with grad:
            d = measure_time(direct, device, repeat=self.repeat, min_sample_s=self.min_sample_s) if direct else None
            r = measure_time(replay, device, repeat=self.repeat, min_sample_s=self.min_sample_s) if replay else None
        return Record(point.spec, Status.OK, case_id=plain.case_id, injection=about, **timing_fields(d, r))

    def _slowed_calls(
        self, point: Point, plain: Record, kind: str, level: float, about: dict[str, Any]
    ) -> tuple[Callable[[], object] | None, Callable[[], object] | None, dict[str, Any]]:
        call, device = point.call, point.case.device
        replayed, _ = point.replay() if plain.replay_median_s is not None else (None, None)
        if kind == "host":
            wait = level * 1e-6

            def host_slowed() -> object:
                end = time.perf_counter() + wait
                while time.perf_counter() < end:
                    pass
                return call()

            return host_slowed, None, about
        if kind == "pass":
            case = point.case
            extra = torch.zeros(case.batch, case.heads, case.q_len, case.head_dim, device=device,
                                dtype=case.torch_dtype)  # fmt: skip
            passes = int(level)

            def passed() -> object:
                for _ in range(passes):
                    extra.mul_(1.0)
                return call()

            return passed, point.graph_of(passed) if replayed is not None else None, about
        spin, cost = self._spin(device)
        out: list[Callable[[], object] | None] = []
        for fn, median in ((call, plain.median_s), (replayed, plain.replay_median_s)):
            if fn is None or median is None:
                out.append(None)
                continue
            target = median * level / 100
            request = cost.request(target)
            if request is None:
                raise _CannotInject(f"a {level:g}% slowdown ({target * 1e6:.2f} µs) is below the shortest spin's "
                                    f"cost ({cost.fixed_s * 1e6:.2f} µs)")  # fmt: skip

            def spun(fn: Callable[[], object] = fn, request: float = request) -> object:
                out_ = fn()
                spin(request)
                return out_

            about |= {"target_s" if fn is call else "replay_target_s": target,
                      "spin_s" if fn is call else "replay_spin_s": request}  # fmt: skip
            out.append(spun)
        about |= {"spin_fixed_s": cost.fixed_s, "spin_slope": cost.slope}
        return out[0], out[1], about

    def _spin(self, device: str) -> tuple[Callable[[float], None], SpinCost]:
        if device not in self.spins:
            self.spins[device] = spinner(device)
        spin = self.spins[device]
        try:
            return spin, spin_cost(spin, device)
        except RuntimeError as exc:
            raise _CannotInject(str(exc)) from None


class _CannotInject(RuntimeError):
    """An injection this point or device cannot take (its reason is recorded)."""


def process_costs(output: ResultFile) -> dict[str, Any]:
    """Where one process's seconds went: start-up (interpreter, imports), the correctness checks,
    first calls (compilation), measurement, and the overhead per measured point (everything but
    the measurement, over the points measured)."""
    records = output.records
    phases = {name: sum(r.seconds.get(name, 0.0) for r in records) for name in ("check", "measure")}
    phases["first_call"] = sum(r.first_call_s or 0.0 for r in records)
    seconds = output.meta.get("seconds") or {}
    # a process stopped from outside wrote neither: its start-up and the points it finished
    total = (output.meta.get("wall_s") or seconds.get("total")
             or (seconds.get("startup") or 0.0) + seconds.get("points", 0.0))  # fmt: skip
    measured = sum(r.ok for r in records)
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r.status.value] = statuses.get(r.status.value, 0) + 1
    return {
        "label": output.label, "points": len(records), "statuses": statuses, "wall_s": total,
        "startup_s": seconds.get("startup"), **{f"{k}_s": v for k, v in phases.items()},
        "overhead_per_point_s": (total - phases["measure"]) / measured if measured else None,
    }  # fmt: skip


def gpu_identity(points: Sequence[PointSpec]) -> str | None:
    """The UUID of the GPU the points run on (None for CPU points): two GPUs of one machine tag
    differ by a few percent on long kernels, so trials keep a comparison to the processes of one
    GPU, as a runner's is."""
    if not any(torch.device(p.device).type == "cuda" for p in points) or not torch.cuda.is_available():
        return None
    uuid = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None)
    return None if uuid is None else str(uuid)


def run(
    points: Sequence[PointSpec], out: Path, *, verdicts: Path | None = None, inject: str | None = None,
    repeat: int = 10, min_sample_s: float | None = None, label: str | None = None,
) -> ResultFile:  # fmt: skip
    """Measure ``points`` in this process and write the results file ``out`` after every point."""
    from attnperf.machine import host_description, machine_tag

    fingerprint = code_fingerprint()
    runner = BatchRunner(cache=VerdictCache(verdicts, fingerprint), repeat=repeat, min_sample_s=min_sample_s,
                         injections=parse_inject(inject))  # fmt: skip
    started = time.perf_counter()
    output = ResultFile(out, {
        "label": label, "fingerprint": fingerprint, "machine": machine_tag(), "host": host_description(),
        "measuring_code": measuring_code(Path(attnperf.__file__).parents[1]),
        "gpu": gpu_identity(points), "torch": torch.__version__, "pid": os.getpid(), "started_unix": time.time(),
        "inject": inject, "seconds": {"startup": seconds_since_start()},
    })  # fmt: skip
    for spec in points:
        records = runner.measure(spec)
        output.records.append(records[0])
        output.injected += records[1:]
        free_memory(spec.device, between_points=True)  # the point is unreferenced once measure returns
        output.meta["seconds"]["points"] = time.perf_counter() - started
        output.save()
    output.meta["seconds"]["total"] = seconds_since_start()
    output.save()
    return output
