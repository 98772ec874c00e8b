"""The ``attnperf`` command (also ``python -m attnperf``).

Subcommands:
  list     the mechanism × backend support matrix on this machine, with every reason
  check    compare backends with the float64 reference on fresh random inputs
  sweep    check, then time, variants × backends × sequence lengths × batch sizes
  analyze  predicted FLOPs, bytes, peak memory and roofline; --measure compares and fits exponents
  plot     plots from sweep results; pictures of masks, weights, positions and heads
  tune     per backend, the batch size of highest throughput under memory / p95 limits
  model    a whole Llama-3.2-1B-shaped decoder: prefill and decode per transformers attention implementation
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from attnperf.backends import BACKENDS
from attnperf.case import DTYPES
from attnperf.catalog import VARIANTS
from attnperf.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, Failure, UsageError, check_output, exclusive
from attnperf.model import IMPLEMENTATIONS, SIZES, TOLERANCE

#: Mechanism options and head layout, each a flag that overrides the variants' own.
OPTION_FLAGS = ("window", "top_k", "stride", "block", "num_global", "num_random", "kv_heads")


def csv_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one value (comma-separated)")
    return items


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value:g}")
    return value


#: Tokens the mechanism pictures may have (``plot --n``, or the count of ``--tokens``): below one
#: BigBird block of 8 the sparse patterns do not show; above 512 a cell is under a pixel in the
#: figures and each of the 12 panels is a dense n × n mask (512 takes about 30 s on 2 CPU cores).
PICTURE_N = (8, 512)


def picture_size(text: str) -> int:
    """``plot --n``: an integer in :data:`PICTURE_N`."""
    low, high = PICTURE_N
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {value}")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated integers, each at least 1, at least one."""
    return [positive_int(item) for item in csv_list(text)]


def choices_list(allowed: Sequence[str], what: str) -> Any:
    def parse(text: str) -> list[str]:
        items = list(allowed) if text == "all" else csv_list(text)
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; allowed: all or {', '.join(allowed)}")
        return items

    return parse


def device_arg(text: str) -> str:
    """``cpu`` or ``cuda[:N]``, refused at once when no such GPU is visible."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no GPU visible to torch here (allowed: cpu)")
        if (device.index or 0) >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} GPUs")
    return text


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain fixed-width table of ``rows`` with ``(key, header)`` columns."""
    cells = [[header for _, header in columns]]
    for row in rows:
        cells.append([_cell(row.get(key)) for key, _ in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def add_shape_arguments(parser: argparse.ArgumentParser, *, seq_lens: str) -> None:
    parser.add_argument(
        "--variants",
        type=choices_list(list(VARIANTS), "variants"),
        default=list(VARIANTS),
        help=f"comma-separated, or 'all' (default): {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--backends",
        type=choices_list(list(BACKENDS), "backends"),
        default=list(BACKENDS),
        help=f"comma-separated, or 'all' (default): {', '.join(BACKENDS)}",
    )
    parser.add_argument(
        "--seq-lens", type=int_list, default=int_list(seq_lens), help=f"comma-separated (default {seq_lens})"
    )
    add_case_arguments(parser)


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    """Heads, head_dim, dtype, device and the mechanism options, shared by every command."""
    parser.add_argument("--heads", type=positive_int, default=8, help="query heads (default 8)")
    parser.add_argument("--head-dim", type=positive_int, default=64, help="head dimension (default 64)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="default float32")
    parser.add_argument("--device", type=device_arg, default="cpu", help="cpu (default) or cuda[:N]")
    for name in OPTION_FLAGS:
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=positive_int, default=None, help=f"override the variants' {name}"
        )


def add_cuda_graphs_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cuda-graphs", action="store_true",
        help="time each point's call replayed as a CUDA graph (no Python or launch overhead; the replay's output is "
        "checked against the direct call's); a call that cannot be captured is recorded unsupported, with why",
    )  # fmt: skip


def require_cuda_for_graphs(args: argparse.Namespace) -> None:
    if args.cuda_graphs and not args.device.startswith("cuda"):
        raise UsageError(f"--cuda-graphs needs --device cuda (got {args.device})")


def options_of(args: argparse.Namespace) -> dict[str, int]:
    return {name: getattr(args, name) for name in OPTION_FLAGS if getattr(args, name) is not None}


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


def grid_of(args: argparse.Namespace) -> Any:
    """The :class:`attnperf.benchgrid.Grid` the shape arguments describe."""
    from attnperf.benchgrid import Grid

    return Grid(
        variants=tuple(getattr(args, "variants", None) or [args.variant]), backends=tuple(args.backends),
        seq_lens=tuple(getattr(args, "seq_lens", None) or [args.seq_len]), head_dims=(args.head_dim,),
        dtypes=(args.dtype,), device=args.device, heads=args.heads, batches=tuple(getattr(args, "batches", (1,))),
        options=tuple(sorted(options_of(args).items())),
    )  # fmt: skip


def cmd_check(args: argparse.Namespace) -> int:
    from attnperf.correctness import check
    from attnperf.records import Status
    from attnperf.registry import fit

    rows = []
    for spec in grid_of(args).forward_points():
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
    from pathlib import Path

    from tqdm import tqdm

    from attnperf.machine import machine_info
    from attnperf.records import Record, Status, load_records, save_records
    from attnperf.results import write_csv
    from attnperf.sweep import run_sweep

    if args.quick:
        args.seq_lens, args.repeat = args.seq_lens[:2], min(args.repeat, 3)
    require_cuda_for_graphs(args)
    grid = grid_of(args)
    json_path = Path(args.json) if args.json else None
    if args.resume and json_path is None:
        raise UsageError("--resume continues the run in --json FILE; give --json")
    done: list[Record] = []
    if json_path is not None:  # every check before the first point runs
        check_output(json_path, "--json", existing_ok=args.force or args.resume)
        if args.resume and json_path.exists():
            done = resumable(load_records(json_path), grid, machine_info(), cuda_graph=args.cuda_graphs)
    if args.csv:
        check_output(args.csv, "--csv")
    saved: list[Record] = list(done)

    def save(records: list[Record]) -> None:  # after every point: a stopped sweep keeps what it did
        saved[:] = records
        if json_path is not None:
            save_records(json_path, records, machine=machine_info())
        if args.csv:
            write_csv(args.csv, [{k: v for k, v in r.to_dict().items() if k not in ("case", "samples_s")}
                                 for r in records])  # fmt: skip

    def progress(points: Any) -> Any:
        return tqdm(points, desc="sweep", unit="point", file=sys.stderr)

    with exclusive(json_path) if json_path is not None else contextlib.nullcontext():
        try:
            records = run_sweep(grid, repeat=args.repeat, progress=progress, on_record=save, done=done,
                                cuda_graph=args.cuda_graphs)  # fmt: skip
        except KeyboardInterrupt:  # save() wrote every finished point to each file asked for
            files = " and ".join(str(path) for path in (json_path, args.csv) if path is not None)
            where = f"saved to {files}" if files else "measured (no --json or --csv: nothing written)"
            print(f"attnperf sweep: interrupted; {len(saved)} points {where}", file=sys.stderr)
            return EXIT_INTERRUPTED
    rows = []
    for r in records:
        row = r.to_dict()
        row["ms"] = r.median_s * 1e3 if r.median_s is not None else str(r.status)
        row["peak_mib"] = r.peak_bytes / 2**20 if r.peak_bytes is not None else None
        rows.append(row)
    columns = [("variant", "variant"), ("backend", "backend"), ("kernel", "kernel"), ("seq_len", "seq_len"),
               ("batch", "batch"),
               ("ms", "median ms"), ("tokens_per_s", "tokens/s"), ("useful_tflops", "TFLOP/s"),
               ("peak_mib", "peak MiB"), ("speedup", "speedup vs eager"),
               ("memory_ratio", "memory vs eager")]  # fmt: skip
    if args.cuda_graphs:
        print("times are CUDA-graph replays (--cuda-graphs); peak memory is the direct call's")
    print(format_table([row for row, r in zip(rows, records, strict=True)
                        if args.all or r.status is not Status.UNSUPPORTED], columns))  # fmt: skip
    for r in records:
        if r.status in (Status.WRONG, Status.OOM, Status.REFUSED, Status.FAILED) or (
            args.all and r.status is Status.UNSUPPORTED
        ):
            print(f"  {r.variant} × {r.backend} @ {r.seq_len}: {r.status}: {r.reason}")
    return EXIT_FAILURE if any(r.status in (Status.WRONG, Status.FAILED) for r in records) else 0


def cmd_profile(args: argparse.Namespace) -> int:
    from pathlib import Path

    from attnperf.profile import profile_point
    from attnperf.records import Status
    from attnperf.results import write_json

    if args.json:
        check_output(Path(args.json), "--json", existing_ok=args.force)
    profiles = [profile_point(spec, calls=args.calls) for spec in grid_of(args).forward_points()]
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


def resumable(results: Any, grid: Any, machine: dict[str, Any], *, cuda_graph: bool = False) -> list[Any]:
    """The records of an earlier run of this sweep that a resumed run keeps: all of them but the
    ``failed`` ones (measured again), points outside the new grid too (they were measured, and the
    user asked to continue that run).
    Refused when the file was written on another machine or software stack, when a record's
    shape or options differ from what this run's flags give at its point, or when it was timed
    with(out) ``--cuda-graphs`` and this run is not: the file would hold two runs under one name."""
    if dict(results.machine) != machine:
        stack = f"torch {results.machine.get('torch')}, {results.machine.get('gpu', 'cpu')}"
        raise UsageError(f"--resume: {results.path} was written on another machine or software stack ({stack}); "
                         "--force starts over")  # fmt: skip
    timed_otherwise = [r for r in results.records if r.ok and bool(r.cuda_graph) != cuda_graph]
    if timed_otherwise:
        first = timed_otherwise[0]
        how = "as a CUDA-graph replay" if first.cuda_graph else "call by call (without --cuda-graphs)"
        raise UsageError(f"--resume: {results.path} has {first.variant} × {first.backend} at {first.seq_len} timed "
                         f"{how}; --force starts over")  # fmt: skip
    changed = [(record, why) for record in results.records if (why := shape_change(record, grid)) is not None]
    if changed:
        first, why = changed[0]
        more = f" (and {len(changed) - 1} more points)" if len(changed) > 1 else ""
        raise UsageError(f"--resume: {results.path} has {first.variant} × {first.backend} at {first.seq_len} "
                         f"{why}{more}; --force starts over")  # fmt: skip
    from attnperf.records import Status

    return [r for r in results.records if r.status is not Status.FAILED]  # measured again


def shape_change(record: Any, grid: Any) -> str | None:
    """None when ``record`` has the shape and options ``grid``'s flags give at its point (whether
    or not the point is in the grid), else how it differs: compared with the case for a record
    that has one, else with :func:`attnperf.sweep.intended_shape`."""
    from attnperf.sweep import intended_shape

    spec = grid.spec(record.backend, record.variant, record.seq_len, batch=record.batch)
    if not record.case_id:
        if "heads" not in record.case:  # written before the shape was stored: nothing to compare
            return "without its shape (an older attnperf's record)"
        return None if dict(record.case) == intended_shape(spec) else "with another shape or options"
    try:
        case = spec.case().as_dict()
    except ValueError:  # these flags cannot build the point's case (another variant list, kv heads)
        return "with another shape or options"
    return None if dict(record.case) == case else "with another shape or options"


def case_from_flags(variant: str, seq_len: int, **shape: Any) -> Any:
    """``variant``'s :class:`~attnperf.case.Case` at ``seq_len`` in the shape the flags give. Case
    raises ValueError for combinations it refuses (``--heads 9`` with gqa's heads/4 kv heads);
    from flags that is the user's input, so it becomes a UsageError naming the point."""
    try:
        return VARIANTS[variant].case(seq_len, **shape)
    except ValueError as exc:
        raise UsageError(f"{variant} at {seq_len} tokens: {exc}") from None


def print_complexity_table(args: argparse.Namespace) -> int:
    """``attnperf analyze --table``: big-O classes beside the exponents fitted over --seq-lens."""
    from attnperf.reports.complexity import complexity_rows
    from attnperf.results import write_json
    from attnperf.sweep import run_sweep

    if args.measure_ceilings:  # the table has no roofline: the flag would be silently ignored
        raise UsageError("--measure-ceilings: --table draws no roofline and uses no ceilings; leave one of them out")
    if args.json:
        check_output(args.json, "--json")
    if len(set(args.seq_lens)) < 2:  # checked before --measure times anything
        raise UsageError(f"--seq-lens: --table fits exponents over the lengths; give at least 2 distinct lengths, "
                         f"got {','.join(map(str, args.seq_lens))}")  # fmt: skip
    for variant in args.variants:
        for n in args.seq_lens:
            case_from_flags(variant, n, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype)
    measured: dict[tuple[str, str], list[tuple[int, float]]] = {}
    if args.measure:
        for r in run_sweep(grid_of(args), repeat=args.repeat):
            if r.ok and r.median_s is not None:
                measured.setdefault((r.variant, r.backend), []).append((r.seq_len, r.median_s))
    rows = complexity_rows(args.variants, args.seq_lens, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype,
                           measured_times=measured)  # fmt: skip
    columns = [("variant", "variant"), ("time", "time"), ("time_p", "p (useful FLOPs)"),
               ("fused_space", "space, fused"), ("fused_q", "q (tiled)"),
               ("materialized_space", "space, materialized"), ("materialized_q", "q (eager)")]  # fmt: skip
    columns += [(f"measured_p_{b}", f"p measured {b}") for b in args.backends if args.measure]
    print(f"exponents fitted over n = {', '.join(map(str, args.seq_lens))}: time ∝ n^p, memory ∝ n^q")
    print("n tokens, d head dim, w window, k top-k, s stride (√n unless the variant fixes it: strided has s = 64),")
    print("b block, g global, r random, c summary columns; batch and heads multiply every entry")
    print(format_table(rows, columns))
    if args.json:
        write_json(args.json, {"table": "complexity", "seq_lens": args.seq_lens, "rows": rows})
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.table:
        return print_complexity_table(args)
    from attnperf.ceilings import ceilings
    from attnperf.reports.predictions import fit_exponents, join, predict
    from attnperf.results import write_json
    from attnperf.sweep import run_sweep

    if args.json:
        check_output(args.json, "--json")
    require_cuda_for_graphs(args)
    hardware = ceilings(args.device, args.dtype, measure=args.measure_ceilings)
    grid = grid_of(args)
    rows = predict(grid, hardware)
    columns = [("variant", "variant"), ("backend", "backend"), ("seq_len", "seq_len"),
               ("useful_gflop", "useful GFLOP"), ("executed_gflop", "executed GFLOP"), ("min_mb", "min MB"),
               ("pred_mib", "pred. peak MiB"), ("bound_ms", "roofline ms"), ("limit", "bound")]  # fmt: skip
    if args.measure:
        rows = join(rows, run_sweep(grid, repeat=args.repeat, cuda_graph=args.cuda_graphs))
        columns += [("ms", "median ms"), ("tflops", "useful TFLOP/s"), ("roofline_pct", "% roofline"),
                    ("meas_mib", "meas. peak MiB"), ("pred_over_meas", "pred/meas")]  # fmt: skip
    table = [row.as_dict() for row in rows]
    print(f"hardware: {hardware.name}; {hardware.flops} FLOP/s, {hardware.bandwidth / 1e9:.0f} GB/s")
    print(format_table(table, columns))
    fits = fit_exponents(rows) if args.measure else []
    if fits:
        print("\nfitted exponents (time ∝ n^p, memory ∝ n^q; 95% intervals; 'longest half': p fitted on the longer")
        print("half of the lengths only, where fixed per-call costs no longer flatten the slope; two lengths")
        print("give a slope without an interval):")
        print(format_table(fits, [("variant", "variant"), ("backend", "backend"), ("time_exp", "time p"),
                                  ("time_ci", "95% CI"), ("tail_exp", "p, longest half"), ("tail_lens", "lengths"),
                                  ("mem_exp", "memory q"), ("mem_ci", "95% CI")]))  # fmt: skip
    if args.json:
        write_json(args.json, {"hardware": hardware.name, "rows": table, "fits": fits})
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from attnperf.ceilings import ceilings
    from attnperf.plots import PICTURE_PLOTS, RESULT_PLOTS, PictureOptions, plot_pictures, plot_results
    from attnperf.records import load_records

    out = Path(args.out)
    kinds = args.kinds or [*RESULT_PLOTS, *PICTURE_PLOTS]
    unknown = [k for k in kinds if k not in RESULT_PLOTS + PICTURE_PLOTS]
    if unknown:
        raise UsageError(f"--kinds: unknown {unknown}; allowed: {', '.join(RESULT_PLOTS + PICTURE_PLOTS)}")
    tokens = tuple(args.tokens.split()) if args.tokens else None
    if tokens is not None and not PICTURE_N[0] <= len(tokens) <= PICTURE_N[1]:
        raise UsageError(f"--tokens: {len(tokens)} given; the pictures take {PICTURE_N[0]} to {PICTURE_N[1]} tokens")
    picture = PictureOptions(n=len(tokens) if tokens else args.n, window=args.window, top_k=args.top_k,
                             stride=args.stride, tokens=tokens)  # fmt: skip
    result_kinds = [k for k in kinds if k in RESULT_PLOTS]
    if result_kinds and args.kinds and not args.results:
        raise UsageError(f"--kinds {', '.join(result_kinds)} need result files (attnperf sweep --json FILE)")
    files = [load_records(path) for path in args.results]  # every file checked before any picture is drawn
    for results in files:
        if not any(r.ok for r in results.records):
            raise Failure(f"results file {results.path}: no point ran successfully, nothing to plot "
                          f"({len(results.records)} records)")  # fmt: skip
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    records = [r.to_dict() for results in files for r in results.records]
    hardware = None
    if records and "roofline" in result_kinds:  # chosen before any picture: it may refuse the results
        dtype = next(r["case"]["dtype"] for r in records if r["status"] == "ok")
        hardware = ceilings("cpu", dtype, gpu_name=files[-1].machine.get("gpu"))
    paths = plot_pictures(out, [k for k in kinds if k in PICTURE_PLOTS], picture)
    if records and result_kinds:
        paths += plot_results(records, out, result_kinds, hardware)
    for path in paths:
        print(path)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from attnperf.results import write_csv, write_json
    from attnperf.tune import tune_backend

    for flag in ("json", "csv"):
        if getattr(args, flag):
            check_output(getattr(args, flag), f"--{flag}")
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


def cmd_model(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from attnperf.machine import machine_info
    from attnperf.model import ModelRun, model_config, transformers_reason
    from attnperf.records import Status
    from attnperf.results import write_json

    if args.json:
        check_output(args.json, "--json")
    values = model_config(args.size, layers=args.layers, hidden=args.hidden, vocab=args.vocab)  # input first
    if (why := transformers_reason()) is not None:
        raise Failure(why)
    run = ModelRun(values, prompt_len=args.prompt_len, new_tokens=args.new_tokens, batch=args.batch,
                   dtype=args.dtype, device=args.device, seed=args.seed)  # fmt: skip
    rows = [run.row(impl, repeat=args.repeat) for impl in tqdm(args.implementations, desc="model", unit="impl",
                                                                file=sys.stderr)]  # fmt: skip
    eager = next((r for r in rows if r.implementation == "eager" and r.status is Status.OK), None)
    table = []
    for r in rows:
        row: dict[str, Any] = {"implementation": r.implementation, "status": str(r.status), "reason": r.reason or ""}
        if r.prefill_s is not None and r.decode_s_per_token is not None:  # it ran (status ok)
            row |= {"prefill_ms": r.prefill_s * 1e3, "prefill_tps": r.prefill_tokens_per_s,
                    "decode_ms": r.decode_s_per_token * 1e3, "decode_tps": r.decode_tokens_per_s,
                    "rel_error": r.rel_error}  # fmt: skip
            for key, value in (("prefill_mib", r.prefill_peak_bytes), ("decode_mib", r.decode_peak_bytes)):
                row[key] = value / 2**20 if value is not None else None
            if eager is not None and eager.prefill_s is not None and eager.decode_s_per_token is not None:
                row |= {"prefill_x": eager.prefill_s / r.prefill_s,
                        "decode_x": eager.decode_s_per_token / r.decode_s_per_token}  # fmt: skip
        table.append(row)
    print(f"Llama-3.2-1B config: {values['num_hidden_layers']} layers, hidden {values['hidden_size']}, "
          f"{values['num_attention_heads']} heads / {values['num_key_value_heads']} KV, vocab {values['vocab_size']}; "
          f"random weights; batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"{args.dtype} on {args.device}; medians of {args.repeat}")  # fmt: skip
    print(format_table(table, [("implementation", "attn_implementation"), ("status", "status"),
                               ("prefill_ms", "prefill ms"), ("prefill_tps", "prefill tok/s"),
                               ("decode_ms", "decode ms/token"), ("decode_tps", "decode tok/s"),
                               ("prefill_x", "prefill vs eager"), ("decode_x", "decode vs eager"),
                               ("prefill_mib", "prefill peak MiB"), ("decode_mib", "decode peak MiB"),
                               ("rel_error", "logits rel. err"), ("reason", "reason")]))  # fmt: skip
    if args.json:
        write_json(args.json, {"model": "Llama-3.2-1B (config.json values, random weights)", "config": values,
                               "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                               "dtype": args.dtype, "device": args.device, "repeat": args.repeat, "seed": args.seed,
                               "machine": machine_info(), "rows": [r.to_dict() for r in rows]})  # fmt: skip
    if any(r.status is Status.WRONG for r in rows) or not any(r.status is Status.OK for r in rows):
        return EXIT_FAILURE
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnperf", description="Attention mechanisms × backends: check, time, compare."
    )
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("sweep", help="check, then time variants × backends × seq lens × batch sizes")
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
    add_cuda_graphs_argument(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("profile", help="check, then list the kernels one call launches and the time each takes")
    add_shape_arguments(p, seq_lens="1024")
    p.add_argument("--calls", type=positive_int, default=20, help="calls profiled per point (default 20)")
    p.add_argument("--top", type=positive_int, default=8, help="kernels shown per point, longest first (default 8)")
    p.add_argument("--json", help="write every point's kernels to this JSON file, atomically")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json FILE")
    p.add_argument("--all", action="store_true", help="also show unsupported points and their reasons")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("analyze", help="predicted FLOPs, bytes, peak memory, roofline; --measure holds them to timings")
    add_shape_arguments(p, seq_lens="1024,2048,4096")
    p.add_argument(
        "--measure", action="store_true", help="also time each point and measure its peak memory, and fit exponents"
    )
    p.add_argument(
        "--measure-ceilings", action="store_true",
        help="measure matmul/copy ceilings on a GPU instead of its datasheet (not with --table)",
    )  # fmt: skip
    p.add_argument("--repeat", type=positive_int, default=5, help="timed samples per point with --measure (default 5)")
    p.add_argument("--json", help="write the table (and fits) to this JSON file, atomically")
    p.add_argument(
        "--table", action="store_true",
        help="the complexity table: big-O time and space per variant beside exponents fitted over --seq-lens "
        "(from the analyzer; with --measure, from timings of --backends too); --json writes its rows",
    )  # fmt: skip
    add_cuda_graphs_argument(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("plot", help="plots from sweep result files, and pictures of the mechanisms (PNG and SVG)")
    p.add_argument("results", nargs="*", help="JSON files written by attnperf sweep --json")
    p.add_argument("--out", default="plots", help="output folder (default plots/)")
    p.add_argument(
        "--kinds",
        type=csv_list,
        default=None,
        help="scaling, memory, throughput, roofline (need results); masks, heatmaps, positions, heads",
    )
    p.add_argument(
        "--n", type=picture_size, default=64,
        help=f"tokens in the mechanism pictures, {PICTURE_N[0]} to {PICTURE_N[1]} (default 64)",
    )  # fmt: skip
    p.add_argument(
        "--window", type=positive_int, default=32, help="window of the pictures' local variants (default 32)"
    )
    p.add_argument("--top-k", type=positive_int, default=32, help="k of the pictures' top-k panel (default 32)")
    p.add_argument(
        "--stride", type=positive_int, default=None, help="stride of the strided pictures (default round(√n))"
    )
    p.add_argument(
        "--tokens", default=None,
        help=f"space-separated tokens labelling the pictures' axes (sets n: {PICTURE_N[0]} to {PICTURE_N[1]} of them)",
    )  # fmt: skip
    p.set_defaults(func=cmd_plot)

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

    p = sub.add_parser(
        "model", help="a Llama-3.2-1B-shaped decoder (random weights): prefill, decode, memory per attn_implementation"
    )
    p.add_argument(
        "--size", choices=list(SIZES), default="small",
        help="1b: Llama-3.2-1B's config.json; small (default): 2 layers, hidden 512, seconds on a CPU",
    )  # fmt: skip
    p.add_argument("--layers", type=positive_int, default=None, help="override the number of decoder layers")
    p.add_argument(
        "--hidden", type=positive_int, default=None,
        help="override the hidden size (a multiple of 256: heads = hidden/64, KV heads = heads/4)",
    )  # fmt: skip
    p.add_argument("--vocab", type=positive_int, default=None, help="override the vocabulary (default 128256)")
    p.add_argument(
        "--implementations", type=choices_list(list(IMPLEMENTATIONS), "implementations"),
        default=list(IMPLEMENTATIONS), help=f"comma-separated, or 'all' (default): {', '.join(IMPLEMENTATIONS)}",
    )  # fmt: skip
    p.add_argument("--prompt-len", type=positive_int, default=128, help="prompt tokens of the prefill (default 128)")
    p.add_argument("--new-tokens", type=positive_int, default=16, help="tokens decoded with the KV cache (default 16)")
    p.add_argument("--batch", type=positive_int, default=1, help="sequences per call (default 1)")
    p.add_argument("--repeat", type=positive_int, default=5, help="timed samples; the median is reported (default 5)")
    p.add_argument("--dtype", choices=list(TOLERANCE), default="float32", help="default float32")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and tokens (default 0)")
    p.add_argument("--json", help="write the rows (with samples, config and machine) to this JSON file, atomically")
    p.set_defaults(func=cmd_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; expected failures end in one line and the exit codes of
    :mod:`attnperf.errors` (2 usage, 1 failure, 130 interrupted). A bug keeps its traceback:
    only :class:`UsageError` is bad input, so a ``ValueError`` raised inside the library is not
    passed off as the user's mistake (input checks raise UsageError, or are converted to it
    where the command builds a case from flags, :func:`case_from_flags`)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:  # bad input (a flag, a combination Case refuses, a results file): name it
        print(f"attnperf {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Failure as exc:
        print(f"attnperf {args.command}: failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # a file or device that went away after it was checked
        print(f"attnperf {args.command}: failed: {exc.filename or ''} {exc.strerror or exc}".strip(), file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"attnperf {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
