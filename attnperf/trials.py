"""How often the regression check errs, measured on the machine it runs on.

    python -m attnperf.regress trials [--grid pr-gpu] [--inject flash-attn4=2,3,5,10]
        [--budget-s 540] [--resamples 1000] [--out regress-trials.json] [--noise-out FILE]

Runs fresh :mod:`attnperf.batch` processes of this checkout, alternately labelled A and B (the
same code: every A/B comparison is an A/A comparison). Each process measures the whole grid and,
for the ``--inject`` backend, each of its forward and decode times again with a spin after every
call that should make it PCT % slower than the median that process just measured (a
``torch.cuda._sleep`` kernel on a GPU, a busy wait on the CPU; sized by a fit of what a spin adds
behind queued work, :func:`attnperf.measure.spin_cost`). The injected size is verified: the table
reports the measured ratio injected/plain beside the nominal one, its median and its range over
the slowed benchmarks. ``--reuse`` evaluates saved processes again, with the grid and injection
they ran.

From those processes (every comparison within the processes of one GPU and one code state, as a
pull request's check on one runner: each process records its GPU's UUID, and GPUs of one machine
tag differ by a few percent on long kernels, a difference that pooled across GPUs would pass for
noise):

* **Calibration**: per benchmark, the between-process spread of log medians (pooled over A and B
  and over GPUs and code states, each from its own mean) becomes the noise file the check reads
  (``--noise-out``; ``benchmarks/noise/MACHINE.json``). The trials below are never judged with a
  calibration of their own processes (that would fit the noise to them): each half of each GPU's
  and code state's processes is judged with the other halves', or all of them with an earlier
  calibration (``--noise``).
* **Real trials**: disjoint groups of ``P`` A-processes and ``P`` B-processes make one check each
  (the next ``C`` processes of each label serve as its confirmation pass, which overlaps the next
  trial's first pass, the last trial's wrapping round to the first one's, and is read only when
  something was flagged: a confirmation never reuses its own trial's processes). For an injected
  size the head side reads the injected records of the B-processes, so base and head come from
  different processes, as in a real check.
* **Resampled trials**: ``--resamples`` checks whose ``P + C`` processes a side are drawn at random
  (without replacement within a trial) from the same pool.

A trial at 0% counts when the check fails on anything (a false alarm); at x% when any benchmark
of the slowed backend is flagged after confirmation. Processes of other commits (``--aa-runs``, an
earlier pool whose injection was sized another way) serve the 0% row only, each trial within its
own code state. The JSON has one row per injected size with ``injected_pct``, ``trials``,
``flagged``, ``rate`` and a 95% Wilson interval, split into real and resampled counts.

Since a trial flags on any benchmark, a row's rate can be carried by the one benchmark slowed
most. Each row therefore lists its slowed ``benchmarks`` (measured slowdown, what the spin added
beyond the request in µs, σ, and in how many trials that slowed it in every head process it was
flagged), and ``by_measured_slowdown`` pools those by the slowdown each really carried, apart for
the benchmarks whose minimum effect their σ raised: the sensitivity per benchmark.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnperf.benchgrid import grid_named
from attnperf.records import Status
from attnperf.regress import ProcessRunner, RegressError, describe, git, worktrees
from attnperf.results import write_json
from attnperf.verdict import DEFAULT_SIGMA, MIN_EFFECT, Noise, decide, per_process

A, B = "A", "B"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def calibrate(runs: Sequence[dict[str, Any]], floor: float = 0.001) -> dict[str, float]:
    """Per benchmark key, the sd of log per-process medians within each label, GPU and code state
    (pooled), at least ``floor``: the spread a check on one GPU sees, without the differences
    between GPUs."""
    sigma: dict[str, float] = {}
    by_label: dict[tuple[str | None, str | None, str], list[dict[str, Any]]] = {}
    for run in runs:
        by_label.setdefault((*replicate_of(run), run["trial_label"]), []).append(run)
    tables = [per_process(group) for group in by_label.values()]
    for key in set().union(*tables):
        if "%" in key:
            continue
        squares, dof = 0.0, 0
        for table in tables:
            logs = [math.log(r["median"]) for r in table.get(key, []) if r["status"] == Status.OK]
            if len(logs) > 1:
                squares += statistics.variance(logs) * (len(logs) - 1)
                dof += len(logs) - 1
        if dof:
            sigma[key] = max(floor, math.sqrt(squares / dof))
    return sigma


def slowed_keys(run: dict[str, Any], pct: float, backend: str) -> dict[str, dict[str, Any]]:
    """The injected records of ``backend`` at ``pct`` % that ``run`` measured, by the key of the plain
    benchmark they slowed. A benchmark on which that slowdown could not be injected (shorter than
    the shortest spin's cost, or its spin not fitted) is not among them."""
    return {
        r["base_key"]: r for r in run["records"]
        if r.get("injected_pct") == pct and r["status"] == Status.OK and r["spec"]["backend"] == backend
    }  # fmt: skip


def as_head(run: dict[str, Any], pct: float, backend: str) -> dict[str, Any]:
    """A B-process seen as a head slowed by ``pct`` % on ``backend``: its injected records
    (:func:`slowed_keys`) take the place of the plain ones they were measured beside; the others
    keep their plain record: they are not slowed."""
    injected = slowed_keys(run, pct, backend)
    records = []
    for plain_record in run["records"]:
        if "injected_pct" in plain_record:
            continue
        key = plain_record["key"]
        if key in injected:
            records.append({k: v for k, v in injected[key].items() if k != "injected_pct"} | {"key": key})
        else:
            records.append(plain_record)
    return {"records": records}


def plain(run: dict[str, Any]) -> dict[str, Any]:
    return {"records": [r for r in run["records"] if "injected_pct" not in r]}


@dataclass(frozen=True)
class Outcome:
    """One trial's check: the benchmarks it flagged after confirmation (at x %: those of the slowed
    backend) and those slowed in every head process it read. True when it flagged anything."""

    flagged: frozenset[str] = frozenset()
    slowed: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.flagged)


def one_trial(
    base: Sequence[dict], head: Sequence[dict], base_c: Sequence[dict], head_c: Sequence[dict], noise: Noise,
    pct: float, backend: str | None,
) -> Outcome:  # fmt: skip
    """One check (first pass, then a confirmation on other processes): what it flags, anything at
    0%, a benchmark of ``backend`` at ``pct`` > 0."""
    slowed: frozenset[str] = frozenset()
    if pct and backend and head:
        slowed = frozenset.intersection(*(frozenset(slowed_keys(r, pct, backend)) for r in [*head, *head_c]))

    def heads(runs: Sequence[dict]) -> list[dict]:
        return [as_head(r, pct, backend) if pct and backend else plain(r) for r in runs]

    first = decide([plain(r) for r in base], heads(head), noise)
    if not first.failed:
        return Outcome(slowed=slowed)
    final = first if not base_c else decide([plain(r) for r in base_c], heads(head_c), noise, keys=first.flagged_keys())
    flagged = final.flagged_keys()
    if pct:
        flagged = {key for key in flagged if f"({backend!r}," in key}
    return Outcome(flagged=frozenset(flagged), slowed=slowed)


def injects(run: dict[str, Any], pct: float) -> bool:
    """Whether ``run`` serves the trials at ``pct`` % (it measured that slowdown, and its injection
    counts: not an ``--aa-runs`` process)."""
    return not run.get("aa_only") and any(r.get("injected_pct") == pct for r in run["records"])


def injected_pairs(runs: Sequence[dict[str, Any]], pct: float) -> dict[str, list[tuple[float, float]]]:
    """Per slowed benchmark, (plain, injected) medians of each process that measured both."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        medians = {r["key"]: r.get("median") for r in run["records"] if r["status"] == Status.OK}
        for r in run["records"]:
            if r.get("injected_pct") == pct and r["status"] == Status.OK and medians.get(r["base_key"]):
                pairs.setdefault(r["base_key"], []).append((medians[r["base_key"]], r["median"]))
    return pairs


def injected_ratios(runs: Sequence[dict[str, Any]], pct: float) -> dict[str, list[float]]:
    """Per slowed benchmark, injected/plain time in each process: the slowdown actually injected."""
    return {key: [slowed / base for base, slowed in pairs] for key, pairs in injected_pairs(runs, pct).items()}


def slowdown_pct(ratio: float) -> float:
    """A time ratio slowed/plain as the slowdown in %, as the table reports it."""
    return round(100 * (ratio - 1), 3)


def measured_size(runs: Sequence[dict[str, Any]], pct: float) -> dict[str, Any]:
    """The slowdown injected at ``pct`` %, in %: the median over processes and benchmarks, and the
    range of the benchmarks' medians (a check flags on any benchmark, so one slowed beyond the
    nominal size would carry the detections: the range shows it). None for 0% (nothing injected)."""
    ratios = injected_ratios(runs, pct)
    if not ratios:
        return {"measured_pct": None, "measured_range_pct": None}
    each = [statistics.median(r) for r in ratios.values()]
    pooled = statistics.median([x for r in ratios.values() for x in r])
    return {
        "measured_pct": slowdown_pct(pooled),
        "measured_range_pct": [slowdown_pct(min(each)), slowdown_pct(max(each))],
    }


def injected_benchmarks(runs: Sequence[dict[str, Any]], pct: float) -> dict[str, int]:
    """How many of the benchmarks asked for a ``pct`` % slowdown carried it (in the processes that
    could inject it): a slowdown shorter than the shortest spin's cost cannot be injected."""
    asked, slowed = set(), set()
    for run in runs:
        for r in run["records"]:
            if r.get("injected_pct") == pct:
                asked.add(r["base_key"])
                if r["status"] == Status.OK:
                    slowed.add(r["base_key"])
    return {"slowed": len(slowed), "of": len(asked)}


def replicate_of(run: dict[str, Any]) -> tuple[str | None, str | None]:
    """(GPU UUID, code fingerprint): the processes one trial may compare. A pull request's check
    compares processes of one GPU, and GPUs of one machine tag differ by a few percent on long
    kernels: a trial that set one GPU's processes against another's would measure that, not noise.
    Processes that name no GPU (CPU runs, and GPU runs before the field existed) share one."""
    return run.get("gpu"), run.get("fingerprint")


def by_replicate(runs: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The processes of each GPU and code state (:func:`replicate_of`), in the order they ran."""
    groups: dict[tuple[str | None, str | None], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(replicate_of(run), []).append(run)
    return list(groups.values())


def evaluate(
    runs: Sequence[dict[str, Any]], noise: Noise, *, processes: int, confirm: int, levels: Sequence[float],
    backend: str | None, resamples: int, seed: int,
) -> dict[float, dict[str, list[Outcome]]]:  # fmt: skip
    """Per injected size, the outcomes of the real and the resampled trials among ``runs``, each
    trial within the processes of one GPU and code state (a resampled trial's group drawn in
    proportion to how many processes a side it has). Processes marked ``aa_only`` serve 0% only."""
    rng = random.Random(seed)
    outcomes: dict[float, dict[str, list[Outcome]]] = {}
    for pct in (0.0, *levels):
        usable = [r for r in runs if not pct or injects(r, pct)]
        real, sampled, eligible = [], [], []
        for group in by_replicate(usable):
            pools = {label: [r for r in group if r["trial_label"] == label] for label in (A, B)}
            n = min(len(pools[A]), len(pools[B]))
            if n < processes + confirm:  # no first pass with a confirmation of other processes
                continue
            eligible.append((pools, n))
            for t in range(n // processes):
                first = range(t * processes, (t + 1) * processes)
                # the next processes confirm; the last trial's wrap round to the first (never its own)
                conf = [((t + 1) * processes + i) % n for i in range(confirm)]
                first_a, first_b = [pools[A][i] for i in first], [pools[B][i] for i in first]
                conf_a, conf_b = [pools[A][i] for i in conf], [pools[B][i] for i in conf]
                real.append(one_trial(first_a, first_b, conf_a, conf_b, noise, pct, backend))
        for _ in range(resamples if eligible else 0):
            pools = rng.choices([p for p, _ in eligible], weights=[n for _, n in eligible])[0]
            a, b = rng.sample(pools[A], processes + confirm), rng.sample(pools[B], processes + confirm)
            sampled.append(one_trial(a[:processes], b[:processes], a[processes:], b[processes:], noise, pct, backend))
        outcomes[pct] = {"real": real, "sampled": sampled}
    return outcomes


def held_out(
    runs: Sequence[dict[str, Any]], *, noise: Noise | None = None, min_effect: float = MIN_EFFECT, **options: Any,
) -> list[dict[str, Any]]:  # fmt: skip
    """The error rates, each trial judged by a calibration taken from other processes than its own.

    A spread calibrated on the very processes a trial compares fits the noise to them and
    understates the false-alarm rate. With a stored calibration (``noise``, from an earlier run)
    every process serves the trials. Otherwise the processes of each GPU and code state are cut
    into two halves in the order they ran (whole A B B A quadruples, so each half has as many A as
    B), the first halves of every group are judged with the second halves' calibration and the
    other way round, and the counts are added: a trial is never judged by another commit's spread
    alone."""
    if noise is not None:
        folds = [evaluate(runs, noise, **options)]
    else:
        first, second = [], []
        for group in by_replicate(runs):
            half = len(group) // 4 * 2
            first += group[:half]
            second += group[half:]
        options = options | {"resamples": options["resamples"] // 2}
        folds = [
            evaluate(fold, Noise(sigma=calibrate(other), min_effect=min_effect, source="the other half"), **options)
            for fold, other in ((first, second), (second, first))
        ]
    rows = []
    injecting = [r for r in runs if not r.get("aa_only")]
    for pct in folds[0]:
        real = [bool(x) for fold in folds for x in fold[pct]["real"]]
        sampled = [bool(x) for fold in folds for x in fold[pct]["sampled"]]
        trials, flagged = len(real) + len(sampled), sum(real) + sum(sampled)
        low, high = wilson(flagged, trials)
        real_low, real_high = wilson(sum(real), len(real))
        outcomes = [x for fold in folds for kind in ("real", "sampled") for x in fold[pct][kind]]
        rows.append({
            "injected_pct": pct, **measured_size(injecting, pct),
            "slowed_benchmarks": injected_benchmarks(injecting, pct) if pct else None,
            "trials": trials, "flagged": flagged, "rate": flagged / trials if trials else None,
            "ci95": [round(low, 4), round(high, 4)], "real_trials": len(real), "real_flagged": sum(real),
            # resampled checks reuse a few processes: the interval of the real ones alone is the honest width
            "ci95_real": [round(real_low, 4), round(real_high, 4)],
            "resampled_trials": len(sampled), "resampled_flagged": sum(sampled),
            "benchmarks": benchmark_detections(injecting, pct, outcomes) if pct else None,
        })  # fmt: skip
    return rows


def benchmark_detections(runs: Sequence[dict[str, Any]], pct: float, outcomes: Sequence[Outcome]) -> list[dict]:
    """Per slowed benchmark: its measured slowdown (the median over ``runs`` of injected/plain, in
    %), what the spin added beyond the ``pct`` % asked for (the median of injected - plain × (1 +
    pct/100), in µs: the part of the spin's cost that its fit did not see, behind this call), and
    in how many of the trials that slowed it in every head process it was flagged. A trial counts
    as flagged when any benchmark is: this is how a benchmark slowed by about x % fares alone,
    when the others were slowed more or less than asked."""
    pairs = injected_pairs(runs, pct)
    rows = []
    for key, each in pairs.items():
        trials = [o for o in outcomes if key in o.slowed]
        rows.append({
            "key": key, "measured_pct": slowdown_pct(statistics.median(s / b for b, s in each)),
            "excess_us": round(1e6 * statistics.median(s - b * (1 + pct / 100) for b, s in each), 2),
            "trials": len(trials), "flagged": sum(key in o.flagged for o in trials),
        })  # fmt: skip
    return sorted(rows, key=lambda row: row["measured_pct"])


#: lower edges (%) of the measured-slowdown bins of :func:`by_measured_slowdown`
SLOWDOWN_BINS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0)


def by_measured_slowdown(rows: Sequence[dict[str, Any]], noise: Noise) -> list[dict[str, Any]]:
    """The benchmark detections of every injected row pooled by the benchmark's measured slowdown
    (bins from :data:`SLOWDOWN_BINS`, a slowdown under 0 in the first) and by whether ``noise``
    (the calibration the trials were judged with) raised its minimum effect to its own σ: the
    sensitivity of the check against the slowdown a benchmark really carried, whatever size was
    asked for, apart for the benchmarks that need more. Each bin: how many (benchmark, injected
    size) pairs fell in it, their benchmark-trials, flagged, rate and a 95% Wilson interval (trials
    within one row share processes: a width from the benchmark-trials alone is narrower than the
    evidence)."""
    bins: dict[tuple[bool, float], list[int]] = {}
    for row in rows:
        for bench in row.get("benchmarks") or ():
            if bench["trials"]:
                raised = noise.of(bench["key"])[1] > noise.min_effect
                edge = max((e for e in SLOWDOWN_BINS if e <= bench["measured_pct"]), default=SLOWDOWN_BINS[0])
                counts = bins.setdefault((raised, edge), [0, 0, 0])
                counts[0] += bench["trials"]
                counts[1] += bench["flagged"]
                counts[2] += 1
    table = []
    for raised, edge in sorted(bins):
        trials, flagged, benchmarks = bins[raised, edge]
        upper = next((e for e in SLOWDOWN_BINS if e > edge), None)
        low, high = wilson(flagged, trials)
        table.append({
            "measured_pct": [edge, upper], "threshold_raised": raised, "benchmarks": benchmarks, "trials": trials,
            "flagged": flagged, "rate": flagged / trials, "ci95": [round(low, 4), round(high, 4)],
        })  # fmt: skip
    return table


def run_processes(
    runner: ProcessRunner, repo: Path, points_file: Path, *, inject: str | None, budget_s: float, max_processes: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """A, B, B, A, A, B … until the budget or ``max_processes`` (an even count).

    The next pair is expected to take twice the longest process after the first: the first runs
    the checks and compilations that later ones load from the verdict and compile caches (359 s
    against 142-153 s on the H200), and counting it stopped a session's trials 700 s early."""
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    verdicts = runner.workdir / "verdicts.json"
    while len(runs) < max_processes:
        walls = [r["wall_s"] for r in runs]
        if runs and len(runs) % 2 == 0 and time.perf_counter() - started + 2 * max(walls[1:]) > budget_s:
            break
        i = len(runs)
        label = (A, B)[(i + (i // 2) % 2) % 2]
        output = runner.run(repo, points_file, f"trial-{i + 1:03d}-{label}", verdicts=verdicts, inject=inject)
        output["trial_label"] = label
        runs.append(output)
        print(f"  process {i + 1} ({label}): {output['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return runs


@contextmanager
def code_of(commit: str | None, repo: Path) -> Iterator[Path]:
    """The tree whose code the processes run: the checkout, or a worktree of ``commit``."""
    if commit is None:
        yield Path.cwd()
        return
    sha = git(["rev-parse", "--verify", f"{commit}^{{commit}}"], cwd=repo)
    with worktrees(repo, {"trial": sha}) as trees:
        yield trees["trial"]


def added_run(output: dict[str, Any]) -> dict[str, Any]:
    """A process from elsewhere, labelled for the pool: an earlier trial's (``trial-NNN-A``) keeps
    its label; an A/A check's base process is A and its head process B."""
    label = output.get("label") or ""
    if label.startswith("trial-"):
        output["trial_label"] = label.rsplit("-", 1)[1]
    else:
        output["trial_label"] = A if "-base-" in label else B
    return output


def finished(outputs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The processes that ended by themselves (exit 0), each named on stderr if left out: one
    stopped from outside (a session's deadline) measured part of the grid and is no replicate."""
    kept = []
    for output in outputs:
        if output.get("exit_code") == 0:
            kept.append(output)
        else:
            note = output.get("error") or f"exit {output.get('exit_code', 'not recorded: it was stopped')}"
            print(f"attnperf trials: {output.get('label')} left out of the pool ({note})", file=sys.stderr)
    return kept


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m attnperf.regress trials", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--grid", help="grid name (default: pr-gpu with CUDA, else pr-cpu; with --reuse, that of the processes' device)"
    )
    parser.add_argument(
        "--inject",
        help="BACKEND=PCT[,PCT...] (default flash-attn4=2,3,5,10 on a GPU, eager on the CPU; with --reuse, what the "
        "pooled processes injected)",
    )
    parser.add_argument("--processes", type=int, default=2, help="processes a side in one check (default 2)")
    parser.add_argument("--confirm", type=int, default=2, help="processes a side in its confirmation (default 2)")
    parser.add_argument("--budget-s", type=float, default=540, help="start no process that would end past this")
    parser.add_argument("--max-processes", type=int, default=200, help="stop after this many processes")
    parser.add_argument("--resamples", type=int, default=1000, help="resampled trials per injected size")
    parser.add_argument("--min-effect", type=float, default=MIN_EFFECT, help="as regress's --min-effect")
    parser.add_argument("--repeat", type=int, default=10, help="samples per point and process")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    parser.add_argument("--workdir", type=Path, default=Path("trials-out"), help="process outputs")
    parser.add_argument("--out", type=Path, default=Path("regress-trials.json"), help="the table (JSON)")
    parser.add_argument("--noise-out", type=Path, help="write the calibration of all processes here (regress --noise)")
    parser.add_argument(
        "--noise", type=Path,
        help="judge the trials with this calibration from earlier processes (default: each half of each GPU's "
        "and code state's processes judged with the other halves' calibration)",
    )  # fmt: skip
    parser.add_argument("--reuse", action="store_true", help="evaluate the process outputs in --workdir again")
    parser.add_argument(
        "--commit",
        help="measure this commit's code (a git worktree of it) instead of the checkout's, so that the processes "
        "of several sessions at one commit pool as one A/A pool (--add-runs)",
    )
    parser.add_argument("--repo", type=Path, default=Path("."), help="the git repository of --commit")
    parser.add_argument(
        "--add-runs", type=Path, nargs="*", default=[],
        help="process outputs to pool: an A/A regress's (pass1-base-* as A, pass1-head-* as B) or earlier "
        "trials' (trial-NNN-A, trial-NNN-B)",
    )  # fmt: skip
    parser.add_argument(
        "--aa-runs", type=Path, nargs="*", default=[],
        help="process outputs that serve the 0%% row only (their injected records are not read): an earlier "
        "commit's trial processes, compared within their own code state",
    )  # fmt: skip
    return parser


def pool_inject(runs: Sequence[dict[str, Any]]) -> str | None:
    """``BACKEND=PCT,...`` as the processes ``runs`` injected it (None if none did)."""
    injected = [r for run in runs for r in run["records"] if "injected_pct" in r]
    backends = sorted({r["spec"]["backend"] for r in injected})
    if len(backends) > 1:
        raise ValueError(f"the pooled processes slowed several backends ({', '.join(backends)}): pool one injection")
    if not backends:
        return None
    return f"{backends[0]}=" + ",".join(f"{pct:g}" for pct in sorted({r["injected_pct"] for r in injected}))


def pool_grid(runs: Sequence[dict[str, Any]]) -> str | None:
    """The trial grid of the processes' device (pr-gpu for CUDA points, pr-cpu for CPU ones)."""
    devices = sorted({r["spec"]["device"].split(":")[0] for run in runs for r in run["records"][:1]})
    if len(devices) > 1:
        raise ValueError(f"the pooled processes ran on several devices ({', '.join(devices)}): evaluate each apart")
    return None if not devices else "pr-gpu" if devices == ["cuda"] else "pr-cpu"


def read_pool(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The saved processes (``--reuse``) and ``--add-runs``, and the ``--aa-runs`` ones, each once."""
    from attnperf.results import read_json

    saved = sorted(args.workdir.glob("trial-*.json")) if args.reuse else []
    paths = [path.resolve() for path in [*saved, *args.add_runs, *args.aa_runs]]
    twice = sorted({str(path) for path in paths if paths.count(path) > 1})
    if twice:  # a copy in both halves would calibrate the other half with the process it judges
        raise ValueError(f"processes given twice: {', '.join(twice[:3])}")
    pooled = finished([added_run(read_json(path)) for path in [*saved, *args.add_runs]])
    return pooled, [run | {"aa_only": True} for run in finished([added_run(read_json(p)) for p in args.aa_runs])]


def main(argv: Sequence[str] | None = None) -> int:
    from attnperf.batch import parse_inject

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.processes < 1 or args.confirm < 0:
        parser.error("--processes must be at least 1 and --confirm at least 0")
    try:
        pooled, aa_only = read_pool(args)
        # Evaluated elsewhere than they ran, the processes say their grid and injection: this machine's
        # defaults would judge a GPU pool's flash-attn4 slowdowns as eager's and find none flagged.
        said_grid, said_inject = (pool_grid(pooled), pool_inject(pooled)) if args.reuse else (None, None)
        grid_name = args.grid or said_grid or ("pr-gpu" if grid_named().device == "cuda" else "pr-cpu")
        grid = grid_named(grid_name)
        inject = args.inject or said_inject or ("flash-attn4=2,3,5,10" if grid.device == "cuda" else "eager=2,3,5,10")
        backend, levels = parse_inject(inject)
        if said_inject:
            said_backend, said_levels = parse_inject(said_inject)
            if backend != said_backend or not set(levels) <= set(said_levels):
                raise ValueError(f"--inject {inject}: the pooled processes injected {said_inject}")
    except ValueError as exc:
        parser.error(str(exc))
    points = grid.points()
    args.workdir.mkdir(parents=True, exist_ok=True)
    runner = ProcessRunner(args.workdir.resolve(), repeat=args.repeat)
    started = time.perf_counter()
    if args.reuse:
        runs = pooled
    else:
        print(f"attnperf trials: grid {grid_name}: {describe(points)}; inject {inject}", file=sys.stderr)
        points_file = write_json(args.workdir / "points.json", {"points": [p.as_dict() for p in points]})
        try:
            with code_of(args.commit, args.repo) as tree:
                runs = run_processes(runner, tree, points_file, inject=inject, budget_s=args.budget_s,
                                     max_processes=args.max_processes)  # fmt: skip
        except RegressError as exc:  # git's own message, in one line
            print(f"attnperf trials: {exc}", file=sys.stderr)
            return 1
        runs += pooled
    fingerprints = sorted({r["fingerprint"] for r in runs if r.get("fingerprint")})
    if len(fingerprints) > 1:  # the injected rows read one injection: processes of one code state
        parser.error(f"the pooled processes come from {len(fingerprints)} code states (fingerprints "
                     f"{', '.join(f[:12] for f in fingerprints)}): pool processes of one commit, and add "
                     "other commits' with --aa-runs")  # fmt: skip
    machines = sorted({str(r.get("machine")) for r in runs})
    if len(machines) > 1:  # the calibration and the rates are a runner's (--aa-runs: compared within their own)
        parser.error(f"the pooled processes ran on several machine tags ({', '.join(machines)})")
    walls = [r["wall_s"] for r in runs]
    runs += aa_only
    sigma = calibrate(runs)
    judge = Noise.load(args.noise, min_effect=args.min_effect) if args.noise else None
    rows = held_out(runs, noise=judge, min_effect=args.min_effect, processes=args.processes, confirm=args.confirm,
                    levels=levels, backend=backend, resamples=args.resamples, seed=args.seed)  # fmt: skip
    # σ as the trials were judged: --noise's, else that of all the processes (each half's trials
    # read the other half's, which a borderline benchmark may see on the other side of the 1%)
    reported = judge or Noise(sigma=sigma, min_effect=args.min_effect)
    for row in rows:
        for bench in row["benchmarks"] or ():
            bench["sigma_pct"] = round(100 * reported.of(bench["key"])[0], 3)
    bins = by_measured_slowdown(rows, reported)
    machine = runs[0].get("machine") if runs else None
    code_states = sorted({str(r.get("fingerprint")) for r in runs})
    write_json(args.out, {
        "grid": grid_name, "points": len(points), "inject": inject, "processes_a_side": args.processes,
        "confirm_a_side": args.confirm, "min_effect": args.min_effect, "process_count": len(runs),
        "aa_only_processes": len(aa_only), "fingerprints": code_states,
        "aa_only_machines": sorted({str(r.get("machine")) for r in aa_only}),
        "process_wall_s": {"first": walls[:2], "median": statistics.median(walls) if walls else None},
        "machine": machine, "wall_s": time.perf_counter() - started,
        "sigma_median": statistics.median(sigma.values()) if sigma else None,
        "judged_with": str(args.noise) if args.noise else "the other half's calibration", "rows": rows,
        "by_measured_slowdown": bins,
    })  # fmt: skip
    if args.noise_out is not None:
        write_json(args.noise_out, {"sigma": sigma, "default_sigma": DEFAULT_SIGMA, "processes": len(runs),
                                    "grid": grid_name, "machine": machine, "fingerprints": code_states})  # fmt: skip
    print_rows(rows)
    print_bins(bins, args.min_effect)
    return 0


def print_rows(rows: Sequence[dict[str, Any]]) -> None:
    print(f"{'injected %':>10} {'measured %':>10} {'range %':>13} {'slowed':>7} {'trials':>6} {'flagged':>7} "
          f"{'rate':>6}  95% interval    real (95% interval)")  # fmt: skip
    for row in rows:
        measured = "" if row["measured_pct"] is None else f"{row['measured_pct']:.2f}"
        spread = "" if row["measured_range_pct"] is None else "{:.2f}-{:.2f}".format(*row["measured_range_pct"])
        slowed = "" if row["slowed_benchmarks"] is None else "{slowed}/{of}".format(**row["slowed_benchmarks"])
        print(
            f"{row['injected_pct']:>10g} {measured:>10} {spread:>13} {slowed:>7} {row['trials']:>6} "
            f"{row['flagged']:>7} {row['rate'] or 0:>6.3f}  [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]  "
            f"{row['real_flagged']}/{row['real_trials']} [{row['ci95_real'][0]:.2f}, {row['ci95_real'][1]:.2f}]"
        )


def print_bins(bins: Sequence[dict[str, Any]], min_effect: float) -> None:
    if not bins:
        return
    print(f"each slowed benchmark alone, by the slowdown it carried (threshold: the minimum effect of "
          f"{100 * min_effect:g}%, or raised to a noisier benchmark's σ):")  # fmt: skip
    print(
        f"{'measured %':>10} {'threshold':>9} {'benchmarks':>10} {'trials':>6} {'flagged':>7} {'rate':>6}  95% interval"
    )
    for row in bins:
        low, high = row["measured_pct"]
        span = f"{low:g}+" if high is None else f"{low:g}-{high:g}"
        threshold = "σ" if row["threshold_raised"] else f"{100 * min_effect:g}%"
        print(
            f"{span:>10} {threshold:>9} {row['benchmarks']:>10} {row['trials']:>6} {row['flagged']:>7} "
            f"{row['rate']:>6.3f}  [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]"
        )
