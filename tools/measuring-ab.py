"""Does one piece of the measuring make direct-call timings steadier between processes on this
machine? A paired A/B over fresh processes, ABAB…: arm ``on`` measures with the code as it is, arm
``off`` without the piece ``--off`` names:

* ``steady-host``: :func:`attnperf.measure.steady_host` a no-op (the collector on, nothing pinned);
* ``settle``: no :func:`attnperf.measure.settle` (the calls per sample sized from one warm call).

Each process measures the same points once, direct calls and, on CUDA, CUDA-graph replays. Prints, per
point, timing and arm, the σ of the log per-process medians (the between-process spread the check
works against) and writes everything to ``--out``.

    python tools/measuring-ab.py --off settle --device cuda --pairs 4 --out settle-ab.json

A run of N pairs gives each arm's σ with N − 1 degrees of freedom: a ratio of two such σ needs to be
well beyond the F distribution's spread (about 2× at 8 processes an arm) before it says anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: (backend, variant, mode): points whose direct calls are host-bound on a GPU at these lengths.
GPU_POINTS = [("eager", "causal", "forward"), ("sdpa-flash", "causal", "forward"), ("sdpa-cudnn", "causal", "forward"),
              ("flash-attn4", "causal", "forward"), ("flex", "causal", "forward"), ("xformers", "causal", "forward"),
              ("eager", "decode", "decode"), ("sdpa-flash", "decode", "decode"), ("flex", "decode", "decode"),
              ("flash-attn4", "decode", "decode"), ("eager", "causal", "forward+backward"),
              ("sdpa-flash", "causal", "forward+backward"), ("flash-attn4", "causal", "forward+backward")]  # fmt: skip
#: The ``pr-cpu`` slice the CI trials use.
CPU_POINTS = [("eager", "causal", "forward"), ("tiled", "causal", "forward"), ("eager", "decode", "decode"),
              ("tiled", "decode", "decode"), ("eager", "causal", "forward+backward"),
              ("tiled", "causal", "forward+backward")]  # fmt: skip


def measure(device: str, arm: str, piece: str, backends: set[str] | None) -> dict[str, dict]:
    """One process's medians of every point (of ``backends``, all when None), both timings, with or
    without ``piece`` (the arm)."""
    import attnperf.measure as m

    if arm == "off" and piece == "steady-host":
        m.steady_host = lambda device: contextlib.nullcontext()  # type: ignore[assignment]
    elif arm == "off":  # the warm call's time as measure_time sized samples from it (n + ½: no rounding down)
        m.settle = lambda fn, device, number, limit_s: m.policy(device).min_sample_s / (number + 0.5)  # type: ignore[assignment]
    from attnperf.benchgrid import PointSpec
    from attnperf.point import DIRECT, REPLAY, measure_point

    out = {}
    for backend, variant, mode in GPU_POINTS if device == "cuda" else CPU_POINTS:
        if backends is not None and backend not in backends:
            continue
        if device == "cuda":
            spec = PointSpec(backend, variant, 4096 if mode == "decode" else 2048, 128, "bfloat16", mode, device, 16)
        else:
            spec = PointSpec(backend, variant, 1024 if mode == "decode" else 256, 64, "float32", mode, device, 8)
        (record,) = measure_point(spec, repeat=7, timings=(DIRECT, REPLAY))
        out[f"{backend}/{variant}/{mode}"] = {
            "status": record.status.value, "reason": record.reason, "direct": record.median_s,
            "number": record.number, "replay": record.replay_median_s, "graph_reason": record.graph_reason,
        }  # fmt: skip
    return out


def summarize(rows: dict[str, list[dict[str, dict]]]) -> dict[str, dict[str, dict]]:
    """Per point, timing and arm: processes, σ of the log medians (%), median (µs)."""
    summary: dict[str, dict[str, dict]] = {}
    for key in (rows["on"] or rows["off"] or [{}])[0]:
        summary[key] = {}
        for arm, processes in rows.items():
            for timing in ("direct", "replay"):
                medians = [p[key][timing] for p in processes if p[key][timing]]
                logs = [math.log(m) for m in medians]
                summary[key][f"{timing} {arm}"] = {
                    "processes": len(medians),
                    "sigma_pct": 100 * statistics.stdev(logs) if len(logs) > 1 else None,
                    "median_us": 1e6 * statistics.median(medians) if medians else None,
                }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--pairs", type=int, default=4, help="processes an arm (default 4)")
    parser.add_argument(
        "--off",
        choices=("steady-host", "settle"),
        default="steady-host",
        help="what arm off measures without (default steady-host)",
    )
    parser.add_argument("--out", type=Path, default=Path("measuring-ab.json"))
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no pair after this many seconds")
    parser.add_argument("--backends", help="comma-separated: only these backends' points (default all)")
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        backends = set(args.backends.split(",")) if args.backends else None
        print("RESULT " + json.dumps(measure(args.device, args.child, args.off, backends)))
        return 0
    rows: dict[str, list[dict[str, dict]]] = {"on": [], "off": []}
    deadline = time.time() + args.budget_s
    for i in range(2 * args.pairs):
        arm = ("on", "off")[i % 2]
        if arm == "on" and time.time() > deadline:  # whole pairs only
            print(f"budget spent after {i // 2} pairs", flush=True)
            break
        started = time.time()
        only = ["--backends", args.backends] if args.backends else []
        command = [sys.executable, __file__, "--device", args.device, "--off", args.off, "--child", arm, *only]
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"process {i} ({arm}) failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows[arm].append(json.loads(line.removeprefix("RESULT ")))
        print(f"process {i} ({arm}): {time.time() - started:.1f} s", flush=True)
        # written after every process: a run cut short keeps what it measured
        result = {"device": args.device, "off": args.off, "rows": rows, "summary": summarize(rows)}
        args.out.write_text(json.dumps(result, indent=1))
    for key, figures in summarize(rows).items():
        line = "  ".join(f"{name} {figure['sigma_pct']:6.2f}%" for name, figure in figures.items()
                         if figure["sigma_pct"] is not None)  # fmt: skip
        print(f"{key:40s} σ {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
