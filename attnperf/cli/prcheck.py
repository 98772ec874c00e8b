"""``attnperf regress | trials | calibrate``: the pull-request check, its error rates, its calibration."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from attnperf.cli.args import fraction, non_negative_int, number, positive_int
from attnperf.errors import EXIT_FAILURE, UsageError, check_output, check_workdir
from attnperf.verdict import MIN_EFFECT

#: ``--repeat``: a median of fewer than 3 samples is one sample's noise.
at_least_3 = number(int, "an integer >= 3 (a median of fewer samples is one sample's noise)", lambda v: v >= 3)


def cmd_regress(args: argparse.Namespace) -> int:
    """Exit 1 on a confirmed regression, a hole, or unlabelled measurement changes; 0 otherwise."""
    from attnperf.prcheck import regress

    check_workdir(args.workdir, "--workdir")
    if args.summary is not None:
        check_output(args.summary, "--summary")
    if args.noise is not None and not args.noise.is_file():
        raise UsageError(f"--noise {args.noise}: no such file")
    result = regress(
        args.base, args.head, repo=args.repo, grid=args.grid, processes=args.processes, confirm=args.confirm,
        noise_file=args.noise, min_effect=args.min_effect, allow_grid_change=args.allow_grid_change,
        allow_measurement_change=args.allow_measurement_change, workdir=args.workdir, summary=args.summary,
        repeat=args.repeat,
    )  # fmt: skip
    if args.summary is not None:
        print(Path(args.summary).read_text(encoding="utf-8"))
    return EXIT_FAILURE if result.failed else 0


def load_runs(paths: list[Path], what: str) -> list[Any]:
    from attnperf.records import load_records

    seen: set[Path] = set()
    runs = []
    for path in paths:
        if path.resolve() in seen:  # a copy on both sides would calibrate the other half with what it judges
            raise UsageError(f"{what}: {path} is given twice")
        seen.add(path.resolve())
        runs.append(load_records(path, what))
    return runs


def cmd_trials(args: argparse.Namespace) -> int:
    import attnperf
    from attnperf.batchrun import parse_inject
    from attnperf.benchgrid import grid_named
    from attnperf.files import write_json
    from attnperf.noise import Noise, measuring_code
    from attnperf.processes import ProcessRunner, write_points
    from attnperf.trials import evaluate, finished, print_table, run_processes

    check_workdir(args.workdir, "--workdir")
    check_output(args.out, "--out")
    if args.noise_out is not None:
        check_output(args.noise_out, "--noise-out")
    runs = finished(load_runs(sorted(args.workdir.glob("trial-*.json")) if args.reuse else [], "--reuse")
                    + load_runs(args.add_runs, "--add-runs"))  # fmt: skip
    grid_name = args.grid or ("pr-gpu" if grid_named().device == "cuda" else "pr-cpu")
    points = grid_named(grid_name).points()
    machine = pool_machine(runs, args.reuse)  # refused before any process starts
    judge = None
    if args.noise:  # an earlier calibration judges these processes only if the same measuring code took them all
        codes = {r.meta.get("measuring_code") for r in runs}
        if not args.reuse:  # the new processes run this checkout's attnperf, else the installed one (PYTHONPATH)
            tree = (
                Path.cwd()
                if (Path.cwd() / "attnperf" / "__init__.py").is_file()
                else Path(attnperf.__file__).parents[1]
            )
            codes.add(measuring_code(tree))
        if None in codes:
            unnamed = ", ".join(r.label for r in runs if r.meta.get("measuring_code") is None)
            raise UsageError(f"--noise: {unnamed} do not record the code that measured them, so no calibration can be "
                             "held to it; measure them again")  # fmt: skip
        if len(codes) > 1:
            raise UsageError(f"--noise: the pooled processes were measured by different measuring code "
                             f"({', '.join(sorted(codes))}); one calibration cannot judge them all")  # fmt: skip
        judge = Noise.load(args.noise, machine=machine, code=codes.pop())
    if judge is not None and not judge.calibrated:
        raise UsageError(f"--noise: {judge.why_uncalibrated}")
    if not args.reuse:
        args.workdir.mkdir(parents=True, exist_ok=True)
        inject = args.inject or ("spin:flash-attn4=5" if grid_named(grid_name).device == "cuda" else "spin:eager=100")
        parse_inject(inject)  # refused before any process starts
        runner = ProcessRunner(args.workdir.resolve(), repeat=args.repeat)
        print(f"attnperf trials: grid {grid_name}, {len(points)} points; inject {inject}", file=sys.stderr)
        points_file = write_points(args.workdir / "points.json", points)
        runs = finished(run_processes(runner, Path.cwd(), points_file, inject=inject, budget_s=args.budget_s,
                                      max_processes=args.max_processes)) + runs  # fmt: skip
    table = evaluate(runs, noise=judge, processes=args.processes, confirm=args.confirm, min_effect=args.min_effect)
    walls = [r.meta["wall_s"] for r in runs if "wall_s" in r.meta]
    write_json(args.out, {
        "grid": grid_name, "points": len(points), "processes_a_side": args.processes, "confirm_a_side": args.confirm,
        "min_effect": args.min_effect, "process_count": len(runs), "machine": machine,
        "fingerprints": sorted({str(r.meta.get("fingerprint")) for r in runs}),
        "process_wall_s": {"median": statistics.median(walls) if walls else None, "first": walls[:2]},
        **table,
    })  # fmt: skip
    if args.noise_out is not None:
        write_noise(runs, args.noise_out, grid_name)
    print_table(table)
    return 0


def pool_machine(runs: list[Any], reuse: bool) -> str:
    """The machine tag the pooled processes ran on (this machine's where a process does not say, or
    where new processes will run here): a pool evaluated again elsewhere is one runner's, and is
    held to its calibration. Processes of several tags are no one runner's pool: refused."""
    from attnperf.machine import machine_tag

    tags = {r.meta.get("machine") or machine_tag() for r in runs} | (set() if reuse else {machine_tag()})
    if len(tags) > 1:
        raise UsageError(f"the pooled processes ran on several machine tags ({', '.join(sorted(tags))})")
    return tags.pop() if tags else machine_tag()


def write_noise(runs: list[Any], out: Path, grid: str | None) -> Path:
    """The calibration of ``runs`` for the machine they ran on (which ``--reuse`` may not be this one)."""
    from attnperf.trials import calibration_of

    noise, about = calibration_of(runs, pool_machine(runs, reuse=True), grid)
    if not noise.sigma:
        raise UsageError("no benchmark ran in two or more processes: nothing to calibrate")
    return noise.save(out, **about)


def default_noise_path() -> Path:
    """Where ``calibrate`` writes by default: ``ATTNPERF_NOISE`` (a ``.json`` file, or a folder that gets
    ``<tag>.json``), else ``benchmarks/noise/<tag>.json`` of this checkout (to be committed, so that it
    reaches the base)."""
    from attnperf.machine import machine_tag
    from attnperf.noise import runner_path

    return runner_path(machine_tag()) or Path("benchmarks") / "noise" / f"{machine_tag()}.json"


def cmd_calibrate(args: argparse.Namespace) -> int:
    from attnperf.benchgrid import grid_named
    from attnperf.processes import ProcessRunner, write_points
    from attnperf.trials import finished, run_processes

    out = args.out or default_noise_path()
    check_output(out, "--out")
    check_workdir(args.workdir, "--workdir")
    runs = finished(load_runs(args.runs, "--runs"))
    grid_name = args.grid or ("pr-gpu" if grid_named().device == "cuda" else "pr-cpu")
    if not args.runs:
        args.workdir.mkdir(parents=True, exist_ok=True)
        points = grid_named(grid_name).points()
        runner = ProcessRunner(args.workdir.resolve(), repeat=args.repeat)
        points_file = write_points(args.workdir / "points.json", points)
        print(f"attnperf calibrate: {args.processes} A/A processes of grid {grid_name}", file=sys.stderr)
        runs = finished(run_processes(runner, Path.cwd(), points_file, inject=None, budget_s=float("inf"),
                                      max_processes=args.processes, prefix="calibrate"))  # fmt: skip
    path = write_noise(runs, out, grid_name)
    print(f"attnperf calibrate: {len(runs)} processes -> {path}")
    return 0


def register(sub: Any) -> None:
    """Add regress, trials and calibrate to the ``attnperf`` command."""
    p = sub.add_parser("regress", help="base vs head in alternating fresh processes; exit 1 on a confirmed slowdown",
                       description="Compare two commits on this machine; fail on a confirmed regression.")  # fmt: skip
    p.add_argument("base", help="base commit (e.g. origin/main)")
    p.add_argument("head", help="head commit (e.g. HEAD)")
    p.add_argument("--grid", help="grid name: pr-gpu, pr-cpu, gpu, cpu (default: pr-gpu with CUDA, else pr-cpu)")
    p.add_argument("--processes", type=positive_int, default=2, help="fresh processes a side (default 2)")
    p.add_argument("--confirm", type=non_negative_int, default=2,
                   help="processes a side for flagged points (default 2; 0: off)")  # fmt: skip
    p.add_argument("--noise", type=Path, help="the runner's calibration (default: ATTNPERF_NOISE, else the BASE "
                   "commit's benchmarks/noise/MACHINE.json; never the head's)")  # fmt: skip
    p.add_argument("--min-effect", type=fraction, default=MIN_EFFECT,
                   help=f"smallest slowdown that counts, as a fraction (default {MIN_EFFECT})")  # fmt: skip
    p.add_argument("--allow-grid-change", action="store_true",
                   help="benchmarks that ran on base but not on head pass (the grid changes on purpose)")  # fmt: skip
    p.add_argument("--allow-measurement-change", action="store_true",
                   help="head may change the calibration or the measuring code (a maintainer's label)")  # fmt: skip
    p.add_argument("--repeat", type=at_least_3, default=10, help="samples per point and process (default 10)")
    p.add_argument("--workdir", type=Path, default=Path("regress-out"), help="process outputs and verdict.json")
    p.add_argument("--summary", type=Path, default=Path("regress-summary.md"), help="markdown summary path")
    p.add_argument("--repo", type=Path, default=Path("."), help="the git repository")
    p.set_defaults(func=cmd_regress)

    p = sub.add_parser("trials", help="the check's error rates here: disjoint A/A and injected-slowdown trials")
    p.add_argument("--grid", help="grid name (default: pr-gpu with CUDA, else pr-cpu)")
    p.add_argument("--inject", help="KIND:BACKENDS=LEVELS[;…] measured by the B processes: spin:all=5 (PCT %% of "
                   "each median), host:all=20 (µs before each direct call), pass:all=1 (extra passes over q) "
                   "(default spin:flash-attn4=5 on a GPU, spin:eager=100 on the CPU)")  # fmt: skip
    p.add_argument("--processes", type=positive_int, default=2, help="processes a side in one check (default 2)")
    p.add_argument("--confirm", type=non_negative_int, default=2, help="processes a side in its confirmation")
    p.add_argument("--budget-s", type=float, default=540, help="start no process that would end past this")
    p.add_argument("--max-processes", type=positive_int, default=200, help="stop after this many processes")
    p.add_argument("--min-effect", type=fraction, default=MIN_EFFECT, help="as regress's --min-effect")
    p.add_argument("--repeat", type=at_least_3, default=10, help="samples per point and process")
    p.add_argument("--workdir", type=Path, default=Path("trials-out"), help="process outputs")
    p.add_argument("--out", type=Path, default=Path("regress-trials.json"), help="the table (JSON)")
    p.add_argument("--noise-out", type=Path, help="also write the calibration of all the processes here")
    p.add_argument("--noise", type=Path, help="judge every trial with this earlier calibration (default: each half "
                   "of the processes judged with the other half's)")  # fmt: skip
    p.add_argument(
        "--reuse", action="store_true", help="evaluate the trial-*.json in --workdir again, measuring nothing"
    )
    p.add_argument("--add-runs", type=Path, nargs="*", default=[], help="more trial results files to pool")
    p.set_defaults(func=cmd_trials)

    p = sub.add_parser("calibrate", help="A/A processes on this runner: the noise calibration the check reads")
    p.add_argument("--grid", help="grid name (default: pr-gpu with CUDA, else pr-cpu)")
    p.add_argument("--processes", type=positive_int, default=8, help="A/A processes (default 8)")
    p.add_argument("--repeat", type=at_least_3, default=10, help="samples per point and process")
    p.add_argument("--workdir", type=Path, default=Path("calibrate-out"), help="process outputs")
    p.add_argument("--runs", type=Path, nargs="*", default=[],
                   help="calibrate from these results files instead of measuring (e.g. a trial pool)")  # fmt: skip
    p.add_argument("--out", type=Path, help="the noise file (default: ATTNPERF_NOISE, else benchmarks/noise/TAG.json)")
    p.set_defaults(func=cmd_calibrate)
