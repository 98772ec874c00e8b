"""GPU measurements that name what limits a mechanism, beside `attnperf profile`'s kernel list.

    python tools/gpu-probes.py decode-splits [--lens 4096,32768] [--json FILE]
    python tools/gpu-probes.py alibi-mods [--seq-len 16384] [--json FILE]
    python tools/gpu-probes.py bigbird-blocksparse [--lens 1000,16384] [--json FILE]

decode-splits: FlashAttention-3's decode step (B 1, H 16, D 128, bf16, one query) over a cache,
as CUDA-graph replays, for each ``num_splits`` (0 is its own heuristic, which attnperf asks for),
against the bandwidth bound (K and V bytes over the measured copy bandwidth): whether a split
count other than the heuristic's brings the step nearer the bound.

alibi-mods: flash-attn-4's causal attention at 16k (H 16, D 128, bf16) without a ``score_mod``,
with one that returns the score unchanged (the cost of the score_mod path itself: flash-attn-4
then scales every score in a separate multiply), with a bias of one constant slope (the cost of
the per-element distance: an integer-to-float conversion and a multiply-add) and with attnperf's
ALiBi (the slope from the head index as well): how the 22% that ALiBi adds divides.

bigbird-blocksparse: the flash-attn-4 backend's two BigBird paths in one process: one call over
block-sparse lists (``attnperf.backends.block_lists``: every allowed block a "full" block, tiles of
64 × 64 on SM90), which the backend takes on SM90, and the split it keeps elsewhere (a dense call
for the global rows and a varlen call over gathered key blocks, whose gathers took a third of its
time at 16k).

Every output is held against a float64 reference (decode: the whole step; ALiBi: the last 64
query rows; BigBird: its first and last 64 rows) before it is timed; a wrong one is reported as
such, without a time.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attnperf.ceilings import measure_copy_bandwidth
from attnperf.correctness import relative_error
from attnperf.errors import error_line
from attnperf.graphs import graphed
from attnperf.measure import measure_time
from attnperf.mechanisms.positional import alibi_slopes

HEADS, HEAD_DIM, BOUND = 16, 128, 1e-2  # the bf16 bound of attnperf's check
SPLITS = (0, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """float64 softmax attention of ``[B, T, H, D]`` inputs (``bias``: ``[H, Tq, Tk]``, -inf masks)."""
    q64, k64, v64 = (t.double().transpose(1, 2) for t in (q, k, v))
    scores = q64 @ k64.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    return (scores.softmax(-1) @ v64).transpose(1, 2).cpu()


def timed(name: str, run: Callable[[], torch.Tensor], expected: torch.Tensor, *, graph: bool,
          rows: slice | torch.Tensor = slice(None)) -> dict[str, Any]:  # fmt: skip
    """Check ``run``'s output (``rows`` of it) against ``expected``, then time it (a graph's replay)."""
    try:
        out = run()
        error = relative_error(out[:, rows], expected)
        row: dict[str, Any] = {"name": name, "rel_error": error}
        if not error <= BOUND:
            return row | {"status": "wrong"}
        call = graphed(run, "cuda", BOUND) if graph else run
        timing = measure_time(call, "cuda", repeat=10)
    except Exception as exc:  # a refused argument or a failed compile: recorded, the probe goes on
        return {"name": name, "rel_error": math.nan, "status": "failed", "reason": error_line(exc)}
    return row | {"status": "ok", "median_ms": timing.median * 1e3,
                  "iqr_pct": 100 * timing.spread, "samples_ms": [s * 1e3 for s in timing.samples]}  # fmt: skip


def show(row: dict[str, Any], figure: str) -> None:
    print(f"{row['name']:<26} {row.get('median_ms', math.nan):.4f} ms  {figure}  err {row['rel_error']:.2e}  "
          f"{row['status']} {row.get('reason', '')}")  # fmt: skip


def decode_splits(lens: list[int]) -> dict[str, Any]:
    from fa3_fwd_interface import flash_attn_func

    bandwidth = measure_copy_bandwidth("cuda")
    rows = []
    for n in lens:
        gen = torch.Generator().manual_seed(n)
        q = torch.randn(1, 1, HEADS, HEAD_DIM, generator=gen).to("cuda", torch.bfloat16)
        k, v = (torch.randn(1, n, HEADS, HEAD_DIM, generator=gen).to("cuda", torch.bfloat16) for _ in range(2))
        expected = reference(q, k, v, None)
        bound_ms = 2 * k.numel() * k.element_size() / bandwidth * 1e3
        for splits in SPLITS:
            step = functools.partial(flash_attn_func, q, k, v, num_splits=splits)
            row = timed(f"cache {n}, num_splits {splits}", step, expected, graph=True)
            row |= {"cache": n, "num_splits": splits, "bound_ms": bound_ms}
            if "median_ms" in row:
                row["x_bound"] = row["median_ms"] / bound_ms
            rows.append(row)
            show(row, f"{row.get('x_bound', math.nan):.2f}x bound")
    return {"copy_bandwidth_gb_s": bandwidth / 1e9, "rows": rows}


def alibi_mods(seq_len: int) -> dict[str, Any]:
    import cutlass
    from cutlass import cute
    from flash_attn.cute import flash_attn_func

    from attnperf.backends.flash_attn_score_mods import alibi_score_mod

    @cute.jit
    def identity(score, b_idx, h_idx, q_idx, kv_idx, seqlen_info, aux_tensors):  # noqa: ANN001, ANN202
        return score

    constant = 1.0 / 16  # one slope for every head (H 16's middle slope)

    @cute.jit
    def constant_slope(score, b_idx, h_idx, q_idx, kv_idx, seqlen_info, aux_tensors):  # noqa: ANN001, ANN202
        return score.to(cutlass.Float32) - constant * (q_idx - kv_idx).to(cutlass.Float32)

    gen = torch.Generator().manual_seed(seq_len)
    q, k, v = (torch.randn(1, seq_len, HEADS, HEAD_DIM, generator=gen).to("cuda", torch.bfloat16) for _ in range(3))
    last = slice(seq_len - 64, seq_len)  # the reference of 64 rows: [H, 64, n] scores in float64
    i = torch.arange(seq_len - 64, seq_len, device="cuda", dtype=torch.float64)[:, None]
    j = torch.arange(seq_len, device="cuda", dtype=torch.float64)[None, :]
    masked = torch.where(j > i, -math.inf, 0.0)

    def expected(slopes: torch.Tensor | None) -> torch.Tensor:
        bias = masked if slopes is None else masked - slopes.to("cuda")[:, None, None] * (i - j).abs()
        return reference(q[:, last], k, v, bias.expand(HEADS, -1, -1))

    variants = [
        ("causal, no score_mod", None, None),
        ("identity score_mod", identity, None),
        ("constant-slope bias", constant_slope, torch.full((HEADS,), constant, dtype=torch.float64)),
        ("attnperf ALiBi", alibi_score_mod(HEADS), alibi_slopes(HEADS)),
    ]
    rows = []
    for name, mod, slopes in variants:
        extra = {} if mod is None else {"score_mod": mod}
        row = timed(name, lambda extra=extra: flash_attn_func(q, k, v, causal=True, **extra)[0], expected(slopes),
                    graph=False, rows=last)  # fmt: skip
        rows.append(row)
    plain = rows[0].get("median_ms")
    for row in rows:
        if plain and "median_ms" in row:
            row["over_plain_pct"] = 100 * (row["median_ms"] / plain - 1)
        show(row, f"{row.get('over_plain_pct', math.nan):+.1f}% over no score_mod")
    return {"seq_len": seq_len, "rows": rows}


def bigbird_blocksparse(lens: list[int]) -> dict[str, Any]:
    """flash-attn-4's two BigBird paths in one process: the one block-sparse call and the split."""
    from attnperf.analysis import forward_flops
    from attnperf.backends.flash_attn import FlashAttn4
    from attnperf.case import make_inputs
    from attnperf.catalog import get_variant
    from attnperf.mechanisms import get_mechanism

    split = FlashAttn4()
    split.bigbird_one_call = lambda case: False  # type: ignore[method-assign]
    mech = get_mechanism("bigbird")
    rows_out = []
    for n in lens:
        case = get_variant("bigbird").case(n, heads=HEADS, head_dim=HEAD_DIM, dtype="bfloat16", device="cuda")
        q, k, v = make_inputs(case, seed=n)
        rows = torch.cat([torch.arange(min(64, n)), torch.arange(max(0, n - 64), n)]).unique()
        expected = mech.reference(q, k, v, case, rows).transpose(1, 2)  # [B, T, H, D]: timed() slices T
        useful = forward_flops(mech, FlashAttn4(), case).useful
        paths = {"block-sparse": FlashAttn4(), "split": split}
        if not paths["block-sparse"].bigbird_one_call(case):
            print(f"the one call does not apply at {n} (needs SM90 and a block its tiles fit)", file=sys.stderr)
            del paths["block-sparse"]
        for name, backend in paths.items():
            call = backend.prepare(mech, case, q, k, v)
            row = timed(f"{name} at {n}", lambda c=call: c().transpose(1, 2), expected, graph=False, rows=rows.cuda())
            row |= {"seq_len": n, "way": name}
            if "median_ms" in row:
                row["tflops"] = useful / (row["median_ms"] / 1e3) / 1e12
            rows_out.append(row)
            show(row, f"{row.get('tflops', math.nan):.1f} TFLOP/s")
    return {"rows": rows_out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=("decode-splits", "alibi-mods", "bigbird-blocksparse"))
    parser.add_argument(
        "--lens", help="decode-splits: cache lengths (4096,32768); bigbird-blocksparse: tokens (1000,16384)"
    )
    parser.add_argument("--seq-len", type=int, default=16384, help="alibi-mods: tokens")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-probes: needs a CUDA GPU", file=sys.stderr)
        return 1
    if args.probe == "decode-splits":
        result = decode_splits([int(n) for n in (args.lens or "4096,32768").split(",")])
    elif args.probe == "bigbird-blocksparse":
        result = bigbird_blocksparse([int(n) for n in (args.lens or "1000,16384").split(",")])
    else:
        result = alibi_mods(args.seq_len)
    result |= {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    medians = [r["median_ms"] for r in result["rows"] if "median_ms" in r]
    print(f"{len(medians)} of {len(result['rows'])} timed" + (f"; fastest {min(medians):.4f} ms" if medians else ""))
    return 0 if statistics.fmean([r["status"] == "ok" for r in result["rows"]]) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
