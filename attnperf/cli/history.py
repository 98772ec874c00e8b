"""``attnperf history | batch``: the benchmark history (asv results), and one measuring process."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from attnperf.cli.prcheck import at_least_3, load_runs
from attnperf.errors import UsageError, check_output, check_workdir


def cmd_history(args: argparse.Namespace) -> int:
    from attnperf.asvhistory import measure_here, record, run_history
    from attnperf.machine import machine_tag
    from attnperf.processes import resolve

    if args.history == "run":
        check_workdir(args.workdir, "--workdir")
        return run_history(args.repo.resolve(), steps=args.steps, grid=args.grid, shard=args.shard,
                           machine=args.machine or machine_tag(), workdir=args.workdir)  # fmt: skip
    if args.history == "measure":
        check_output(args.out, "--out", lock=False)  # the batch process it starts writes and locks it
        if args.out.suffix != ".json":
            raise UsageError(f"--out {args.out}: give a .json file name")
        output = measure_here(args.repo.resolve(), grid=args.grid, shard=args.shard, out=args.out)
        print(f"measured {len(output.records)} points in {output.meta['wall_s']:.0f} s into {args.out}")
        return 0
    commit = resolve(args.repo, args.commit, "--commit")
    runs = load_runs(args.runs, "run file")
    machine = args.machine or runs[0].meta.get("machine") or machine_tag()  # the machine that measured them
    if not isinstance(machine, str):
        raise UsageError(f"run file {args.runs[0]}: 'machine' is not a machine tag; give --machine")
    path = record(runs, commit, repo=args.repo, machine=machine)
    print(f"recorded {len(args.runs)} processes of {commit[:10]} into {path}")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from attnperf.batchrun import parse_inject, run
    from attnperf.processes import read_points

    check_output(args.out, "--out")
    parse_inject(args.inject)
    output = run(read_points(args.points), args.out, verdicts=args.verdicts, inject=args.inject, repeat=args.repeat,
                 label=args.label)  # fmt: skip
    counts: dict[str, int] = {}
    for r in output.records:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    print(json.dumps({"out": str(args.out), "records": counts, "injected": len(output.injected),
                      "seconds": output.meta["seconds"]}), file=sys.stderr)  # fmt: skip
    return 0


def register(sub: Any) -> None:
    """Add history and batch to the ``attnperf`` command."""
    p = sub.add_parser("history", help="the benchmark history: recent commits measured and recorded as asv results")
    hist = p.add_subparsers(dest="history", required=True)
    run = hist.add_parser("run", help="measure the recent commits this machine has no results for")
    run.add_argument("--steps", type=int, default=3, help="how many recent commits (default 3)")
    run.add_argument("--workdir", type=Path, default=Path(".asv/runs"), help="process outputs")
    meas = hist.add_parser("measure", help="measure this checkout in one process, without recording")
    meas.add_argument("--out", type=Path, required=True, help="the results file (JSON)")
    for q in (run, meas):
        q.add_argument("--grid", help="grid name (default: gpu with CUDA, else cpu)")
        q.add_argument("--shard", help="I/N: measure every N-th point from the I-th")
    rec = hist.add_parser("record", help="record batch results files of one commit")
    rec.add_argument("--commit", required=True, help="the commit the outputs measured")
    rec.add_argument("runs", nargs="+", type=Path, help="batch results files")
    for q in (run, meas, rec):
        q.add_argument("--machine", help="asv machine name (default: attnperf.machine.machine_tag())")
        q.add_argument("--repo", type=Path, default=Path("."), help="the git repository with asv.conf.json")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("batch", help="measure a points file in this one process (what regress and history start)")
    p.add_argument("--points", type=Path, required=True, help="JSON file of points (attnperf.processes.write_points)")
    p.add_argument("--out", type=Path, required=True, help="the results file this process writes")
    p.add_argument("--verdicts", type=Path, help="correctness verdicts shared by this commit's processes")
    p.add_argument("--inject", help="KIND:BACKENDS=LEVELS[;…]: also measure those backends slowed (trials)")
    p.add_argument("--repeat", type=at_least_3, default=10, help="samples per point (default 10)")
    p.add_argument("--label", help="a name for this process in the output (e.g. base-2)")
    p.set_defaults(func=cmd_batch)
