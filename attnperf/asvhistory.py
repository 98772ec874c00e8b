"""The benchmark history: batch-runner measurements recorded as asv results, for ``asv publish``.

    attnperf history run [--steps 3] [--grid cpu] [--shard I/N] [--machine NAME]
    attnperf history record --commit SHA RUN.json [RUN.json ...]

``run`` is the main job (``nox -s bench``): it takes the last ``--steps`` commits of the current
branch that have the batch runner and no results on this machine yet, checks each out into a
git worktree, measures the grid in one fresh process of that commit's own
:mod:`attnperf.batch`, and records the process into asv's results (``.asv/results``). On a
machine without results it therefore draws a history of a few commits at once; later runs add
only the new ones. ``--shard I/N`` measures every N-th point from the I-th (a matrix of GPU
runners, or several nights, each records its share of the same commit; asv merges them).

``record`` writes batch results files (from ``run``, a shard, or the regression check) into the
results: asv's benchmark names and parameters are the suites' own
(``bench_attention.TimeForward.time_forward('eager', 'causal', 256, 64, 'float32')``,
:data:`attnperf.benchgrid.BENCHMARKS`), so ``asv publish``, ``asv compare`` and the HTML read them
like results of ``asv run``: time benchmarks carry every sample of every process, the others the
median over processes. A point that could not run is recorded as skipped (unsupported) or failed
(wrong, out of memory, failed). Each results file is replaced atomically.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnperf.benchgrid import BENCHMARKS, PointSpec, grid_named
from attnperf.errors import Failure, UsageError
from attnperf.processes import ProcessRunner, git, worktrees, write_points
from attnperf.records import ResultFile, Status

#: Which figure of a point's record each kind of asv benchmark holds (times: their samples too).
FIELDS = {"direct": "median_s", "replay": "replay_median_s", "memory": "peak_bytes",
          "prediction": "predicted_peak_bytes", "tflops": "useful_tflops", "first_call": "first_call_s"}  # fmt: skip
SAMPLES = {"direct": "samples_s", "replay": "replay_samples_s"}
SKIPPED = {Status.UNSUPPORTED}


def asv(args: Sequence[str], *, cwd: Path) -> str:
    """Run asv (the one beside this Python); its own message on failure."""
    env = {**os.environ, "ASV_PYTHONPATH": os.pathsep.join(p for p in (str(cwd), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "asv", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False)  # fmt: skip
    if proc.returncode != 0:
        raise Failure(f"asv {' '.join(args)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def values_by_benchmark(runs: Sequence[ResultFile]) -> dict[str, dict[tuple[str, ...], dict[str, Any]]]:
    """``{asv name: {param reprs: {"value"|"samples"|"number"|"status"}}}`` over the processes."""
    records: dict[str, list[Any]] = {}
    for run in runs:
        for record in run.records:
            records.setdefault(record.key, []).append(record)
    table: dict[str, dict[tuple[str, ...], dict[str, Any]]] = {}
    for group in records.values():
        spec = group[0].spec
        params = tuple(repr(p) for p in spec.asv_params)
        ok = [r for r in group if r.ok]
        for name, kind, _gates in BENCHMARKS[spec.mode]:
            entry: dict[str, Any] = {"status": ok[0].status if ok else group[0].status}
            values = [getattr(r, FIELDS[kind]) for r in ok if getattr(r, FIELDS[kind]) is not None]
            if kind in SAMPLES and values:
                entry.update(samples=[s for r in ok for s in getattr(r, SAMPLES[kind])],
                             number=getattr(ok[0], "number" if kind == "direct" else "replay_number"))  # fmt: skip
            elif values:
                entry["value"] = statistics.median(values)
            elif ok:  # ran, but this figure was not measured here (no replay on the CPU, an arena): leave it out
                continue
            table.setdefault(name, {})[params] = entry
    return table


def record(runs: Sequence[ResultFile], commit: str, *, repo: Path, machine: str) -> Path:
    """Write the processes' measurements of ``commit`` into asv's results of ``machine``."""
    from asv.benchmarks import Benchmarks
    from asv.config import Config
    from asv.environment import get_environments
    from asv.machine import Machine
    from asv.results import Results
    from asv.runner import BenchmarkResult

    repo = repo.resolve()
    host = next((run.meta["host"] for run in runs if run.meta.get("host")), {})
    asv(["machine", "--yes", "--machine", machine, *(f"--{k}={v}" for k, v in host.items() if v)], cwd=repo)
    asv(["run", "--bench", "just-discover", "--environment", f"existing:{sys.executable}", "--machine", machine],
        cwd=repo)  # fmt: skip
    conf = Config.load(str(repo / "asv.conf.json"))
    for folder in ("results_dir", "benchmark_dir", "html_dir", "env_dir"):  # relative to the repository, not the cwd
        setattr(conf, folder, str(repo / getattr(conf, folder)))
    results_dir = Path(conf.results_dir)
    machine_params = Machine.load(machine_name=machine)
    machine_params.save(str(results_dir))
    env = next(iter(get_environments(conf, [f"existing:{sys.executable}"], verbose=False)))
    date = int(git(["log", "-1", "--format=%at", commit], cwd=repo)) * 1000
    params = {**machine_params.__dict__, "python": env.python, **env.requirements}
    results = Results(params, env.requirements, commit, date, env.python, env.name, env.env_vars)
    results.load_data(str(results_dir))
    benchmarks = Benchmarks.load(conf)
    table = values_by_benchmark(runs)
    for name, measured in table.items():
        if name not in benchmarks:
            continue
        benchmark = benchmarks[name]
        combos = list(itertools.product(*benchmark["params"]))
        result, samples, number, selected = [], [], [], set()
        for i, combo in enumerate(combos):
            entry = measured.get(tuple(combo))
            value = None
            if entry is not None:
                selected.add(i)
                if entry["status"] in SKIPPED:
                    value = float("nan")
                elif "samples" in entry:
                    value = statistics.median(entry["samples"])
                else:
                    value = entry.get("value")
            result.append(value)
            samples.append(entry.get("samples") if entry else None)
            number.append(entry.get("number") if entry and "samples" in entry else None)
        if selected:
            outcome = BenchmarkResult(result=result, samples=samples, number=number, errcode=0, stderr="",
                                      profile=None)  # fmt: skip
            results.add_result(benchmark, outcome, record_samples=True, selected_idx=selected)
    return save_atomic(results, results_dir)


def save_atomic(results: Any, results_dir: Path) -> Path:
    """asv's ``Results.save`` writes in place; save into a scratch folder and replace the file."""
    with tempfile.TemporaryDirectory(dir=results_dir) as scratch:
        results.save(scratch)
        (written,) = list(Path(scratch).rglob("*.json"))
        target = results_dir / written.relative_to(scratch)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(written, target)
    return target


def recorded(repo: Path, machine: str, commit: str) -> bool:
    folder = repo / ".asv" / "results" / machine
    return any(folder.glob(f"{commit[:8]}-*.json"))


def commits_to_measure(repo: Path, steps: int, machine: str) -> list[str]:
    """The last ``steps`` first-parent commits that have the batch runner, oldest first, minus those
    this machine has recorded already."""
    commits = git(["rev-list", "--first-parent", f"--max-count={steps}", "HEAD"], cwd=repo).split()
    have_runner = [c for c in commits if _has_file(repo, c, "attnperf/batch.py")]
    return [c for c in reversed(have_runner) if not recorded(repo, machine, c)]


def _has_file(repo: Path, commit: str, path: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], cwd=repo, capture_output=True,
                          check=False).returncode == 0  # fmt: skip


def shard_points(points: Sequence[PointSpec], shard: str | None) -> list[PointSpec]:
    """The ``I/N`` share of ``points`` (every N-th from the I-th, 1-based); a UsageError names the flag."""
    if not shard:
        return list(points)
    try:
        index, count = (int(x) for x in shard.split("/"))
    except ValueError:
        index = count = 0
    if not 1 <= index <= count:
        raise UsageError(f"--shard must be I/N with 1 <= I <= N, got {shard!r}")
    return list(points[index - 1 :: count])


def run_history(repo: Path, *, steps: int, grid: str | None, shard: str | None, machine: str, workdir: Path) -> int:
    """The main job: measure and record the commits :func:`commits_to_measure` names."""
    points = shard_points(grid_named(grid).points(), shard)
    workdir = workdir.resolve()  # the processes run inside their worktrees
    commits = commits_to_measure(repo, steps, machine)
    if not commits:
        print(f"attnperf history: the last {steps} commits with the batch runner are recorded for {machine}")
        return 0
    runner = ProcessRunner(workdir)
    for n, commit in enumerate(commits, 1):
        print(f"attnperf history: commit {commit[:10]} ({n}/{len(commits)}), {len(points)} points", flush=True)
        with worktrees(repo, {commit[:12]: commit}) as trees:
            output = runner.run(trees[commit[:12]], write_points(workdir / "points.json", points),
                                f"history-{commit[:12]}", verdicts=workdir / "verdicts.json")  # fmt: skip
        if output.meta.get("error") or not output.records:
            raise Failure(f"commit {commit[:10]}: the batch runner failed: {output.meta.get('error', 'no records')} "
                          f"(log: {workdir / ('history-' + commit[:12])}.log)")  # fmt: skip
        statuses: dict[str, int] = {}
        for r in output.records:
            statuses[r.status.value] = statuses.get(r.status.value, 0) + 1
        path = record([output], commit, repo=repo, machine=machine)
        print(f"  {output.meta['wall_s']:.0f} s, {json.dumps(statuses)} -> {path.relative_to(repo)}", flush=True)
    return 0


def measure_here(repo: Path, *, grid: str | None, shard: str | None, out: Path) -> ResultFile:
    """One batch-runner process over (a shard of) the grid in this checkout, its results to ``out``
    (a file name: the folder holds its log, points and verdicts beside it)."""
    points = shard_points(grid_named(grid).points(), shard)
    workdir = out.parent.resolve()
    points_file = write_points(workdir / "points.json", points)
    output = ProcessRunner(workdir).run(repo, points_file, out.stem, verdicts=workdir / "verdicts.json")
    if output.meta.get("error"):
        raise Failure(f"the batch runner failed: {output.meta['error']} (log: {workdir / out.stem}.log)")
    if output.path is not None and output.path.resolve() != out.resolve():
        output.save(out)
    return output
