"""Context-parallel attention under torchrun: checked against the float64 reference, then timed.

    torchrun --nproc-per-node N -m attnperf cp check [--device cuda] [--seq-lens 4096,16384] [--json F]
    torchrun --nproc-per-node N -m attnperf cp bench [--seq-lens 16384,...,262144] [--max-seq-len M] --out DIR

``check``: every rank draws the same seeded inputs (the seed is drawn on rank 0 and broadcast),
runs the ``context-parallel`` backend on its shard, the output is gathered
(``context_parallel_unshard``) and rank 0 compares it with the mechanism's float64 reference; the
verdict goes back to every rank. Exit 1 when any result is wrong.

``bench``: for each variant and length, first one device: the single-device baselines (the
fastest is the "1 GPU" figure) run on rank 0 through the sweep's checked path while the other
ranks wait; then every rank: the same check as above, and the ring timed on shards each rank
draws on its own device (what a context-parallel model holds: no rank ever sees the whole
sequence), every rank making the same calls, with a barrier before the samples; the step takes
as long as its slowest rank. Per-rank peak memory, speedup (N-rank throughput ÷ the best
single-device throughput) and efficiency (speedup ÷ N). Past the timed lengths ``--max-seq-len``
doubles the length until each configuration fails (``oom``, or ``refused`` where the analyzer's
prediction exceeds the free memory), each configuration run once there. Results go to
``DIR/cp-<machine>-x<N>.json`` (atomically, after every length) and a Markdown table beside it.

NVLink multicast stays off in every process (NCCL_NVLS_ENABLE=0,
TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1, set before torch.distributed starts
unless the environment sets them already).
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

#: NVLink multicast off: some multi-GPU hosts hang or fail in NCCL's NVLS paths (docs/context-parallel.md).
MULTICAST_OFF: dict[str, str] = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def keep_multicast_off(env: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Set each of :data:`MULTICAST_OFF` that ``env`` lacks (before any NCCL communicator exists)."""
    for name, value in MULTICAST_OFF.items():
        env.setdefault(name, value)


keep_multicast_off()

import torch  # noqa: E402  (after the environment: NCCL reads it when it loads)
import torch.distributed as dist  # noqa: E402

from attnperf.analysis.memory import min_bytes  # noqa: E402
from attnperf.backends import BACKENDS, Unsupported  # noqa: E402
from attnperf.backends.context_parallel import ContextParallel, ring_runner  # noqa: E402
from attnperf.benchgrid import FORWARD, PointSpec  # noqa: E402
from attnperf.case import Case, make_inputs  # noqa: E402
from attnperf.catalog import get_variant  # noqa: E402
from attnperf.correctness import CheckResult, forward_error, run_unsupported_aware  # noqa: E402
from attnperf.files import write_atomic, write_json  # noqa: E402
from attnperf.machine import available_bytes, machine_tag  # noqa: E402
from attnperf.measure import policy, time_calls  # noqa: E402
from attnperf.mechanisms import get_mechanism  # noqa: E402
from attnperf.point import DIRECT, Point, derived, free_memory, is_oom, measure, measure_point  # noqa: E402
from attnperf.records import Record, Status  # noqa: E402

VARIANTS = ("full", "causal")
BASELINES = {"cuda": "sdpa-cudnn,sdpa-flash,flash-attn4", "cpu": "eager,sdpa-flash"}
BACKEND: ContextParallel = BACKENDS["context-parallel"]  # type: ignore[assignment]
GIB = 2**30


class LaunchError(RuntimeError):
    """The process was not started the way the command needs (no torchrun, one rank)."""


def start(device: str) -> tuple[int, int]:
    """Join the process group torchrun describes: NCCL with one GPU per rank, or gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "0"))
    if "RANK" not in os.environ or world < 2:
        raise LaunchError(
            "needs torchrun with WORLD_SIZE >= 2: torchrun --nproc-per-node 2 -m attnperf cp " + " ".join(sys.argv[1:])
        )
    if device == "cuda":
        if not torch.cuda.is_available() or torch.cuda.device_count() < int(os.environ.get("LOCAL_WORLD_SIZE", world)):
            raise LaunchError(f"--device cuda needs one GPU per local rank; torch sees {torch.cuda.device_count()}")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # The long single-device points run on rank 0 while the others wait at a barrier.
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=timedelta(minutes=60))
    return dist.get_rank(), dist.get_world_size()


def from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_case(case: Case, seed: int) -> CheckResult:
    """Context-parallel attention on every rank, the gathered output against the float64
    reference on rank 0; every rank returns rank 0's verdict."""
    mech = get_mechanism("full")
    head = {"mechanism": mech.name, "backend": BACKEND.name, "case_id": case.id}
    reason = BACKEND.supports(mech, case)
    if reason is not None:
        return CheckResult(**head, status=Status.UNSUPPORTED, reason=reason)
    q, k, v = make_inputs(case, seed=seed)
    try:
        with torch.no_grad():
            runner = BACKEND.prepare(mech, case, q, k, v)
            out = runner.gather(run_unsupported_aware(BACKEND, runner))  # type: ignore[attr-defined]
    except Unsupported as exc:
        return CheckResult(**head, status=Status.UNSUPPORTED, reason=str(exc))
    verdict = None
    if dist.get_rank() == 0:
        error, bound = forward_error(mech, BACKEND, case, (q, k, v), out, seed)
        verdict = CheckResult(**head, status=Status.OK if error <= bound else Status.WRONG, error=error, bound=bound)
    return from_rank0(verdict)


@dataclass(frozen=True)
class Shape:
    """The shape flags every length shares."""

    device: str
    dtype: str
    batch: int
    heads: int
    kv_heads: int
    head_dim: int

    def case(self, variant: str, seq_len: int) -> Case:
        return get_variant(variant).case(seq_len, batch=self.batch, heads=self.heads, head_dim=self.head_dim,
                                         dtype=self.dtype, device=self.device, kv_heads=self.kv_heads)  # fmt: skip


def shards(case: Case, seed: int, rank: int, ranks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's q, k, v shards, drawn on its own device (the timed inputs need no reference)."""
    gen = torch.Generator(device=case.device).manual_seed(seed + rank)
    rows = case.q_len // ranks
    shapes = [(case.batch, case.heads, rows, case.head_dim)] + [(case.batch, case.n_kv_heads, rows, case.head_dim)] * 2
    q, k, v = (torch.randn(s, generator=gen, device=case.device, dtype=case.torch_dtype) for s in shapes)
    return q, k, v


def gathered(value: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def time_ring(case: Case, seed: int, repeat: int, variant: str) -> dict[str, Any]:
    """The ring on fresh shards, measured by :func:`attnperf.point.measure` with the same calls on
    every rank: the slowest rank's median, every rank's peak extra memory."""
    rank, ranks = dist.get_rank(), dist.get_world_size()
    spec = ring_spec(case, variant)
    result: dict[str, Any] = {}
    try:
        q, k, v = shards(case, seed, rank, ranks)
        runner = ring_runner(case, q, k, v)
        with torch.no_grad():
            runner()
            one = torch.tensor([time_calls(runner, case.device, 1)], dtype=torch.float64, device=q.device)
            dist.all_reduce(one, op=dist.ReduceOp.MAX)
            # the same calls on every rank: the calibration is the slowest rank's
            number = max(1, int(policy(case.device).min_sample_s / max(float(one.item()), 1e-9)))
            dist.barrier()
        point = Point(spec, case, get_mechanism(spec.mechanism), BACKEND, runner,
                      CheckResult(spec.mechanism, BACKEND.name, case.id, Status.OK), (q, k, v))  # fmt: skip
        m = measure(point, repeat=repeat, timings=(DIRECT,), number=number)
        assert m.direct is not None
        inputs = sum(t.numel() * t.element_size() for t in (q, k, v))
        mine = {"median_s": m.direct.median, "samples_s": m.direct.samples, "peak_bytes": m.peak_bytes,
                "inputs_bytes": inputs, "first_call_s": m.first_call_s}  # fmt: skip
        result["peak_kind"] = m.peak_kind
    except RuntimeError as exc:  # torch.OutOfMemoryError, or the CPU allocator's RuntimeError
        if not is_oom(exc):
            raise
        mine = {"oom": str(exc).strip().splitlines()[0]}
    free_memory(case.device)
    per_rank = gathered(mine)
    oom = [r["oom"] for r in per_rank if "oom" in r]
    if oom:
        return {"status": Status.OOM.value, "reason": oom[0]}
    median = max(r["median_s"] for r in per_rank)
    return result | derived(spec, case, median) | {
        "status": Status.OK.value, "median_s": median, "per_rank": per_rank,
        "peak_per_rank_bytes": max(r["peak_bytes"] or 0 for r in per_rank) + max(r["inputs_bytes"] for r in per_rank),
    }  # fmt: skip


def ring_spec(case: Case, variant: str) -> PointSpec:
    return PointSpec(backend=BACKEND.name, variant=variant, seq_len=case.q_len, head_dim=case.head_dim,
                     dtype=case.dtype, mode=FORWARD, device=case.device, heads=case.heads, batch=case.batch,
                     options=(("kv_heads", case.n_kv_heads),))  # fmt: skip


def ring_refusal(case: Case) -> str | None:
    """Why the analyzer predicts the ring cannot fit on some rank now (its share of the inputs and
    output, and the backend's predicted peak per rank)."""
    free = available_bytes(case.device)
    needed = min_bytes(case) // dist.get_world_size() + BACKEND.predicted_peak_bytes(get_mechanism("full"), case)
    frees = gathered(free)
    if any(f is not None and needed > f for f in frees):
        return (
            f"predicted {needed / GIB:.1f} GiB per rank > {min(f for f in frees if f is not None) / GIB:.1f} GiB free"
        )
    return None


def single_device(shape: Shape, variant: str, seq_len: int, baselines: Sequence[str], repeat: int) -> list[Record]:
    """The baselines on rank 0 alone, through the sweep's checked path (others wait)."""
    records = []
    if dist.get_rank() == 0:
        for name in baselines:
            spec = PointSpec(backend=name, variant=variant, seq_len=seq_len, head_dim=shape.head_dim,
                             dtype=shape.dtype, mode=FORWARD, device=shape.device, heads=shape.heads,
                             batch=shape.batch, options=(("kv_heads", shape.kv_heads),))  # fmt: skip
            records += measure_point(spec, repeat=repeat)
            free_memory(shape.device)
    dist.barrier()
    return records


def bench(
    shape: Shape, *, out: Path, variants: Sequence[str], seq_lens: Sequence[int], max_seq_len: int,
    baselines: Sequence[str], repeat: int, seed: int | None,
) -> int:  # fmt: skip
    """The 1-device vs N-rank table (see the module text); exit 1 when a check is wrong."""
    rank, ranks = dist.get_rank(), dist.get_world_size()
    tag = f"{machine_tag()}-x{ranks}"
    out_json = out / f"cp-{tag}.json"
    seed = from_rank0(seed if seed is not None else secrets.randbelow(2**31))
    rows: list[dict[str, Any]] = []
    timed_repeat = repeat
    for variant in variants:
        lengths = list(seq_lens)
        while lengths[-1] * 2 <= max_seq_len:
            lengths.append(lengths[-1] * 2)
        failed_single = failed_ring = False
        for seq_len in lengths:
            started = time.perf_counter()
            timed = seq_len in seq_lens
            repeat = timed_repeat if timed else 1
            case = shape.case(variant, seq_len)
            row: dict[str, Any] = {"variant": variant, "seq_len": seq_len, "case_id": case.id, "timed": timed}
            if not failed_single:
                singles = single_device(shape, variant, seq_len, baselines, repeat)
                row["single"] = [r.to_dict() for r in singles]
                ok = [r for r in singles if r.status is Status.OK]
                best = min(ok, key=lambda r: r.median_s or float("inf")) if ok else None
                row["best_single"] = best.to_dict() if best else None
                failed_single = from_rank0(rank == 0 and not ok and not timed)
            if not failed_ring:
                check = check_case(case, seed) if timed else None
                row["check"] = check.as_dict() if check else None
                if check is not None and not check.ok:
                    row["ring"] = {"status": check.status.value, "reason": check.reason}
                elif (why := ring_refusal(case)) is not None:
                    row["ring"] = {"status": Status.REFUSED.value, "reason": why}
                else:
                    row["ring"] = time_ring(case, seed, repeat, variant)
                failed_ring = not timed and row["ring"]["status"] != Status.OK.value
            rows.append(row | speedup_of(row, ranks))
            if rank == 0:
                report = {"machine": tag, "ranks": ranks, "seed": seed, "layout": BACKEND.describe(),
                          "shape": vars(shape), "rows": rows}  # fmt: skip
                write_json(out_json, report)
                write_atomic(out_json.with_suffix(".md"), table(rows, ranks))
                # one line a row as it ends: where a long run spends its time shows before it is cut off
                print(table(rows[-1:], ranks).splitlines()[-1], f"({time.perf_counter() - started:.0f} s)", flush=True)
            if failed_single and failed_ring:
                break
    if rank == 0:
        print(table(rows, ranks), end="")
        print(f"wrote {out_json} and {out_json.with_suffix('.md')}")
    wrong = any((r.get("check") or {}).get("status") == Status.WRONG.value for r in rows)
    return 1 if wrong else 0


def speedup_of(row: dict[str, Any], ranks: int) -> dict[str, Any]:
    """Speedup (N-rank throughput ÷ the best single device's) and efficiency (speedup ÷ N)."""
    best, ring = row.get("best_single"), row.get("ring") or {}
    if not best or ring.get("status") != Status.OK.value:
        return {}
    speedup = best["median_s"] / ring["median_s"]
    return {"speedup": speedup, "efficiency": speedup / ranks}


def _cell(part: dict[str, Any] | None, seconds: float | None) -> str:
    if part is None:
        return "-"
    if part.get("status") != Status.OK.value:
        return part.get("status", "-")
    return f"{seconds * 1e3:.3g} ms" if seconds is not None else "-"


def table(rows: Sequence[dict[str, Any]], ranks: int) -> str:
    """The Markdown table: length, 1 device (its backend), N ranks, speedup, efficiency, memory."""
    lines = [
        f"| variant | length | 1 device (best) | {ranks} ranks | speedup | efficiency | peak/rank 1 → {ranks} |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        best, ring = row.get("best_single"), row.get("ring")
        single_failed = next((r["status"] for r in row.get("single", []) if r["status"] != Status.OK.value), "-")
        one = f"{_cell(best, best['median_s'])} ({best['spec']['backend']})" if best else single_failed
        many = _cell(ring, (ring or {}).get("median_s"))
        one_mem = (best.get("peak_bytes") or 0) + min_bytes(Case(**best["case"])) if best else None
        many_mem = (ring or {}).get("peak_per_rank_bytes")
        mem = " → ".join(_bytes(m) for m in (one_mem, many_mem))
        speed = f"{row['speedup']:.2f}×" if "speedup" in row else "-"
        eff = f"{row['efficiency']:.0%}" if "efficiency" in row else "-"
        lines.append(f"| {row['variant']} | {row['seq_len']} | {one} | {many} | {speed} | {eff} | {mem} |")
    return "\n".join(lines) + "\n"


def _bytes(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def check_all(shape: Shape, *, variants: Sequence[str], seq_lens: Sequence[int], seed: int | None,
              json_path: Path | None) -> int:  # fmt: skip
    """Every variant and length checked over the ranks; exit 1 when any result is wrong."""
    rank = dist.get_rank()
    seed = from_rank0(seed if seed is not None else secrets.randbelow(2**31))
    results = []
    for variant in variants:
        for seq_len in seq_lens:
            result = check_case(shape.case(variant, seq_len), seed)
            results.append(result)
            if rank == 0:
                detail = f"error {result.error:.3g} <= {result.bound:.3g}" if result.ok else result.reason or ""
                if result.status is Status.WRONG:
                    detail = f"error {result.error:.3g} > bound {result.bound:.3g}"
                print(f"{result.status.value:12} {variant:7} {result.case_id}  {detail}", flush=True)
    if rank == 0 and json_path is not None:
        write_json(json_path, {"machine": f"{machine_tag()}-x{dist.get_world_size()}", "seed": seed,
                               "layout": BACKEND.describe(), "results": [r.as_dict() for r in results]})  # fmt: skip
    return 1 if any(r.status is Status.WRONG for r in results) else 0
