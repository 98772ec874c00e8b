"""The pull-request check: measure base and head, judge, confirm what was flagged, summarize.

Each commit is measured by its own batch runner in a git worktree (:mod:`attnperf.processes`).
Base and head alternate (B H H B B H …) over ``processes`` fresh processes a side; every process
measures the whole grid with each library loaded once, and the first process of each commit checks
every point against the float64 reference (later ones reuse that verdict, keyed by the code's
fingerprint). The verdict (:mod:`attnperf.verdict`) compares per-process medians against the
runner's calibration; flagged, inconclusive and missing points are measured again in ``confirm``
fresh processes a side and fail only if flagged again.

The judge owns its rule and its calibration: the noise file comes from the runner (``--noise``,
``ATTNPERF_NOISE``) or the base commit's tree, never the head's; a head that changes the
calibration or the code that measures (:data:`MEASUREMENT_PATHS`) is named in the summary and
fails the check unless a maintainer allows it (``--allow-measurement-change``, the workflow's
label). On a machine without a valid calibration the verdict is advisory: the summary says so,
and only holes fail.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnperf.benchgrid import BACKWARD, DECODE, FORWARD, GRID_COSTS, PointSpec, grid_named
from attnperf.errors import Failure
from attnperf.files import write_atomic, write_json
from attnperf.noise import MEASURING_CODE, Noise, measuring_code, runner_path
from attnperf.processes import ProcessRunner, git, resolve, worktrees, write_points
from attnperf.records import ResultFile
from attnperf.verdict import (
    GUARD_LIMIT,
    HOLE,
    IMPROVEMENT,
    INCONCLUSIVE,
    MIN_EFFECT,
    NEW,
    REGRESSION,
    SLOWER_FIRST_CALL,
    TIME_KINDS,
    PointVerdict,
    Verdict,
    decide,
)

BASE, HEAD = "base", "head"
#: Files whose change in a pull request alters what the check measures or how it judges: the
#: calibration, the batch runner, timing, graphs, the correctness check, the grid and variants.
MEASUREMENT_PATHS = (
    "benchmarks/noise", *MEASURING_CODE, "attnperf/correctness.py", "attnperf/catalog.py", "attnperf/benchgrid.py",
    "attnperf/records.py", "attnperf/verdict.py", "attnperf/noise.py", "attnperf/stats.py", "attnperf/prcheck.py",
)  # fmt: skip


def alternation(processes: int) -> list[str]:
    """B H H B B H …: each side runs first in every other pair, so a drift hits both alike."""
    order: list[str] = []
    for i in range(processes):
        order += [BASE, HEAD] if i % 2 == 0 else [HEAD, BASE]
    return order


def measure(
    runner: ProcessRunner, trees: dict[str, Path], points: Sequence[PointSpec], processes: int, tag: str,
    progress: bool = True,
) -> dict[str, list[ResultFile]]:  # fmt: skip
    """``processes`` alternating processes a side over ``points``: ``{side: [results]}``."""
    points_file = write_points(runner.workdir / f"points-{tag}.json", points)
    # Each pass keeps its own verdicts: a confirmation checks again what it measures, so a verdict
    # that was wrong once (a hole) must be wrong again to fail the check.
    verdicts = runner.workdir / f"verdicts-{tag}.json"
    runs: dict[str, list[ResultFile]] = {BASE: [], HEAD: []}
    for side in alternation(processes):
        label = f"{tag}-{side}-{len(runs[side]) + 1}"
        output = runner.run(trees[side], points_file, label, verdicts=verdicts)
        runs[side].append(output)
        if progress:
            note = f" ({output.meta['error']})" if "error" in output.meta else ""
            print(f"  {label}: {output.meta['wall_s']:.0f} s{note}", file=sys.stderr, flush=True)
    return runs


def describe(points: Sequence[PointSpec]) -> str:
    counts = {mode: sum(p.mode == mode for p in points) for mode in (FORWARD, BACKWARD, DECODE)}
    parts = f"{counts[FORWARD]} forward, {counts[BACKWARD]} forward+backward, {counts[DECODE]} decode"
    return f"{len(points)} points ({parts})"


def estimate_minutes(grid: str, n_points: int, processes: int) -> float | None:
    """Minutes for one check of ``n_points`` with ``processes`` a side, from the measured costs
    in :data:`attnperf.benchgrid.GRID_COSTS` (None when this grid has none)."""
    cost = GRID_COSTS.get(grid)
    if cost is None:
        return None
    first = cost.startup_s + n_points * cost.first_point_s
    later = cost.startup_s + n_points * cost.point_s
    return 2 * (first + (processes - 1) * later) * (1 + cost.confirm_share) / 60


def judge_noise(noise_file: Path | None, base_tree: Path, machine: str) -> Noise:
    """The calibration the judge reads: ``noise_file`` (the runner's), else ``ATTNPERF_NOISE`` (a file,
    or a folder of ``<machine tag>.json``), else the base commit's ``benchmarks/noise/<tag>.json``;
    never the head's. Uncalibrated, with where it looked, when none is there, and when it was
    measured by other measuring code than the base's."""
    code = measuring_code(base_tree)
    if noise_file is None and (runner := runner_path(machine)) is not None:
        if not runner.exists():
            return Noise(source=str(runner), why_uncalibrated=f"ATTNPERF_NOISE: no {runner}; run attnperf calibrate")
        noise_file = runner
    if noise_file is not None:
        return Noise.load(noise_file, machine=machine, code=code, what="--noise")
    in_base = base_tree / "benchmarks" / "noise" / f"{machine}.json"
    if in_base.exists():
        return Noise.load(in_base, machine=machine, code=code, what="the base commit's calibration")
    return Noise(why_uncalibrated=f"no calibration for machine {machine} (--noise, ATTNPERF_NOISE or the base "
                                  f"commit's benchmarks/noise/{machine}.json); run attnperf calibrate")  # fmt: skip


def measurement_changes(repo: Path, base: str, head: str) -> list[str]:
    """The files of :data:`MEASUREMENT_PATHS` that head changes against base."""
    changed = git(["diff", "--name-only", base, head, "--", *MEASUREMENT_PATHS], cwd=repo)
    return [line for line in changed.splitlines() if line.strip()]


@dataclass(frozen=True)
class CheckOutcome:
    """The check's outcome: the verdicts of both passes and whether it fails."""

    first: Verdict
    final: Verdict
    measurement_changes: list[str]
    allow_measurement_change: bool
    report: dict[str, Any]

    @property
    def failed(self) -> bool:
        return self.final.failed or bool(self.measurement_changes and not self.allow_measurement_change)


def regress(
    base: str, head: str, *, repo: Path = Path("."), grid: str | None = None, processes: int = 2, confirm: int = 2,
    noise_file: Path | None = None, min_effect: float = MIN_EFFECT, allow_grid_change: bool = False,
    allow_measurement_change: bool = False, workdir: Path = Path("regress-out"),
    summary: Path | None = Path("regress-summary.md"), repeat: int = 10,
) -> CheckOutcome:  # fmt: skip
    """Measure base and head, decide, confirm what was flagged; write the summary and verdict.json."""
    from attnperf.machine import machine_tag

    repo = repo.resolve()
    commits = {BASE: resolve(repo, base, "base"), HEAD: resolve(repo, head, "head")}
    grid_name = grid or ("pr-gpu" if grid_named().device == "cuda" else "pr-cpu")
    points = grid_named(grid_name).points()
    minutes = estimate_minutes(grid_name, len(points), processes)
    about = f", about {minutes:.0f} minutes" if minutes is not None else ""
    print(f"attnperf regress: grid {grid_name}: {describe(points)}, {processes} processes a side{about}",
          file=sys.stderr, flush=True)  # fmt: skip
    changes = measurement_changes(repo, commits[BASE], commits[HEAD])
    workdir.mkdir(parents=True, exist_ok=True)
    runner = ProcessRunner(workdir.resolve(), repeat=repeat)
    started = time.perf_counter()
    machine = machine_tag()
    with worktrees(repo, commits) as trees:
        noise = judge_noise(noise_file, trees[BASE], machine)
        runs = measure(runner, trees, points, processes, "pass1")
        if not any(r.ok for run in runs[BASE] for r in run.records):
            errors = "; ".join(run.meta.get("error", "no records") for run in runs[BASE])
            raise Failure(f"base measured nothing, so nothing can be compared: {errors}")
        options = {"allow_grid_change": allow_grid_change, "confirm": confirm, "min_effect": min_effect}
        first = final = decide(runs[BASE], runs[HEAD], noise, **options)
        again = first.flagged_keys()
        if again and confirm > 0:
            print(f"  confirming {len(again)} flagged points", file=sys.stderr, flush=True)
            reruns = measure(runner, trees, [p for p in points if p.key in again], confirm, "confirm")
            confirmed = decide(reruns[BASE], reruns[HEAD], noise, keys=again, **options)
            settled = [p for p in first.points if p.key not in again]
            final = Verdict(settled + confirmed.points, confirmed.advisory)
    report = {
        "base": commits[BASE], "head": commits[HEAD], "grid": grid_name, "points": len(points), "machine": machine,
        "processes": processes, "confirm": confirm, "noise": noise.source, "advisory": final.advisory,
        "min_effect": min_effect, "wall_s": time.perf_counter() - started, "measurement_changes": changes,
        "first": [p.as_dict() for p in first.points], "final": [p.as_dict() for p in final.points],
    }  # fmt: skip
    result = CheckOutcome(first, final, changes, allow_measurement_change, report)
    report["failed"] = result.failed
    write_json(workdir / "verdict.json", report)
    if summary is not None:
        write_atomic(summary, summary_markdown(result))
    return result


def _row(p: PointVerdict) -> str:
    interval = f"[{p.low:.3f}, {p.high:.3f}]" if p.low is not None and p.high is not None else ""
    ratio = f"{p.ratio:.3f}" if p.ratio is not None else ""
    threshold = f"{p.threshold:.3f}" if p.threshold is not None else ""
    guard = f"{p.guarded:.1%}" if p.guarded is not None else ""
    return f"| `{p.key}` | {p.kind} | {ratio} | {interval} | {threshold} | {guard} | {p.reason or ''} |"


HEADER = ["", "| benchmark | kind | head/base | 99% interval | threshold | guards (90%) | reason |",
          "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip


def guard_lines(points: Sequence[PointVerdict]) -> list[str]:
    """What the check guards at this run's noise: the distribution of the 90%-power slowdown per
    timing kind and mode, and every point that cannot guard :data:`GUARD_LIMIT`, with why."""
    timed = [p for p in points if p.guarded is not None]
    if not timed:
        return []
    lines = ["", "### What this check guards", "",
             "The slowdown each benchmark is caught at with 90% probability (first pass and confirmation), at this "
             "run's spread:", "", "| timing | points | median | 90th percentile | worst | not guarded (> 10%) |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for kind in TIME_KINDS:
        for mode in ("TimeForward(", "TimeForwardBackward(", "TimeDecode("):
            values = sorted(p.guarded for p in timed if p.kind == kind and p.key.startswith(mode))  # type: ignore[misc]
            if values:
                p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
                over = sum(v > GUARD_LIMIT for v in values)
                lines.append(f"| {kind} {mode[:-1]} | {len(values)} | {statistics.median(values):.1%} | {p90:.1%} | "
                             f"{values[-1]:.1%} | {over} |")  # fmt: skip
    unguarded = [p for p in timed if p.guarded > GUARD_LIMIT]  # type: ignore[operator]
    if unguarded:
        lines += ["", "<details><summary>Not guarded: cannot catch a 10% slowdown at this noise</summary>", "",
                  "| benchmark | kind | guards (90%) | σ | why |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for p in sorted(unguarded, key=lambda p: -(p.guarded or 0)):
            why = f"spread σ {p.sigma:.2%} over {p.n_base}+{p.n_head} processes"
            lines.append(f"| `{p.key}` | {p.kind} | {p.guarded:.1%} | {p.sigma:.2%} | {why} |")
        lines += ["", "</details>"]
    return lines


def summary_markdown(result: CheckOutcome) -> str:
    report, first, final = result.report, result.first, result.final
    if result.failed:
        verdict = "**regression**" if final.where(REGRESSION) or final.where(HOLE) else "**blocked**"
    elif final.advisory:
        verdict = f"no confident verdict ({final.advisory})"
    else:
        verdict = "no regression"
    inconclusive = final.where(INCONCLUSIVE)
    lines = [
        f"## attnperf: {verdict} (head {report['head'][:10]} vs base {report['base'][:10]})",
        "",
        f"- grid `{report['grid']}`: {report['points']} points, {report['processes']} processes a side, "
        f"{report['wall_s'] / 60:.1f} minutes on `{report['machine']}`; noise calibration: {report['noise']}",
        f"- flagged on the first pass: {len(first.where(REGRESSION))} slower, {len(first.where(HOLE))} holes, "
        f"{len(first.where(INCONCLUSIVE))} inconclusive; after confirmation: {len(final.where(REGRESSION))} slower, "
        f"{len(final.where(HOLE))} holes, {len(inconclusive)} inconclusive",
        f"- faster: {len(first.where(IMPROVEMENT))}; new on head: {len(first.where(NEW))}; slower first call "
        f"(not gating): {len(final.where(SLOWER_FIRST_CALL))}",
    ]
    if final.advisory:
        lines.append(f"- **{final.advisory}**: slowdowns below are reported, not enforced; holes still fail")
    if result.measurement_changes:
        allowed = "allowed by a maintainer" if result.allow_measurement_change else "needs a maintainer's label"
        lines.append(f"- **head changes how the check measures or judges** ({allowed}): "
                     + ", ".join(f"`{path}`" for path in result.measurement_changes))  # fmt: skip
    lines += ["", "A point is slower when the 99% interval of head/base (per-process medians, Student's t) lies",
              "above its threshold; a hole is a benchmark that ran on base and does not run on head; an inconclusive",
              "point is one whose noise cannot support a verdict, neither slower nor faster."]  # fmt: skip
    sections = (("Slower", REGRESSION), ("Holes (ran on base, not on head)", HOLE), ("Inconclusive", INCONCLUSIVE),
                ("Slower first call (not gating)", SLOWER_FIRST_CALL))  # fmt: skip
    for title, outcome in sections:
        rows = final.where(outcome)
        if rows:
            lines += ["", f"### {title}", *HEADER, *map(_row, rows)]
    lines += guard_lines(first.points)
    compared = [p for p in first.points if p.ratio is not None]
    lines += ["", "<details><summary>Every compared benchmark (first pass)</summary>", *HEADER, *map(_row, compared),
              "", "</details>", ""]  # fmt: skip
    return "\n".join(lines)
