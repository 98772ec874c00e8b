"""``attnperf list | check | sweep | profile | tune``: what runs here, whether it is right, how fast."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from attnperf.backends import BACKENDS
from attnperf.case import DTYPES
from attnperf.catalog import VARIANTS
from attnperf.cli.args import (
    add_case_arguments,
    add_cuda_graphs_argument,
    add_keep_onnx_argument,
    add_shape_arguments,
    choices_list,
    device_arg,
    format_table,
    grid_of,
    int_list,
    keeping_onnx,
    positive_float,
    positive_int,
    require_cuda_for_graphs,
)
from attnperf.errors import EXIT_FAILURE, EXIT_INTERRUPTED, UsageError, check_distinct, check_output


def cmd_list(args: argparse.Namespace) -> int:
    from attnperf.registry import support_matrix

    variants = [VARIANTS[name] for name in args.variants]
    matrix = support_matrix(variants, args.backends, seq_len=args.seq_len, dtype=args.dtype, device=args.device)
    rows = []
    for variant in variants:
        row: dict[str, Any] = {"variant": variant.name}
        for backend in args.backends:
            row[backend] = "yes" if matrix[variant.name][backend] is None else "-"
        rows.append(row)
    print(f"support on this machine (seq_len {args.seq_len}, {args.dtype}, {args.device}); '-' = unsupported")
    print(format_table(rows, [("variant", "variant")] + [(b, b) for b in args.backends]))
    print("\nreasons:")
    for variant in variants:
        for backend in args.backends:
            reason = matrix[variant.name][backend]
            if reason is not None:
                print(f"  {variant.name} × {backend}: {reason}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from attnperf.correctness import check
    from attnperf.records import Status
    from attnperf.registry import fit

    rows = []
    for spec in grid_of(args).sweep_points():
        case, reason = fit(spec)
        if case is None:
            rows.append({"variant": spec.variant, "backend": spec.backend, "case": f"seq_len {spec.seq_len}",
                         "status": Status.UNSUPPORTED, "reason": reason})  # fmt: skip
            continue
        result = check(spec.mechanism, spec.backend, case)
        rows.append({"variant": spec.variant, "case": case.id, **result.as_dict()})
    count = {status: sum(r["status"] == status for r in rows) for status in Status}
    shown = rows if args.all else [r for r in rows if r["status"] != Status.UNSUPPORTED]
    print(format_table(shown, [("variant", "variant"), ("backend", "backend"), ("kernel", "kernel"), ("case", "case"),
                               ("status", "status"), ("error", "rel. error"), ("bound", "bound")]))  # fmt: skip
    print(f"\n{count[Status.OK]} ok, {count[Status.WRONG]} wrong, "
          f"{count[Status.UNSUPPORTED]} unsupported (attnperf list shows why)")  # fmt: skip
    return EXIT_FAILURE if count[Status.WRONG] else 0


def cmd_sweep(args: argparse.Namespace) -> int:

    from tqdm import tqdm

    from attnperf.analysis.flops import FUSED_BACKWARD_FACTOR
    from attnperf.benchgrid import BACKWARD, FORWARD
    from attnperf.files import write_csv
    from attnperf.machine import machine_info
    from attnperf.records import Record, Status, load_records, save_records
    from attnperf.reports.crossover import crossovers, lines, points_of_records
    from attnperf.sweep import resumable, run_sweep

    if args.quick:
        args.seq_lens, args.repeat = args.seq_lens[:2], min(args.repeat, 3)
    require_cuda_for_graphs(args)
    grid = grid_of(args)
    mode = BACKWARD if args.backward else FORWARD
    json_path = Path(args.json) if args.json else None
    csv_path = Path(args.csv) if args.csv else None
    if args.resume and json_path is None:
        raise UsageError("--resume continues the run in --json FILE; give --json")
    check_distinct({"--json": json_path, "--csv": csv_path})
    done: list[Record] = []
    if json_path is not None:  # every check before the first point runs
        check_output(json_path, "--json", existing_ok=args.force or args.resume)
        if args.resume and json_path.exists():
            done = resumable(load_records(json_path), grid, machine_info(), cuda_graph=args.cuda_graphs, mode=mode)
    if args.csv:
        check_output(args.csv, "--csv")
    saved: list[Record] = list(done)

    def save(records: list[Record]) -> None:  # after every point: a stopped sweep keeps what it did
        saved[:] = records
        if json_path is not None:  # the crossovers of the points so far, as data beside the records
            found = [c.as_dict() for c in crossovers(points_of_records(records))]
            save_records(json_path, records, machine=machine_info(), crossovers=found)
        if args.csv:
            write_csv(args.csv, [csv_row(r) for r in records])

    def progress(points: Any) -> Any:
        return tqdm(points, desc="sweep", unit="point", file=sys.stderr)

    # check_output locked --json and --csv for the whole run: two sweeps never interleave in one file
    try:
        records = run_sweep(grid, repeat=args.repeat, progress=progress, on_record=save, done=done,
                            cuda_graph=args.cuda_graphs, mode=mode)  # fmt: skip
    except KeyboardInterrupt:  # save() wrote every finished point to each file asked for
        files = " and ".join(str(path) for path in (json_path, args.csv) if path is not None)
        where = f"saved to {files}" if files else "measured (no --json or --csv: nothing written)"
        print(f"attnperf sweep: interrupted; {len(saved)} points {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    rows = []
    for r in records:
        row = csv_row(r)
        row["ms"] = r.shown_s * 1e3 if r.shown_s is not None else str(r.status)
        row["peak_mib"] = r.peak_bytes / 2**20 if r.peak_bytes is not None else None
        rows.append(row)
    columns = [("variant", "variant"), ("backend", "backend"), ("kernel", "kernel"), ("seq_len", "seq_len"),
               ("batch", "batch"),
               ("ms", "median ms"), ("tokens_per_s", "tokens/s"), ("useful_tflops", "TFLOP/s"),
               ("peak_mib", "peak MiB"), ("speedup", "speedup vs eager"),
               ("memory_ratio", "memory vs eager")]  # fmt: skip
    if args.backward:
        print(f"times are forward+backward steps (--backward): TFLOP/s count the backward as "
              f"{FUSED_BACKWARD_FACTOR} forwards (top-k: 4 products a kept key)")  # fmt: skip
    if args.cuda_graphs:
        print("times are CUDA-graph replays (--cuda-graphs); peak memory is the direct call's")
    print(format_table([row for row, r in zip(rows, records, strict=True)
                        if args.all or r.status is not Status.UNSUPPORTED], columns))  # fmt: skip
    for r in records:
        if r.status in (Status.WRONG, Status.OOM, Status.REFUSED, Status.FAILED) or (
            args.all and r.status is Status.UNSUPPORTED
        ):
            print(f"  {r.variant} × {r.backend} @ {r.seq_len}: {r.status}: {r.reason}")
    if len(set(grid.seq_lens)) >= 2:
        for line in lines(crossovers(points_of_records(records))):
            print(line)
    return EXIT_FAILURE if any(r.status in (Status.WRONG, Status.FAILED) for r in records) else 0


def csv_row(record: Any) -> dict[str, Any]:
    """A record as one flat row (the point's identity, then its figures; samples and the case left out)."""
    identity = {"variant": record.variant, "mechanism": record.mechanism, "backend": record.backend,
                "seq_len": record.seq_len, "batch": record.batch}  # fmt: skip
    figures = {k: v for k, v in record.to_dict().items()
               if k not in ("spec", "case", "samples_s", "replay_samples_s", "seconds", "key")}  # fmt: skip
    return identity | figures


def cmd_profile(args: argparse.Namespace) -> int:

    from attnperf.files import write_json
    from attnperf.profile import profile_point
    from attnperf.records import Status

    if args.json:
        check_output(Path(args.json), "--json", existing_ok=args.force)
    profiles = [profile_point(spec, calls=args.calls) for spec in grid_of(args).sweep_points()]
    for p in profiles:
        where = f"{p.variant} × {p.backend} @ {p.seq_len}"
        if p.status is not Status.OK:
            if args.all or p.status is not Status.UNSUPPORTED:
                print(f"{where}: {p.status}: {p.reason}\n")
            continue
        kernels = (
            f"kernels {p.kernel_s * 1e3:.4g} ms of device time (busy {p.busy:.0%})"
            if p.busy is not None
            else f"operators {p.kernel_s * 1e3:.4g} ms of self CPU time, profiler overhead included"
        )
        print(f"{where}: {p.median_s * 1e3:.4g} ms a call; {kernels}")
        rows = [{"kernel": k.name[:90], "launches": k.launches, "ms": k.seconds * 1e3,
                 "share": f"{k.seconds / p.kernel_s:.0%}" if p.kernel_s else ""}
                for k in p.kernels[: args.top]]  # fmt: skip
        print(format_table(rows, [("kernel", "kernel"), ("launches", "launches a call"), ("ms", "ms a call"),
                                  ("share", "share")]) + "\n")  # fmt: skip
    if args.json:
        write_json(Path(args.json), {"device": args.device, "profiles": [p.as_dict() for p in profiles]})
    return EXIT_FAILURE if any(p.status in (Status.WRONG, Status.FAILED) for p in profiles) else 0


def cmd_tune(args: argparse.Namespace) -> int:
    from attnperf.files import write_csv, write_json
    from attnperf.tune import tune_backend

    for flag in ("json", "csv"):
        if getattr(args, flag):
            check_output(getattr(args, flag), f"--{flag}")
    check_distinct({"--json": args.json and Path(args.json), "--csv": args.csv and Path(args.csv)})
    grid = grid_of(args)
    rows, results = [], []
    for backend in args.backends:
        result = tune_backend(grid, args.variant, backend, memory_limit=int(args.memory_limit_mib * 2**20),
                              p95_ms=args.p95_ms, max_batch=args.max_batch, repeat=args.repeat)  # fmt: skip
        results.append({"backend": backend, "best_batch": result.best_batch, "reason": result.reason,
                        "trials": [t.record.to_dict() | {"fits": t.fits, "why_not": t.why_not, "p95_ms": t.p95_ms}
                                   for t in result.trials]})  # fmt: skip
        best = result.best
        record = best.record if best is not None else None
        rows.append({"backend": backend, "best": result.best_batch or "-",
                     "tokens_per_s": record.tokens_per_s if record else None,
                     "median_ms": record.median_s * 1e3 if record and record.median_s else None,
                     "p95_ms": best.p95_ms if best else None,
                     "peak_mib": record.peak_bytes / 2**20 if record and record.peak_bytes else None,
                     "tried": " ".join(f"{t.batch}{'' if t.fits else '✗'}" for t in result.trials),
                     "reason": result.reason or ""})  # fmt: skip
    limit = f"memory ≤ {args.memory_limit_mib:g} MiB" + (f", p95 ≤ {args.p95_ms:g} ms" if args.p95_ms else "")
    print(f"{args.variant} at seq_len {args.seq_len}, {args.dtype} on {args.device}; {limit} (✗ = did not fit)")
    print(format_table(rows, [("backend", "backend"), ("best", "best batch"), ("tokens_per_s", "tokens/s"),
                              ("median_ms", "median ms"), ("p95_ms", "p95 ms"), ("peak_mib", "peak MiB"),
                              ("tried", "batches tried"), ("reason", "why none")]))  # fmt: skip
    if args.json:
        write_json(
            args.json, {"variant": args.variant, "grid": dataclasses.asdict(grid), "limit": limit, "results": results}
        )
    if args.csv:
        write_csv(args.csv, rows)
    return EXIT_FAILURE if not any(r["best_batch"] for r in results) else 0


def register(sub: Any) -> None:
    """Add list, check, sweep, profile, tune to the ``attnperf`` command."""
    p = sub.add_parser("list", help="support matrix of variants × backends on this machine, with reasons")
    p.add_argument("--variants", type=choices_list(list(VARIANTS), "variants"), default=list(VARIANTS))
    p.add_argument("--backends", type=choices_list(list(BACKENDS), "backends"), default=list(BACKENDS))
    p.add_argument(
        "--seq-len", type=positive_int, default=1024, help="sequence length of the probe case (default 1024)"
    )
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu (default) or cuda[:N]")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("check", help="compare backends with the float64 reference (fresh random inputs)")
    add_shape_arguments(p, seq_lens="1,17,257")
    p.add_argument("--all", action="store_true", help="also show unsupported pairs")
    add_keep_onnx_argument(p)
    p.set_defaults(func=keeping_onnx(cmd_check))

    p = sub.add_parser(
        "sweep",
        help="check, then time variants × backends × seq lens × batch sizes; with 2+ lengths, where each "
        "efficient variant overtakes dense attention (crossovers, also in --json)",
    )  # fmt: skip
    add_shape_arguments(p, seq_lens="256,1024,4096")
    p.add_argument("--batches", type=int_list, default=[1], help="comma-separated batch sizes (default 1)")
    p.add_argument(
        "--repeat", type=positive_int, default=7, help="timed samples per point; the median is reported (default 7)"
    )
    p.add_argument("--quick", action="store_true", help="first two seq lens only, 3 samples")
    p.add_argument(
        "--json", help="write all records (with samples and machine) to this JSON file, atomically after every point"
    )
    p.add_argument(
        "--resume", action="store_true",
        help="continue the run in --json FILE: keep all its records (points outside this grid too) and measure "
        "the rest; refused if a record's shape or options differ from these flags",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="overwrite an existing --json FILE")
    p.add_argument("--csv", help="write the records to this CSV file, atomically")
    p.add_argument("--all", action="store_true", help="also show unsupported points and their reasons")
    p.add_argument(
        "--backward", action="store_true",
        help="time each point's forward+backward step (a random output gradient into q, k and v, as the "
        "history's forward+backward benchmarks) instead of the forward; its gradients are first held to the "
        "float64 reference's",
    )  # fmt: skip
    add_cuda_graphs_argument(p)
    add_keep_onnx_argument(p)
    p.set_defaults(func=keeping_onnx(cmd_sweep))

    p = sub.add_parser("profile", help="check, then list the kernels one call launches and the time each takes")
    add_shape_arguments(p, seq_lens="1024")
    p.add_argument("--calls", type=positive_int, default=20, help="calls profiled per point (default 20)")
    p.add_argument("--top", type=positive_int, default=8, help="kernels shown per point, longest first (default 8)")
    p.add_argument("--json", help="write every point's kernels to this JSON file, atomically")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json FILE")
    p.add_argument("--all", action="store_true", help="also show unsupported points and their reasons")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("tune", help="per backend, the batch size of highest throughput under memory/latency limits")
    p.add_argument("--variant", choices=list(VARIANTS), default="causal", help="default causal")
    p.add_argument(
        "--backends", type=choices_list(list(BACKENDS), "backends"), default=["eager", "sdpa-flash", "tiled"]
    )
    p.add_argument("--seq-len", type=positive_int, default=1024, help="default 1024")
    add_case_arguments(p)
    p.add_argument("--memory-limit-mib", type=positive_float, required=True, help="peak extra memory allowed per call")
    p.add_argument("--p95-ms", type=positive_float, default=None, help="optional p95 latency target per call")
    p.add_argument("--max-batch", type=positive_int, default=256, help="largest batch considered (default 256)")
    p.add_argument("--repeat", type=positive_int, default=7, help="timed samples per batch size (default 7)")
    p.add_argument("--json", help="write every trial to this JSON file, atomically")
    p.add_argument("--csv", help="write the table to this CSV file, atomically")
    p.set_defaults(func=cmd_tune)
