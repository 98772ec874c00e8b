"""The ``attnperf`` command (also ``python -m attnperf``).

Subcommands:
  list     the mechanism × backend support matrix on this machine, with every reason
  check    compare backends with the float64 reference on fresh random inputs
  sweep    check, then time, variants × backends × sequence lengths × batch sizes
  analyze  predicted FLOPs, bytes, peak memory and roofline; --measure compares and fits exponents
  plot     plots from sweep results; pictures of masks, weights, positions and heads
  tune     per backend, the batch size of highest throughput under memory / p95 limits
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from attnperf.backends import BACKENDS
from attnperf.case import DTYPES
from attnperf.catalog import VARIANTS

OPTION_FLAGS = ("window", "top_k", "stride", "block", "num_global", "num_random")


def csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def int_list(text: str) -> list[int]:
    try:
        return [int(item) for item in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def choices_list(allowed: Sequence[str], what: str) -> Any:
    def parse(text: str) -> list[str]:
        items = list(allowed) if text == "all" else csv_list(text)
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; allowed: all or {', '.join(allowed)}")
        return items

    return parse


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
    parser.add_argument("--heads", type=int, default=8, help="query heads (default 8)")
    parser.add_argument("--head-dim", type=int, default=64, help="head dimension (default 64)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="default float32")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    for name in OPTION_FLAGS:
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=None, help=f"override the variants' {name}"
        )


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
    """The :class:`attnperf.sweep.Grid` the shape arguments describe."""
    from attnperf.sweep import Grid

    return Grid(
        variants=tuple(args.variants), backends=tuple(args.backends), seq_lens=tuple(args.seq_lens),
        batches=tuple(getattr(args, "batches", (1,))), heads=args.heads, head_dim=args.head_dim, dtype=args.dtype,
        device=args.device, options=tuple(sorted(options_of(args).items())),
    )  # fmt: skip


def cmd_check(args: argparse.Namespace) -> int:
    from attnperf.correctness import check

    rows, failed = [], 0
    grid = grid_of(args)
    for name in args.variants:
        variant = VARIANTS[name]
        for seq_len in args.seq_lens:
            case = grid.case(name, seq_len)
            for backend in args.backends:
                result = check(variant.mechanism, backend, case)
                failed += result.status == "wrong"
                rows.append({"variant": name, "case": case.id, **result.as_dict()})
    shown = rows if args.all else [r for r in rows if r["status"] != "unsupported"]
    print(
        format_table(
            shown,
            [
                ("variant", "variant"),
                ("backend", "backend"),
                ("kernel", "kernel"),
                ("case", "case"),
                ("status", "status"),
                ("error", "rel. error"),
                ("bound", "bound"),
            ],
        )
    )
    print(
        f"\n{sum(r['status'] == 'ok' for r in rows)} ok, {failed} wrong, "
        f"{sum(r['status'] == 'unsupported' for r in rows)} unsupported (attnperf list shows why)"
    )
    return 1 if failed else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from attnperf.machine import machine_info
    from attnperf.results import write_csv, write_json
    from attnperf.sweep import run_sweep

    if args.quick:
        args.seq_lens, args.repeat = args.seq_lens[:2], min(args.repeat, 3)
    grid = grid_of(args)

    def save(records: list[dict[str, Any]]) -> None:  # after every point: a killed sweep keeps what it did
        if args.json:
            write_json(args.json, {"machine": machine_info(), "records": records})
        if args.csv:
            write_csv(args.csv, [{k: v for k, v in r.items() if k not in ("case", "samples_s")} for r in records])

    def progress(points: Any) -> Any:
        return tqdm(points, desc="sweep", unit="point", file=sys.stderr)

    records = run_sweep(grid, repeat=args.repeat, progress=progress, on_record=save)
    for r in records:
        if r["status"] == "ok":
            r["ms"] = r["median_s"] * 1e3
            if r.get("peak_bytes") is not None:
                r["peak_mib"] = r["peak_bytes"] / 2**20
        else:
            r["ms"] = r["status"]
    columns = [
        ("variant", "variant"),
        ("backend", "backend"),
        ("kernel", "kernel"),
        ("seq_len", "seq_len"),
        ("batch", "batch"),
        ("ms", "median ms"),
        ("tokens_per_s", "tokens/s"),
        ("useful_tflops", "TFLOP/s"),
        ("peak_mib", "peak MiB"),
        ("speedup", "speedup vs eager"),
        ("memory_ratio", "memory vs eager"),
    ]
    print(format_table([r for r in records if args.all or r["status"] != "unsupported"], columns))
    for r in records:
        if r["status"] in ("wrong", "oom") or (args.all and r["status"] == "unsupported"):
            print(f"  {r['variant']} × {r['backend']} @ {r['seq_len']}: {r['status']}: {r['reason']}")
    return 1 if any(r["status"] == "wrong" for r in records) else 0


def hardware_for(device: str, dtype: str, measure: bool) -> Any:
    from attnperf.analysis.hardware import datasheet_for, measured

    if device.startswith("cuda") and not measure:
        import torch

        sheet = datasheet_for(torch.cuda.get_device_name(torch.device(device)))
        if sheet is not None:
            return sheet
    return measured(device, dtype)


def print_complexity_table(args: argparse.Namespace) -> int:
    """``attnperf analyze --table``: big-O classes beside the exponents fitted over --seq-lens."""
    from attnperf.analysis.complexity import complexity_rows
    from attnperf.sweep import run_sweep

    measured: dict[tuple[str, str], list[tuple[int, float]]] = {}
    if args.measure:
        for r in run_sweep(grid_of(args), repeat=args.repeat):
            if r["status"] == "ok":
                measured.setdefault((r["variant"], r["backend"]), []).append((r["seq_len"], r["median_s"]))
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
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.table:
        return print_complexity_table(args)
    from attnperf.analysis import fit_exponent, forward_flops, min_bytes, predicted_peak_bytes, roofline, tail_exponent
    from attnperf.registry import reason_for
    from attnperf.results import write_json
    from attnperf.sweep import run_sweep

    hardware = hardware_for(args.device, args.dtype, args.measure_ceilings)
    grid = grid_of(args)
    rows = []
    for name in args.variants:
        variant = VARIANTS[name]
        for seq_len in args.seq_lens:
            case = grid.case(name, seq_len)
            for backend in args.backends:
                if reason_for(variant.mechanism, backend, case) is not None:
                    continue
                flops = forward_flops(variant.mechanism, backend, case)
                bound = roofline(variant.mechanism, backend, case, hardware)
                rows.append({
                    "variant": name, "backend": backend, "seq_len": seq_len, "useful_gflop": flops.useful / 1e9,
                    "executed_gflop": flops.executed / 1e9, "min_mb": min_bytes(case) / 1e6,
                    "pred_mib": predicted_peak_bytes(variant.mechanism, backend, case) / 2**20,
                    "bound_ms": bound.bound_s * 1e3, "limit": bound.limited_by, "case": case.as_dict(),
                })  # fmt: skip
    columns = [("variant", "variant"), ("backend", "backend"), ("seq_len", "seq_len"),
               ("useful_gflop", "useful GFLOP"), ("executed_gflop", "executed GFLOP"), ("min_mb", "min MB"),
               ("pred_mib", "pred. peak MiB"), ("bound_ms", "roofline ms"), ("limit", "bound")]  # fmt: skip
    if args.measure:
        measured = {(r["variant"], r["backend"], r["seq_len"]): r for r in run_sweep(grid, repeat=args.repeat)}
        for row in rows:
            m = measured.get((row["variant"], row["backend"], row["seq_len"]), {})
            if m.get("status") != "ok":
                row["ms"] = m.get("status", "-")
                continue
            row["ms"] = m["median_s"] * 1e3
            row["tflops"] = row["useful_gflop"] / 1e3 / m["median_s"]
            row["roofline_pct"] = 100 * row["bound_ms"] / row["ms"]
            row["meas_mib"] = m["peak_bytes"] / 2**20
            row["pred_over_meas"] = row["pred_mib"] / row["meas_mib"] if row["meas_mib"] > 0 else None
        columns += [("ms", "median ms"), ("tflops", "useful TFLOP/s"), ("roofline_pct", "% roofline"),
                    ("meas_mib", "meas. peak MiB"), ("pred_over_meas", "pred/meas")]  # fmt: skip
    print(f"hardware: {hardware.name}; {hardware.flops} FLOP/s, {hardware.bandwidth / 1e9:.0f} GB/s")
    print(format_table(rows, columns))
    fits = []
    if args.measure and len(args.seq_lens) >= 3:
        for name in args.variants:
            for backend in args.backends:
                pts = [
                    r
                    for r in rows
                    if r["variant"] == name and r["backend"] == backend and isinstance(r.get("ms"), float)
                ]
                if len({r["seq_len"] for r in pts}) < 3:
                    continue
                lengths, times = [r["seq_len"] for r in pts], [r["ms"] for r in pts]
                t, tail = fit_exponent(lengths, times), tail_exponent(lengths, times)
                mem = [r for r in pts if r.get("meas_mib", 0) > 0]
                m = fit_exponent([r["seq_len"] for r in mem], [r["meas_mib"] for r in mem]) if len(mem) >= 3 else None
                fits.append({"variant": name, "backend": backend, "time_exp": t.exponent,
                             "time_ci": f"[{t.low:.2f}, {t.high:.2f}]", "tail_exp": tail.exponent,
                             "tail_lens": f"{min(tail.lengths)}–{max(tail.lengths)}",
                             "mem_exp": m.exponent if m else None,
                             "mem_ci": f"[{m.low:.2f}, {m.high:.2f}]" if m else None})  # fmt: skip
        print("\nfitted exponents (time ∝ n^p, memory ∝ n^q; 95% intervals; 'longest half': p fitted on the longer")
        print("half of the lengths only, where fixed per-call costs no longer flatten the slope; two lengths")
        print("give a slope without an interval):")
        print(format_table(fits, [("variant", "variant"), ("backend", "backend"), ("time_exp", "time p"),
                                  ("time_ci", "95% CI"), ("tail_exp", "p, longest half"), ("tail_lens", "lengths"),
                                  ("mem_exp", "memory q"), ("mem_ci", "95% CI")]))  # fmt: skip
    if args.json:
        write_json(args.json, {"hardware": hardware.name, "rows": rows, "fits": fits})
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from attnperf.analysis.hardware import datasheet_for, measured
    from attnperf.plots import PICTURE_PLOTS, RESULT_PLOTS, PictureOptions, plot_pictures, plot_results
    from attnperf.results import read_json

    out = Path(args.out)
    kinds = args.kinds or [*RESULT_PLOTS, *PICTURE_PLOTS]
    unknown = [k for k in kinds if k not in RESULT_PLOTS + PICTURE_PLOTS]
    if unknown:
        raise ValueError(f"--kinds: unknown {unknown}; allowed: {', '.join(RESULT_PLOTS + PICTURE_PLOTS)}")
    tokens = tuple(args.tokens.split()) if args.tokens else None
    picture = PictureOptions(n=len(tokens) if tokens else args.n, window=args.window, top_k=args.top_k,
                             stride=args.stride, tokens=tokens)  # fmt: skip
    paths = plot_pictures(out, [k for k in kinds if k in PICTURE_PLOTS], picture)
    result_kinds = [k for k in kinds if k in RESULT_PLOTS]
    if args.results and result_kinds:
        records, machine = [], {}
        for path in args.results:
            data = read_json(path)
            records += data["records"]
            machine = data.get("machine", machine)
        hardware = datasheet_for(machine["gpu"]) if "gpu" in machine else None
        if hardware is None and "roofline" in result_kinds:  # the CPU: measure this machine's ceilings
            dtype = next((r["case"]["dtype"] for r in records if r.get("status") == "ok"), "float32")
            hardware = measured("cpu", dtype)
        paths += plot_results(records, out, result_kinds, hardware)
    elif result_kinds and args.kinds:
        raise ValueError(f"--kinds {', '.join(result_kinds)} need result files (attnperf sweep --json FILE)")
    for path in paths:
        print(path)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from attnperf.results import write_csv, write_json
    from attnperf.tune import tune_backend

    shape = {"seq_len": args.seq_len, "heads": args.heads, "head_dim": args.head_dim, "dtype": args.dtype,
             "device": args.device, **options_of(args)}  # fmt: skip
    rows, results = [], []
    for backend in args.backends:
        result = tune_backend(args.variant, backend, shape, memory_limit=int(args.memory_limit_mib * 2**20),
                              p95_ms=args.p95_ms, max_batch=args.max_batch, repeat=args.repeat)  # fmt: skip
        results.append(
            {"backend": backend, "best_batch": result.best_batch, "reason": result.reason, "trials": result.trials}
        )
        best = result.best or {}
        rows.append({"backend": backend, "best": result.best_batch or "-", "tokens_per_s": best.get("tokens_per_s"),
                     "median_ms": best.get("median_ms"), "p95_ms": best.get("p95_ms"),
                     "peak_mib": best["peak_bytes"] / 2**20 if best else None,
                     "tried": " ".join(f"{t['batch']}{'' if t['fits'] else '✗'}" for t in result.trials),
                     "reason": result.reason or ""})  # fmt: skip
    limit = f"memory ≤ {args.memory_limit_mib:g} MiB" + (f", p95 ≤ {args.p95_ms:g} ms" if args.p95_ms else "")
    print(f"{args.variant} at seq_len {args.seq_len}, {args.dtype} on {args.device}; {limit} (✗ = did not fit)")
    print(format_table(rows, [("backend", "backend"), ("best", "best batch"), ("tokens_per_s", "tokens/s"),
                              ("median_ms", "median ms"), ("p95_ms", "p95 ms"), ("peak_mib", "peak MiB"),
                              ("tried", "batches tried"), ("reason", "why none")]))  # fmt: skip
    if args.json:
        write_json(args.json, {"variant": args.variant, "shape": shape, "limit": limit, "results": results})
    if args.csv:
        write_csv(args.csv, rows)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnperf", description="Attention mechanisms × backends: check, time, compare."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="support matrix of variants × backends on this machine, with reasons")
    p.add_argument("--variants", type=choices_list(list(VARIANTS), "variants"), default=list(VARIANTS))
    p.add_argument("--backends", type=choices_list(list(BACKENDS), "backends"), default=list(BACKENDS))
    p.add_argument("--seq-len", type=int, default=1024, help="sequence length of the probe case (default 1024)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("check", help="compare backends with the float64 reference (fresh random inputs)")
    add_shape_arguments(p, seq_lens="1,17,257")
    p.add_argument("--all", action="store_true", help="also show unsupported pairs")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("sweep", help="check, then time variants × backends × seq lens × batch sizes")
    add_shape_arguments(p, seq_lens="256,1024,4096")
    p.add_argument("--batches", type=int_list, default=[1], help="comma-separated batch sizes (default 1)")
    p.add_argument("--repeat", type=int, default=7, help="timed samples per point; the median is reported (default 7)")
    p.add_argument("--quick", action="store_true", help="first two seq lens only, 3 samples")
    p.add_argument("--json", help="write all records (with samples and machine) to this JSON file, atomically")
    p.add_argument("--csv", help="write the records to this CSV file, atomically")
    p.add_argument("--all", action="store_true", help="also show unsupported points and their reasons")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("analyze", help="predicted FLOPs, bytes, peak memory, roofline; --measure holds them to timings")
    add_shape_arguments(p, seq_lens="1024,2048,4096")
    p.add_argument(
        "--measure", action="store_true", help="also time each point and measure its peak memory, and fit exponents"
    )
    p.add_argument(
        "--measure-ceilings", action="store_true", help="measure matmul/copy ceilings on a GPU instead of its datasheet"
    )
    p.add_argument("--repeat", type=int, default=5, help="timed samples per point with --measure (default 5)")
    p.add_argument("--json", help="write the table and fits to this JSON file, atomically")
    p.add_argument(
        "--table", action="store_true",
        help="the complexity table: big-O time and space per variant beside exponents fitted over --seq-lens "
        "(from the analyzer; with --measure, from timings of --backends too)",
    )  # fmt: skip
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
    p.add_argument("--n", type=int, default=64, help="tokens in the mechanism pictures (default 64)")
    p.add_argument("--window", type=int, default=32, help="window of the pictures' local variants (default 32)")
    p.add_argument("--top-k", type=int, default=32, help="k of the pictures' top-k panel (default 32)")
    p.add_argument("--stride", type=int, default=None, help="stride of the strided pictures (default round(√n))")
    p.add_argument("--tokens", default=None, help="space-separated tokens labelling the pictures' axes (sets n)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("tune", help="per backend, the batch size of highest throughput under memory/latency limits")
    p.add_argument("--variant", choices=list(VARIANTS), default="causal", help="default causal")
    p.add_argument(
        "--backends", type=choices_list(list(BACKENDS), "backends"), default=["eager", "sdpa-flash", "tiled"]
    )
    p.add_argument("--seq-len", type=int, default=1024, help="default 1024")
    add_case_arguments(p)
    p.add_argument("--memory-limit-mib", type=float, required=True, help="peak extra memory allowed per call")
    p.add_argument("--p95-ms", type=float, default=None, help="optional p95 latency target per call")
    p.add_argument("--max-batch", type=int, default=256, help="largest batch considered (default 256)")
    p.add_argument("--repeat", type=int, default=7, help="timed samples per batch size (default 7)")
    p.add_argument("--json", help="write every trial to this JSON file, atomically")
    p.add_argument("--csv", help="write the table to this CSV file, atomically")
    p.set_defaults(func=cmd_tune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:  # bad input: say which parameter and what is allowed
        print(f"attnperf: error: {exc}", file=sys.stderr)
        return 2
