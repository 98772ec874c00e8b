"""Measure many benchmark points in one process: the unit the regression check replicates.

asv runs every (benchmark, parameter combination) in a process of its own; with the GPU
libraries that costs ~18 s a point on the H200 (interpreter, imports, CUDA context, compilation,
the float64 check, a 1 s warm-up), so a grid of hundreds of points cannot fit a pull request's
time. This runner measures a list of points in one process, loads each library once, warms the
GPU once, and keeps the correctness verdicts per code fingerprint in a file, so that the later
processes of the same commit skip the check they already passed (the check itself still runs once
per commit and point, before anything is timed). Its output feeds the verdict
(:mod:`attnperf.verdict`) and asv's history (:mod:`attnperf.history`).

    python -m attnperf.batch --points points.json --out run.json [--verdicts cache.json]
        [--inject flash-attn4=2,3,5,10]

``--inject BACKEND=PCT,...`` (trials only) measures each forward and decode time of that backend
again with a spin after every call (:func:`attnperf.measure.spinner`), so that the call takes PCT %
longer than the median just measured in this process; the injected points are recorded beside the
plain ones. What a spin adds behind queued work (a fixed part, 1.3-1.5 µs on the H200, and a slope) is
fitted before each point's injections (:func:`attnperf.measure.spin_cost`) and the spin sized by
it; a slowdown smaller than the fixed part cannot be injected and is recorded ``unsupported`` with
both sizes.

Every point's record says what happened: ``ok`` with its samples, ``unsupported`` (the reason),
``wrong`` (never timed), ``oom``, or ``failed`` (the exception's first line); the run goes on.
The output is rewritten atomically after every point.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import attnperf
from attnperf.backends import get_backend
from attnperf.bench import BACKWARD, DECODE, FORWARD, Point, build_point
from attnperf.benchgrid import PointSpec
from attnperf.correctness import CheckResult, WrongResult
from attnperf.errors import error_line
from attnperf.measure import (
    ensure_warm,
    measure_cpu_peak_rss,
    measure_cuda_peak,
    measure_time,
    spin_cost,
    spinner,
    time_calls,
)
from attnperf.records import Status
from attnperf.results import read_json, write_json
from attnperf.sweep import failure, free_memory

SCHEMA = 1


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

    def get(self, key: str) -> CheckResult | None:
        entry = self.entries.get(key)
        return None if entry is None else CheckResult.from_dict(entry)

    def put(self, key: str, result: CheckResult) -> None:
        self.entries[key] = result.as_dict()
        if self.path is not None:
            write_json(self.path, {"fingerprints": self.by_code})


def cache_key(spec: PointSpec) -> str:
    """The whole point (device, heads and batch too), not only its asv name."""
    return json.dumps(spec.as_dict(), sort_keys=True)


class BatchRunner:
    """Measures points one after another in this process (see the module docstring)."""

    def __init__(self, *, cache: VerdictCache, repeat: int, min_sample_s: float | None = None) -> None:
        self.cache, self.repeat, self.min_sample_s = cache, repeat, min_sample_s
        self.spins: dict[str, Callable[[float], None]] = {}

    def measure(self, spec: PointSpec, inject: Sequence[float] = ()) -> list[dict[str, Any]]:
        """The record of ``spec`` (and of its injected variants, when asked)."""
        record: dict[str, Any] = {"key": spec.key, "spec": spec.as_dict(), "seconds": {}}
        started = time.perf_counter()
        try:
            point = self._build(spec, record)
            record["seconds"]["check"] = time.perf_counter() - started
            return self._time(point, record, inject)
        except NotImplementedError as exc:
            return [record | {"status": Status.UNSUPPORTED.value, "reason": str(exc)}]
        except WrongResult as exc:
            return [record | {"status": Status.WRONG.value, "reason": str(exc)}]
        except Exception as exc:  # the point failed; the record says how, and the run goes on
            status, reason = failure(exc, spec.device)
            return [record | {"status": status.value, "reason": reason}]
        finally:
            record["seconds"]["total"] = time.perf_counter() - started

    def _build(self, spec: PointSpec, record: dict[str, Any]) -> Point:
        cached = self.cache.get(cache_key(spec))
        record["check_cached"] = cached is not None
        try:
            point = build_point(spec, checked=cached)
        except NotImplementedError as exc:
            if cached is None:
                self.cache.put(cache_key(spec), CheckResult("", spec.backend, "", Status.UNSUPPORTED, reason=str(exc)))
            raise
        except WrongResult as exc:
            if cached is None:
                self.cache.put(cache_key(spec), CheckResult("", spec.backend, "", Status.WRONG, reason=str(exc)))
            raise
        if cached is None:
            self.cache.put(cache_key(spec), point.checked)
        record.update(case_id=point.case.id, rel_error=point.checked.error, bound=point.checked.bound)
        return point

    def _time(self, point: Point, record: dict[str, Any], inject: Sequence[float]) -> list[dict[str, Any]]:
        device = point.case.device
        ensure_warm(device)  # before the first call, so that its time is not read on a cold device
        context = torch.no_grad() if point.spec.mode != BACKWARD else torch.enable_grad()
        with context:
            first = time.perf_counter()
            time_calls(point.call, device, 1)  # compilation and lazy initialisation land here
            # Peak memory before the capture, on the direct call: no CUDA graph's pool is held beside it yet.
            peak = self._peak(point) if point.spec.mode == FORWARD else {}
            time_calls(point.run, device, 1)  # the CUDA graph's capture, where there is one
            record["seconds"]["first_call"] = time.perf_counter() - first
            record["cuda_graph"] = point.cuda_graph
            if point.graph_reason:
                record["graph_reason"] = point.graph_reason
            timing = measure_time(point.run, device, repeat=self.repeat, min_sample_s=self.min_sample_s)
            record["seconds"]["measure"] = time.perf_counter() - first - record["seconds"]["first_call"]
            record.update(status=Status.OK.value, median=timing.median, samples=timing.samples, number=timing.number)
            if point.spec.mode == FORWARD:
                record.update(peak | self._model_figures(point, timing.median))
            records = [record]
            if inject and point.spec.mode in (FORWARD, DECODE):
                records += self._injected(point, record, inject)
        return records

    def _peak(self, point: Point) -> dict[str, Any]:
        """Peak memory of one forward alone: the CUDA allocator's (exact), or RSS growth on the CPU
        (for the graphs, not exact); nothing for a backend with an allocator of its own."""
        backend = get_backend(point.backend)
        device = point.case.device
        if torch.device(device).type == "cuda":
            return {} if backend.own_cuda_allocator else {"peak_bytes": measure_cuda_peak(point.call, device)}
        return {} if backend.own_cpu_allocator else {"peak_bytes": measure_cpu_peak_rss(point.call)}

    def _model_figures(self, point: Point, median: float) -> dict[str, Any]:
        """The analyzer's predicted peak and useful TFLOP/s (derived: for the graphs, never gating)."""
        from attnperf.analysis import forward_flops

        figures: dict[str, Any] = {}
        try:
            mechanism, backend = attnperf.get_mechanism(point.mechanism), get_backend(point.backend)
            figures["predicted_bytes"] = backend.predicted_peak_bytes(mechanism, point.case)
            figures["tflops"] = forward_flops(mechanism, backend, point.case).useful / median / 1e12
        except (KeyError, ValueError, NotImplementedError) as exc:  # no model: the graphs go without it
            figures["model_reason"] = error_line(exc)
        return figures

    def _injected(self, point: Point, plain: dict[str, Any], levels: Sequence[float]) -> list[dict[str, Any]]:
        """``point`` slowed by each of ``levels`` % of its median, the spin sized by what it adds
        behind this point's device state (:func:`attnperf.measure.spin_cost`, fitted once a point).

        Sized from the median alone, the spin's launch came on top (the H200 measured 5.1% for 2%);
        less the cost of back-to-back shortest spins, which are launch-bound, it came short (1.4%
        for 2%)."""
        device = point.case.device
        if device not in self.spins:
            self.spins[device] = spinner(device)
        spin = self.spins[device]
        records = []
        try:
            cost = spin_cost(spin, device)
        except RuntimeError as exc:
            cost, failed = None, str(exc)
        for pct in levels:
            target = plain["median"] * pct / 100
            record = {"key": f"{plain['key']}+{pct:g}%", "base_key": plain["key"], "injected_pct": pct,
                      "spec": plain["spec"], "target_s": target}  # fmt: skip
            if cost is None:
                records.append(record | {"status": Status.FAILED.value, "reason": failed})
                continue
            record |= {"spin_fixed_s": cost.fixed_s, "spin_slope": cost.slope}
            request = cost.request(target)
            if request is None:
                reason = (f"a {pct:g}% slowdown ({target * 1e6:.2f} µs) is below the shortest spin's cost "
                          f"({cost.fixed_s * 1e6:.2f} µs)")  # fmt: skip
                records.append(record | {"status": Status.UNSUPPORTED.value, "reason": reason})
                continue

            def slowed(request: float = request) -> None:
                point.run()
                spin(request)

            timing = measure_time(slowed, device, repeat=self.repeat, min_sample_s=self.min_sample_s)
            records.append(record | {"status": Status.OK.value, "median": timing.median, "samples": timing.samples,
                                     "number": timing.number, "spin_s": request})  # fmt: skip
        return records


def process_costs(output: dict[str, Any]) -> dict[str, Any]:
    """Where one process's seconds went: start-up (interpreter, imports), the correctness checks,
    first calls (compilation), measurement, and the overhead per measured point (everything but
    the measurement, over the points measured)."""
    records = [r for r in output["records"] if "injected_pct" not in r]
    phases = {name: sum(r["seconds"].get(name, 0.0) for r in records) for name in ("check", "first_call", "measure")}
    seconds = output["seconds"]
    # a process stopped from outside wrote neither: its start-up and the points it finished
    total = output.get("wall_s") or seconds.get("total") or (seconds.get("startup") or 0.0) + seconds.get("points", 0.0)
    measured = sum(r["status"] == Status.OK for r in records)
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "label": output.get("label"), "points": len(records), "statuses": statuses, "wall_s": total,
        "startup_s": seconds.get("startup"), **{f"{k}_s": v for k, v in phases.items()},
        "overhead_per_point_s": (total - phases["measure"]) / measured if measured else None,
    }  # fmt: skip


def read_points(path: Path) -> list[PointSpec]:
    return [PointSpec.from_dict(item) for item in read_json(path)["points"]]


def write_points(path: Path, points: Sequence[PointSpec]) -> Path:
    return write_json(path, {"points": [p.as_dict() for p in points]})


def parse_inject(text: str | None) -> tuple[str | None, tuple[float, ...]]:
    """``BACKEND=P1,P2`` → (backend, (P1, P2)); a ``ValueError`` names the flag."""
    if not text:
        return None, ()
    backend, _, pcts = text.partition("=")
    try:
        values = tuple(float(p) for p in pcts.split(",") if p.strip())
    except ValueError:
        values = ()
    if not backend or not values or any(v <= 0 for v in values):
        raise ValueError(f"--inject must be BACKEND=PCT[,PCT...] with percentages > 0, got {text!r}")
    get_backend(backend)
    return backend, values


def gpu_identity(points: Sequence[PointSpec]) -> str | None:
    """The UUID of the GPU the points run on (None for CPU points): two GPUs of one machine tag
    differ by a few percent on long kernels (flash-attn-4's causal at 8k: σ 2.0% over processes of
    two H200 hosts), so trials can keep a comparison to the processes of one GPU, as a runner's is."""
    if not any(torch.device(p.device).type == "cuda" for p in points) or not torch.cuda.is_available():
        return None
    uuid = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None)
    return None if uuid is None else str(uuid)  # a torch without it: every process one group, as before


def run(
    points: Sequence[PointSpec], out: Path, *, verdicts: Path | None = None, inject: str | None = None,
    repeat: int = 10, min_sample_s: float | None = None, label: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Measure ``points`` in this process and write the record to ``out`` after every point."""
    from attnperf.machine import host_description, machine_tag

    inject_backend, pcts = parse_inject(inject)
    fingerprint = code_fingerprint()
    runner = BatchRunner(cache=VerdictCache(verdicts, fingerprint), repeat=repeat, min_sample_s=min_sample_s)
    started = time.perf_counter()
    output: dict[str, Any] = {
        "schema": SCHEMA, "label": label, "fingerprint": fingerprint, "machine": machine_tag(),
        "host": host_description(), "gpu": gpu_identity(points), "torch": torch.__version__, "pid": os.getpid(),
        "started_unix": time.time(), "seconds": {"startup": seconds_since_start()}, "records": [],
    }  # fmt: skip
    for spec in points:
        output["records"] += runner.measure(spec, pcts if spec.backend == inject_backend else ())
        free_memory(spec.device, between_points=True)  # the point is unreferenced once measure returns
        output["seconds"]["points"] = time.perf_counter() - started
        write_json(out, output)
    output["seconds"]["total"] = seconds_since_start()
    write_json(out, output)
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m attnperf.batch", description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=Path, required=True, help="JSON file of points (attnperf.batch.write_points)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file this process writes its records to")
    parser.add_argument("--verdicts", type=Path, help="correctness verdicts shared by this commit's processes")
    parser.add_argument("--inject", help="BACKEND=PCT[,PCT...]: also measure that backend slowed by PCT %% (trials)")
    parser.add_argument("--repeat", type=int, default=10, help="samples per point (default 10)")
    parser.add_argument("--label", help="a name for this process in the output (e.g. base-2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeat < 3:
        raise SystemExit("--repeat must be at least 3 (a median of fewer samples is one sample's noise)")
    output = run(read_points(args.points), args.out, verdicts=args.verdicts, inject=args.inject,
                 repeat=args.repeat, label=args.label)  # fmt: skip
    counts: dict[str, int] = {}
    for record in output["records"]:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    print(json.dumps({"out": str(args.out), "records": counts, "seconds": output["seconds"]}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
