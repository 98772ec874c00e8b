"""``attnperf cp check | bench``: context-parallel attention over the ranks torchrun starts."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from attnperf.case import DTYPES
from attnperf.cli.args import choices_list, int_list, positive_int
from attnperf.errors import UsageError, check_output, check_workdir

VARIANTS = ("full", "causal")
BASELINES = {"cuda": "sdpa-cudnn,sdpa-flash,flash-attn4", "cpu": "eager,sdpa-flash"}


def cmd_cp(args: argparse.Namespace) -> int:
    from attnperf.cpbench import keep_multicast_off

    keep_multicast_off()  # before torch.distributed starts NCCL
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor.experimental._attention import set_rotate_method

    from attnperf.cpbench import BACKEND, LaunchError, Shape, bench, check_all, start

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.cp == "bench":
        check_workdir(args.out, "--out")
        baselines = args.baselines or BASELINES[args.device].split(",")
        if BACKEND.name in baselines:
            raise UsageError(f"--baselines: {BACKEND.name} is what is measured against them")
    elif args.json is not None:  # rank 0 writes it, so rank 0 holds its lock
        check_output(args.json, "--json", lock=os.environ.get("RANK", "0") == "0")
    shape = Shape(args.device, args.dtype, args.batch, args.heads, args.kv_heads or args.heads, args.head_dim)
    try:
        shape.case("full", 64)  # validates heads, kv_heads, head_dim and batch with Case's own messages
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        start(args.device)
    except LaunchError as exc:
        raise UsageError(str(exc)) from None
    set_rotate_method(args.rotate)
    try:
        if args.cp == "check":
            return check_all(shape, variants=args.variants, seq_lens=args.seq_lens, seed=args.seed, json_path=args.json)
        return bench(shape, out=args.out, variants=args.variants, seq_lens=args.seq_lens, max_seq_len=args.max_seq_len,
                     baselines=baselines, repeat=args.repeat, seed=args.seed)  # fmt: skip
    finally:
        dist.destroy_process_group()


def register(sub: Any) -> None:
    """Add cp (check, bench) to the ``attnperf`` command."""
    from attnperf.backends import BACKENDS

    p = sub.add_parser(
        "cp", help="context-parallel attention under torchrun (torchrun --nproc-per-node N -m attnperf cp)"
    )
    cp = p.add_subparsers(dest="cp", required=True)
    for name, what in (("check", "the gathered output against the float64 reference"),
                       ("bench", "time and memory against length, 1 device vs N ranks")):  # fmt: skip
        q = cp.add_parser(name, help=what)
        q.add_argument("--device", choices=("cpu", "cuda"), default=None,
                       help="cuda: NCCL, one GPU per rank; cpu: gloo (default: cuda when visible)")  # fmt: skip
        q.add_argument("--dtype", choices=sorted(DTYPES), help="default bfloat16 on cuda, float32 on cpu")
        q.add_argument("--variants", type=choices_list(VARIANTS, "variants"), default=list(VARIANTS),
                       help="full,causal (default both)")  # fmt: skip
        q.add_argument("--batch", type=positive_int, default=1)
        q.add_argument("--heads", type=positive_int, default=16)
        q.add_argument("--kv-heads", type=positive_int, help="GQA/MQA: kv heads (default: --heads)")
        q.add_argument("--head-dim", type=positive_int, default=128)
        q.add_argument("--rotate", choices=("allgather", "alltoall"), default="allgather",
                       help="how the ring moves keys and values (set_rotate_method; default allgather)")  # fmt: skip
        q.add_argument("--seed", type=int, help="input seed (default: drawn on rank 0)")
    check = cp.choices["check"]
    check.add_argument("--seq-lens", type=int_list, default=[4096, 16384], help="comma-separated (default 4096,16384)")
    check.add_argument("--json", type=Path, help="write the verdicts here")
    b = cp.choices["bench"]
    b.add_argument("--seq-lens", type=int_list, default=[16384, 32768, 65536, 131072, 262144],
                   help="timed lengths, each checked first (default 16384 … 262144)")  # fmt: skip
    b.add_argument("--max-seq-len", type=int, default=0,
                   help="double past the timed lengths up to this, until each fails (default off)")  # fmt: skip
    b.add_argument("--baselines", type=choices_list(sorted(set(BACKENDS) - {"context-parallel"}), "baselines"),
                   help=f"single-device backends (default {BASELINES['cuda']}; cpu: {BASELINES['cpu']})")  # fmt: skip
    b.add_argument("--repeat", type=positive_int, default=7, help="samples per timed point (default 7)")
    b.add_argument("--out", type=Path, required=True, help="folder for cp-<machine>-x<N>.json and .md")
    p.set_defaults(func=cmd_cp)
