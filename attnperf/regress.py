"""Compare two commits and fail on a regression: ``nox -s regress`` and perf-pr.yml.

    python -m attnperf.regress BASE HEAD [--grid pr-gpu] [--processes 3] [--allow-grid-change]
    python -m attnperf.regress trials ...     (error rates of this check; see attnperf.trials)

Each commit is checked out into a git worktree and measured by its own :mod:`attnperf.batch` in
this Python (the worktree first on ``PYTHONPATH``), so one environment with torch and the GPU
libraries serves both. Base and head alternate (B H H B B H …) over ``--processes`` (2) fresh
processes each; every process measures the whole grid with each library loaded once, and the
first process of each commit checks every point against the float64 reference (later ones reuse
that verdict, keyed by the code's fingerprint). The verdict (:mod:`attnperf.verdict`) compares
per-process medians against the calibrated noise; flagged points and holes are measured again in
``--confirm`` fresh processes a side and fail only if flagged again. Writes a markdown summary
and a JSON verdict; exit 1 on a regression or a hole, 0 otherwise, 2 on a usage error.

Needs the git history of both commits (a shallow clone fails with git's own message), and both
commits must have ``attnperf/batch.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnperf.benchgrid import BACKWARD, DECODE, FORWARD, PointSpec, grid_named
from attnperf.errors import Failure
from attnperf.records import Status
from attnperf.results import read_json, write_atomic, write_json
from attnperf.verdict import HOLE, IMPROVEMENT, MIN_EFFECT, NEW, REGRESSION, Noise, Verdict, decide

BASE, HEAD = "base", "head"
#: A process that runs longer than this is stopped; what it wrote so far counts.
PROCESS_TIMEOUT_S = 3600
#: Host allocations below this come from glibc's heap in every measured process (see ProcessRunner).
MALLOC_MMAP_THRESHOLD = 1 << 30


#: A folder for every compilation cache the measured libraries keep (``ATTNPERF_COMPILE_CACHE``):
#: one path that a workflow restores before the check and saves after main's history run.
COMPILE_CACHE_DIRS = {
    "TRITON_CACHE_DIR": "triton",  # Triton kernels and autotuning results (fla, flex's kernels)
    "TORCHINDUCTOR_CACHE_DIR": "inductor",  # inductor's FX graph and autotune caches (compiled flex)
    "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR": "cute",  # flash-attn-4's compiled CuTe kernels
}


def compile_cache_env(environ: dict[str, str]) -> dict[str, str]:
    """The variables that keep compilations on disk, so that a commit's later processes load kernels
    instead of building them: about 270 of the 431 s of the H200's first pr-gpu process were spent
    compiling (fla's Triton autotuning 159 s, flex 59 s, flash-attn-4's CuTe kernels 49 s).
    Inductor's FX graph cache is on by default; flash-attn-4's cache and Triton's autotuning
    results are opt-in. With ``ATTNPERF_COMPILE_CACHE`` set, every cache lives under that one
    folder. Variables the caller set already win."""
    wanted = {"FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED": "1", "TRITON_CACHE_AUTOTUNING": "1"}
    root = environ.get("ATTNPERF_COMPILE_CACHE")
    if root:
        wanted |= {name: os.path.join(root, sub) for name, sub in COMPILE_CACHE_DIRS.items()}
    return {name: environ.get(name) or value for name, value in wanted.items()}


class RegressError(Failure):
    """An expected failure with a one-line message (git, a missing runner, a bad argument)."""


def git(args: Sequence[str], *, cwd: Path) -> str:
    """git's output; its own message on failure, in one line."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise RegressError(f"git is needed: {exc}") from None
    if proc.returncode != 0:
        message = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[0]
        raise RegressError(f"git {' '.join(args)}: {message}")
    return proc.stdout.strip()


@contextmanager
def worktrees(repo: Path, commits: dict[str, str]) -> Iterator[dict[str, Path]]:
    """Each commit checked out (detached) into a temporary git worktree; removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="attnperf-regress-"))
    trees: dict[str, Path] = {}
    try:
        for side, sha in commits.items():
            path = root / side
            git(["worktree", "add", "--detach", str(path), sha], cwd=repo)
            trees[side] = path
            if not (path / "attnperf" / "batch.py").exists():
                raise RegressError(f"{side} commit {sha[:10]} has no attnperf/batch.py: it predates the batch runner")
        yield trees
    finally:
        for path in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=repo, capture_output=True,
                           check=False)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class ProcessRunner:
    """Starts :mod:`attnperf.batch` processes of one checkout and keeps their outputs."""

    workdir: Path
    repeat: int = 10

    def run(self, tree: Path, points_file: Path, label: str, *, verdicts: Path, inject: str | None = None) -> dict:
        out = self.workdir / f"{label}.json"
        paths = [str(tree), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        # glibc adapts its mmap threshold as a process frees memory, so one process page-faults
        # every tensor above 128 KiB and the next reuses its heap: eager attention at 256 tokens
        # read 1.9 ms in one process and 33 ms in the next on the 2-core CPU. A fixed threshold
        # gives every process the same allocator behaviour.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MALLOC_MMAP_THRESHOLD))
        env.update(compile_cache_env(env))
        cmd = [sys.executable, "-m", "attnperf.batch", "--points", str(points_file), "--out", str(out),
               "--verdicts", str(verdicts), "--label", label, "--repeat", str(self.repeat)]  # fmt: skip
        if inject:
            cmd += ["--inject", inject]
        out.unlink(missing_ok=True)  # never read an earlier run's output as this one's
        started = time.perf_counter()
        try:
            # stdout too: libraries print there (Triton's autotuning with TRITON_PRINT_AUTOTUNING=1)
            proc = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=PROCESS_TIMEOUT_S, check=False)  # fmt: skip
            code, log = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as exc:
            code, log = -1, f"stopped after {PROCESS_TIMEOUT_S} s: {exc.stdout or ''}"
        wall = time.perf_counter() - started
        write_atomic(self.workdir / f"{label}.log", log or "")
        output = read_json(out) if out.exists() else {"records": [], "seconds": {}}
        output.update(label=label, exit_code=code, wall_s=wall)
        if code != 0:
            tail = [line for line in (log or "").strip().splitlines() if line.strip()][-1:] or [""]
            output["error"] = f"exit {code}: {tail[0]}"
        write_json(out, output)
        return output


def alternation(processes: int) -> list[str]:
    """B H H B B H …: each side runs first in every other pair, so a drift hits both alike."""
    order: list[str] = []
    for i in range(processes):
        order += [BASE, HEAD] if i % 2 == 0 else [HEAD, BASE]
    return order


def measure(
    runner: ProcessRunner, trees: dict[str, Path], points: Sequence[PointSpec], processes: int, tag: str,
    progress: bool = True,
) -> dict[str, list[dict]]:  # fmt: skip
    """``processes`` alternating processes a side over ``points``: ``{side: [outputs]}``."""
    points_file = write_json(runner.workdir / f"points-{tag}.json", {"points": [p.as_dict() for p in points]})
    # Each pass keeps its own verdicts: a confirmation checks again what it measures, so a verdict
    # that was wrong once (a hole) must be wrong again to fail the check.
    verdicts = runner.workdir / f"verdicts-{tag}.json"
    runs: dict[str, list[dict]] = {BASE: [], HEAD: []}
    for side in alternation(processes):
        label = f"{tag}-{side}-{len(runs[side]) + 1}"
        output = runner.run(trees[side], points_file, label, verdicts=verdicts)
        runs[side].append(output)
        if progress:
            note = f" ({output['error']})" if "error" in output else ""
            print(f"  {label}: {output['wall_s']:.0f} s{note}", file=sys.stderr, flush=True)
    return runs


def describe(points: Sequence[PointSpec]) -> str:
    counts = {mode: sum(p.mode == mode for p in points) for mode in (FORWARD, BACKWARD, DECODE)}
    parts = f"{counts[FORWARD]} forward, {counts[BACKWARD]} forward+backward, {counts[DECODE]} decode"
    return f"{len(points)} points ({parts})"


def estimate_minutes(grid: str, n_points: int, processes: int) -> float | None:
    """Minutes for one check of ``n_points`` with ``processes`` a side, from the measured costs
    in :data:`attnperf.benchgrid.GRID_COSTS` (None when this grid has none)."""
    from attnperf.benchgrid import GRID_COSTS

    cost = GRID_COSTS.get(grid)
    if cost is None:
        return None
    first = cost.startup_s + n_points * cost.first_point_s
    later = cost.startup_s + n_points * cost.point_s
    return 2 * (first + (processes - 1) * later) * (1 + cost.confirm_share) / 60


def regress(
    base: str, head: str, *, repo: Path = Path("."), grid: str | None = None, processes: int = 2, confirm: int = 2,
    noise_file: Path | None = None, min_effect: float = MIN_EFFECT, allow_grid_change: bool = False,
    workdir: Path = Path("regress-out"), summary: Path | None = Path("regress-summary.md"), repeat: int = 10,
) -> Verdict:  # fmt: skip
    """Measure base and head, decide, confirm what was flagged; return the final verdict."""
    repo = repo.resolve()
    git(["rev-parse", "--git-dir"], cwd=repo)
    commits = {BASE: git(["rev-parse", "--verify", f"{base}^{{commit}}"], cwd=repo),
               HEAD: git(["rev-parse", "--verify", f"{head}^{{commit}}"], cwd=repo)}  # fmt: skip
    grid_name = grid or ("pr-gpu" if grid_named().device == "cuda" else "pr-cpu")
    points = grid_named(grid_name).points()
    minutes = estimate_minutes(grid_name, len(points), processes)
    about = f", about {minutes:.0f} minutes" if minutes is not None else ""
    print(f"attnperf regress: grid {grid_name}: {describe(points)}, {processes} processes a side{about}",
          file=sys.stderr, flush=True)  # fmt: skip
    noise = Noise.load(noise_file, min_effect=min_effect)
    workdir.mkdir(parents=True, exist_ok=True)
    runner = ProcessRunner(workdir.resolve(), repeat=repeat)
    started = time.perf_counter()
    with worktrees(repo, commits) as trees:
        runs = measure(runner, trees, points, processes, "pass1")
        if not any(r["status"] == Status.OK for run in runs[BASE] for r in run["records"]):
            errors = "; ".join(run.get("error", "no records") for run in runs[BASE])
            raise RegressError(f"base measured nothing, so nothing can be compared: {errors}")
        first = final = decide(runs[BASE], runs[HEAD], noise, allow_grid_change=allow_grid_change)
        if first.failed and confirm > 0:
            again = [p for p in points if p.key in first.flagged_keys()]
            print(f"  confirming {len(again)} flagged points", file=sys.stderr, flush=True)
            reruns = measure(runner, trees, again, confirm, "confirm")
            final = decide(reruns[BASE], reruns[HEAD], noise, allow_grid_change=allow_grid_change,
                           keys=first.flagged_keys())  # fmt: skip
    elapsed = time.perf_counter() - started
    report = {
        "base": commits[BASE], "head": commits[HEAD], "grid": grid_name, "points": len(points),
        "processes": processes, "confirm": confirm, "noise": noise.source, "min_effect": min_effect,
        "wall_s": elapsed, "first": [p.as_dict() for p in first.points], "final": [p.as_dict() for p in final.points],
        "failed": final.failed,
    }  # fmt: skip
    write_json(workdir / "verdict.json", report)
    if summary is not None:
        write_atomic(summary, summary_markdown(report, first, final))
    return final


def _row(p: Any) -> str:
    interval = f"[{p.low:.3f}, {p.high:.3f}]" if p.low is not None else ""
    ratio = f"{p.ratio:.3f}" if p.ratio is not None else ""
    threshold = f"{p.threshold:.3f}" if p.threshold is not None else ""
    return f"| `{p.key}` | {p.kind} | {ratio} | {interval} | {threshold} | {p.reason or ''} |"


def summary_markdown(report: dict[str, Any], first: Verdict, final: Verdict) -> str:
    verdict = "**regression**" if final.failed else "no regression"
    lines = [
        f"## attnperf: {verdict} (head {report['head'][:10]} vs base {report['base'][:10]})",
        "",
        f"- grid `{report['grid']}`: {report['points']} points, {report['processes']} processes a side, "
        f"{report['wall_s'] / 60:.1f} minutes; noise calibration: {report['noise']}",
        f"- flagged on the first pass: {len(first.where(REGRESSION))} slower, {len(first.where(HOLE))} holes; "
        f"after confirmation: {len(final.where(REGRESSION))} slower, {len(final.where(HOLE))} holes",
        f"- faster: {len(first.where(IMPROVEMENT))}; new on head: {len(first.where(NEW))}",
        "",
        "A point is slower when the 99% interval of head/base (per-process medians) lies above its threshold;",
        "a hole is a benchmark that ran on base and does not run on head.",
    ]
    header = [
        "",
        "| benchmark | kind | head/base | 99% interval | threshold | reason |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for title, outcome in (("Slower", REGRESSION), ("Holes (ran on base, not on head)", HOLE)):
        rows = final.where(outcome)
        if rows:
            lines += ["", f"### {title}", *header, *map(_row, rows)]
    compared = [p for p in first.points if p.ratio is not None]
    lines += ["", "<details><summary>Every compared benchmark (first pass)</summary>", *header, *map(_row, compared),
              "", "</details>", ""]  # fmt: skip
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m attnperf.regress",
        description=__doc__.splitlines()[0],
        epilog="`python -m attnperf.regress trials --help` measures the check's error rates.",
    )
    parser.add_argument("base", help="base commit (e.g. origin/main)")
    parser.add_argument("head", help="head commit (e.g. HEAD)")
    parser.add_argument("--grid", help="grid name: pr-gpu, pr-cpu, gpu, cpu (default: pr-gpu with CUDA, else pr-cpu)")
    parser.add_argument("--processes", type=int, default=2, help="fresh processes a side (default 2)")
    parser.add_argument(
        "--confirm", type=int, default=2, help="processes a side for flagged points (default 2; 0: off)"
    )
    parser.add_argument("--noise", type=Path, help="A/A calibration (default benchmarks/noise/MACHINE.json if present)")
    parser.add_argument("--min-effect", type=float, default=MIN_EFFECT,
                        help=f"smallest slowdown that counts, as a fraction (default {MIN_EFFECT})")  # fmt: skip
    parser.add_argument(
        "--allow-grid-change",
        action="store_true",
        help="benchmarks that ran on base but not on head pass (the PR changes the grid on purpose)",
    )
    parser.add_argument("--repeat", type=int, default=10, help="samples per point and process (default 10)")
    parser.add_argument("--workdir", type=Path, default=Path("regress-out"), help="process outputs and verdict.json")
    parser.add_argument("--summary", type=Path, default=Path("regress-summary.md"), help="markdown summary path")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the git repository")
    return parser


def default_noise_file(repo: Path) -> Path:
    from attnperf.machine import machine_tag

    return repo / "benchmarks" / "noise" / f"{machine_tag()}.json"


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 1 on a confirmed regression or a hole, 0 otherwise; 2 for usage errors."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["trials"]:
        from attnperf.trials import main as trials_main

        return trials_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value, least in (("--processes", args.processes, 1), ("--confirm", args.confirm, 0),
                               ("--repeat", args.repeat, 3)):  # fmt: skip
        if value < least:
            parser.error(f"{flag} must be at least {least}, got {value}")
    if not 0 <= args.min_effect < 1:
        parser.error(f"--min-effect must be a fraction in [0, 1), got {args.min_effect}")
    try:
        noise = args.noise or default_noise_file(args.repo)
        result = regress(
            args.base, args.head, repo=args.repo, grid=args.grid, processes=args.processes, confirm=args.confirm,
            noise_file=noise, min_effect=args.min_effect, allow_grid_change=args.allow_grid_change,
            workdir=args.workdir, summary=args.summary, repeat=args.repeat,
        )  # fmt: skip
    except (RegressError, ValueError) as exc:
        print(f"attnperf regress: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    if args.summary is not None:
        print(Path(args.summary).read_text(encoding="utf-8"))
    return 1 if result.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
