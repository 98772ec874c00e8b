"""``attnperf analyze | plot``: the analyzer's predictions against measurements, and the pictures."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from attnperf.cli.args import (
    OPTION_FLAGS,
    PICTURE_N,
    add_cuda_graphs_argument,
    add_shape_arguments,
    case_from_flags,
    csv_list,
    format_table,
    grid_of,
    non_negative_int,
    picture_size,
    positive_int,
    require_cuda_for_graphs,
)
from attnperf.errors import Failure, UsageError, check_output

if TYPE_CHECKING:
    from attnperf.reports.crossover import Crossover


def print_complexity_table(args: argparse.Namespace) -> int:
    """``attnperf analyze --table``: big-O classes beside the exponents fitted over --seq-lens."""
    from attnperf.ceilings import ceilings
    from attnperf.files import write_json
    from attnperf.reports.complexity import complexity_rows
    from attnperf.reports.crossover import crossovers, points_of_records, points_of_rows
    from attnperf.reports.predictions import predict
    from attnperf.sweep import run_sweep

    if args.measure_ceilings:  # the table has no roofline: the flag would be silently ignored
        raise UsageError("--measure-ceilings: --table draws no roofline and uses no ceilings; leave one of them out")
    ignored = [flag for flag in OPTION_FLAGS if flag != "kv_heads" and getattr(args, flag) is not None]
    if ignored:  # the table's rows are each variant's own definition: an override would be silently ignored
        flag = "--" + ignored[0].replace("_", "-")
        raise UsageError(f"{flag}: analyze --table uses each variant's own options; leave {flag} out, or use "
                         "analyze without --table")  # fmt: skip
    if args.json:
        check_output(args.json, "--json")
    if len(set(args.seq_lens)) < 2:  # checked before --measure times anything
        raise UsageError(f"--seq-lens: --table fits exponents over the lengths; give at least 2 distinct lengths, "
                         f"got {','.join(map(str, args.seq_lens))}")  # fmt: skip
    for variant in args.variants:
        for n in args.seq_lens:
            case_from_flags(variant, n, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype)
    measured: dict[tuple[str, str], list[tuple[int, float]]] = {}
    records = run_sweep(grid_of(args), repeat=args.repeat) if args.measure else []
    for r in records:
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
    if args.measure:
        found = crossovers(points_of_records(records))
    else:
        found = crossovers(points_of_rows(predict(grid_of(args), ceilings(args.device, args.dtype)), predicted=True),
                           predicted=True)  # fmt: skip
    print_crossovers(found)
    if args.json:
        write_json(args.json, {"table": "complexity", "seq_lens": args.seq_lens, "rows": rows,
                               "crossovers": [c.as_dict() for c in found]})  # fmt: skip
    return 0


def print_crossovers(found: Sequence[Crossover]) -> None:
    from attnperf.reports.crossover import lines

    for line in lines(found):
        print(line)


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.table:
        return print_complexity_table(args)
    from attnperf.ceilings import ceilings
    from attnperf.files import write_json
    from attnperf.reports.crossover import crossovers, points_of_rows
    from attnperf.reports.predictions import fit_exponents, join, predict
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
    # measured crossovers where the points were timed, else the analyzer's predicted ones
    found = crossovers(points_of_rows(rows, predicted=not args.measure), predicted=not args.measure)
    print_crossovers(found)
    if args.json:
        write_json(args.json, {"hardware": hardware.name, "rows": table, "fits": fits,
                               "crossovers": [c.as_dict() for c in found]})  # fmt: skip
    return 0


def check_plottable(results: Any, kinds: list[str]) -> None:
    """Every ok record has what the asked plots read (a sweep writes all of it; an edited or foreign file
    may not): refused, naming the file, the record and the field, before any picture is drawn."""
    from attnperf.case import Case

    needed = {"throughput": "tokens_per_s", "scaling": "median_s", "roofline": "median_s"}
    for i, record in enumerate(results.records):
        if not record.ok:
            continue
        for kind in kinds:
            field = needed.get(kind)
            if field == "tokens_per_s" and record.tokens_per_s is None:
                raise UsageError(f"results file {results.path}: records[{i}]: an ok record without tokens_per_s "
                                 f"(the {kind} plot reads it)")  # fmt: skip
        if "roofline" in kinds:
            try:
                Case(**record.case)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"results file {results.path}: records[{i}]: case: {exc}") from None


def read_text_flag(args: argparse.Namespace) -> str | None:
    """The text of ``--text`` or ``--text-file`` (UTF-8), checked to make a picture; None without either."""
    from attnperf.plots import text_tokens

    if args.text is not None and args.text_file is not None:
        raise UsageError("--text-file: give the text once, with --text or with --text-file")
    if args.text is not None:
        flag, text = "--text", args.text
    elif args.text_file is not None:
        flag = "--text-file"
        try:
            text = open(args.text_file, encoding="utf-8").read()  # noqa: SIM115 (read at once)
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--text-file {args.text_file}: cannot read it as UTF-8 text ({exc})") from None
    else:
        return None
    if args.tokens is not None:
        raise UsageError(f"--tokens: {flag} gives the tokens; leave --tokens out")
    try:
        text_tokens(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    return text


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from attnperf.ceilings import ceilings
    from attnperf.plots import (
        DEFAULT_PICTURES,
        PICTURE_PLOTS,
        RESULT_PLOTS,
        WEIGHT_SCALES,
        PictureOptions,
        plot_pictures,
        plot_results,
        plot_rows,
    )
    from attnperf.records import load_records

    out = Path(args.out)
    text = read_text_flag(args)
    kinds = args.kinds or [*RESULT_PLOTS, *DEFAULT_PICTURES, *(["text"] if text is not None else [])]
    unknown = [k for k in kinds if k not in RESULT_PLOTS + PICTURE_PLOTS]
    if unknown:
        raise UsageError(f"--kinds: unknown {unknown}; allowed: {', '.join(RESULT_PLOTS + PICTURE_PLOTS)}")
    if args.weight_scale not in WEIGHT_SCALES:
        raise UsageError(f"--weight-scale: {args.weight_scale!r}; allowed: {', '.join(WEIGHT_SCALES)}")
    if "text" in kinds and text is None:
        raise UsageError("--kinds text: the text picture needs --text TEXT or --text-file PATH")
    tokens = tuple(args.tokens.split()) if args.tokens else None
    if tokens is not None and not PICTURE_N[0] <= len(tokens) <= PICTURE_N[1]:
        raise UsageError(f"--tokens: {len(tokens)} given; the pictures take {PICTURE_N[0]} to {PICTURE_N[1]} tokens")
    picture = PictureOptions(n=len(tokens) if tokens else args.n, window=args.window, top_k=args.top_k,
                             stride=args.stride, tokens=tokens, seed=args.seed, weight_scale=args.weight_scale,
                             text=text)  # fmt: skip
    result_kinds = [k for k in kinds if k in RESULT_PLOTS]
    if result_kinds and args.kinds and not args.results:
        raise UsageError(f"--kinds {', '.join(result_kinds)} need result files (attnperf sweep --json FILE)")
    files = [load_records(path) for path in args.results]  # every file checked before any picture is drawn
    for results in files:
        if not any(r.ok for r in results.records):
            raise Failure(f"results file {results.path}: no point ran successfully, nothing to plot "
                          f"({len(results.records)} records)")  # fmt: skip
        check_plottable(results, result_kinds)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    records = plot_rows(r for results in files for r in results.records)
    hardware = None
    if records and "roofline" in result_kinds:  # chosen before any picture: it may refuse the results
        dtype = next(r["case"]["dtype"] for r in records if r["status"] == "ok")
        machine = files[-1].meta.get("machine")
        hardware = ceilings("cpu", dtype, gpu_name=machine.get("gpu") if isinstance(machine, dict) else None)
    paths = plot_pictures(out, [k for k in kinds if k in PICTURE_PLOTS], picture)
    if records and result_kinds:
        paths += plot_results(records, out, result_kinds, hardware)
    for path in paths:
        print(path)
    return 0


def register(sub: Any) -> None:
    """Add analyze, plot to the ``attnperf`` command."""
    p = sub.add_parser(
        "analyze",
        help="predicted FLOPs, bytes, peak memory, roofline, and the lengths where efficient variants overtake dense "
        "attention (crossovers); --measure holds them to timings",
    )  # fmt: skip
    add_shape_arguments(p, seq_lens="1024,2048,4096")
    p.add_argument(
        "--measure", action="store_true",
        help="also time each point and measure its peak memory, fit exponents, and report measured crossovers "
        "(without it, the crossovers are predicted from the roofline time and predicted peak)",
    )  # fmt: skip
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
        help="scaling, memory, throughput, roofline (need results); masks, heatmaps, positions, heads; text (needs "
        "--text or --text-file). Default: all that the arguments allow",
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
        help=f"space-separated tokens labelling the axes of the random-input pictures, their weights unchanged "
        f"(sets n: {PICTURE_N[0]} to {PICTURE_N[1]} of them); --text draws real tokens' weights",
    )  # fmt: skip
    p.add_argument(
        "--text", default=None,
        help="draw text.png: the weights of this text's tokens (words and punctuation; more than a picture can "
        "label is refused, naming the limit) through an untrained causal layer drawn from --seed, their "
        "embeddings hashed from the seed and the word, plus sinusoidal positions",
    )  # fmt: skip
    p.add_argument("--text-file", default=None, help="as --text, the text read from this UTF-8 file")
    p.add_argument(
        "--seed", type=non_negative_int, default=0,
        help="seed of the random inputs, BigBird's random blocks and the text picture's layer (default 0)",
    )  # fmt: skip
    p.add_argument(
        "--weight-scale", default="linear",
        help="linear or log: colour scale of the weights heatmaps; log spreads weights that span decades "
        "(default linear)",
    )  # fmt: skip
    p.set_defaults(func=cmd_plot)
