"""How often the regression check errs, measured on the machine it runs on, from independent
evidence only; and the calibration the check reads.

Fresh batch-runner processes of one checkout are labelled A and B alternately (A B B A …); they
run the same code, so every A/B comparison is an A/A comparison. With ``--inject`` each B process
also measures the named backends deliberately slowed (:mod:`attnperf.batchrun`: a device spin of
PCT %, a host delay of N µs, N extra passes over q), and a trial may read those records as the
head's.

**Trials are disjoint.** Within one GPU and code state, in the order the processes ran, a trial
takes the next ``P`` A-processes and ``P`` B-processes that no other trial used for its first pass
and, only when that pass flags something, the next ``C`` a side for its confirmation: the check
itself runs a confirmation only then, so an unflagged trial leaves those processes to the next
one. No process serves two trials and nothing is resampled, so a row of ``n`` trials is ``n``
independent checks and its 95% interval is Clopper–Pearson's on ``n``. A trial flagged with too
few processes left to confirm (at the pool's end) is *unresolved* and counted against the check:
its first-pass flags stand in the A/A row, and it catches nothing in an injected row. As in the
check, a confirmation judges every timing of the flagged benchmarks again, and its verdict on them
is the trial's.

**Nothing judges itself.** Each trial is judged with a calibration that did not see its processes:
``--noise`` (an earlier calibration), or, by default, the calibration of all the other processes
of the pool.

Reported: per injection, the rate at which a check flags anything of the slowed backends (at 0%:
anything at all), and per benchmark and per kind (forward direct, forward replay, decode direct,
decode replay, backward; memory at 0%) how many disjoint trials flagged it, with the slowdown the
injection measured against the plain records of the same processes. For the A/A processes,
every point of every disjoint pair of first passes counts: the share whose 99% interval excludes
no change (nominally 1%), and the first-pass flags against the count the rule's own model expects.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnperf.noise import Noise, calibrate, from_runs, replicate_of
from attnperf.processes import ProcessRunner
from attnperf.records import Record, ResultFile
from attnperf.stats import clopper_pearson, t_cdf, t_ppf
from attnperf.verdict import LEVEL, MIN_EFFECT, REGRESSION, TIME_KINDS, decide, judge_times

A, B = "A", "B"


def label_of(run: ResultFile) -> str:
    """A process's trial label: ``trial-NNN-A`` → A; an A/A check's base process is A, its head B."""
    label = run.label or ""
    if label.startswith(("trial-", "calibrate-")):
        return label.rsplit("-", 1)[1] if label.rsplit("-", 1)[1] in (A, B) else A
    return A if "-base-" in label else B


def run_processes(
    runner: ProcessRunner, tree: Path, points_file: Path, *, inject: str | None, budget_s: float, max_processes: int,
    prefix: str = "trial",
) -> list[ResultFile]:  # fmt: skip
    """A, B, B, A, A, B … until the budget or ``max_processes`` (an even count). Every pair holds one
    A and one B, and is expected to take the longest A and the longest B after the first process (the
    first compiles and checks what later ones load from the caches; a B also measures the injections)."""
    runs: list[ResultFile] = []
    started = time.perf_counter()
    verdicts = runner.workdir / "verdicts.json"
    while len(runs) < max_processes:
        if runs and len(runs) % 2 == 0 and time.perf_counter() - started + next_pair_s(runs) > budget_s:
            break
        i = len(runs)
        label = (A, B)[(i + (i // 2) % 2) % 2]
        output = runner.run(tree, points_file, f"{prefix}-{i + 1:03d}-{label}", verdicts=verdicts,
                            inject=inject if label == B else None)  # fmt: skip
        runs.append(output)
        print(f"  process {i + 1} ({label}): {output.meta['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return runs


def next_pair_s(runs: Sequence[ResultFile]) -> float:
    """Seconds the next A and B processes are expected to take: the longest of each label after the
    first process (the first alone where nothing else has run)."""
    later = runs[1:] or runs
    walls = {label: [r.meta["wall_s"] for r in later if label_of(r) == label] for label in (A, B)}
    longest = max(r.meta["wall_s"] for r in later)
    return sum(max(walls[label], default=longest) for label in (A, B))


def finished(outputs: Iterable[ResultFile]) -> list[ResultFile]:
    """The processes that ended by themselves (exit 0), each left out named on stderr: one stopped
    from outside measured part of the grid and is no replicate."""
    kept = []
    for output in outputs:
        if output.meta.get("exit_code") == 0 and output.records:
            kept.append(output)
        else:
            note = output.meta.get("error") or f"exit {output.meta.get('exit_code', 'not recorded')}"
            print(f"attnperf trials: {output.label} left out of the pool ({note})", file=sys.stderr)
    return kept


def as_head(run: ResultFile, kind: str, level: float) -> ResultFile:
    """A B-process seen as a head slowed by one injection: its injected records of that kind and level
    take the place of the plain ones they were measured beside (their memory and first call are the
    plain ones': the injection slows time only)."""
    slowed = {r.key: r for r in run.injected if r.ok and _is(r, (kind, level))}
    records = []
    for plain in run.records:
        s = slowed.get(plain.key)
        if s is None:
            records.append(plain)
            continue
        timings = {f: getattr(s, f) for f in ("median_s", "samples_s", "number", "replay_median_s",
                                              "replay_samples_s", "replay_number")}  # fmt: skip
        if kind == "host":  # a host delay does not reach the replay: the plain replay stands
            timings |= {f: getattr(plain, f) for f in ("replay_median_s", "replay_samples_s", "replay_number")}
        records.append(dataclasses.replace(plain, **timings))
    return ResultFile(run.path, run.meta, records)


def _is(record: Record, injection: tuple[str, float]) -> bool:
    """Whether ``record`` was measured with this (kind, level) injection."""
    about = record.injection or {}
    return (about.get("kind"), about.get("level")) == injection


def slowed_keys(runs: Sequence[ResultFile], kind: str, level: float) -> set[str]:
    """The benchmarks every one of ``runs`` measured slowed by this injection."""
    sets = [{r.key for r in run.injected if r.ok and _is(r, (kind, level))} for run in runs]
    return set.intersection(*sets) if sets else set()


def injections_of(runs: Sequence[ResultFile]) -> list[tuple[str, float]]:
    """(kind, level) of every injection the processes measured."""
    seen = {(r.injection["kind"], r.injection["level"]) for run in runs for r in run.injected if r.injection}
    return sorted(seen)


@dataclass(frozen=True)
class Trial:
    """One disjoint check: the (key, timing kind) pairs it flagged after confirmation, the
    benchmarks its head processes all had slowed, whether it read a confirmation, and whether it
    was flagged with too few processes left to confirm (``unresolved``)."""

    flagged: frozenset[tuple[str, str]]
    slowed: frozenset[str]
    confirmed: bool = False
    unresolved: bool = False


Sides = tuple[Sequence[ResultFile], Sequence[ResultFile]]


def one_trial(first: Sides, spare: Sides, noise: Noise, injection: tuple[str, float] | None,
              min_effect: float, confirm: int) -> Trial:  # fmt: skip
    """A check on disjoint processes, as :func:`attnperf.prcheck.regress` makes it: the first pass,
    then, when it flagged something, the confirmation on ``confirm`` processes a side of ``spare``,
    which judges every timing of the flagged benchmarks again and decides them (fewer processes
    there: unresolved, counted against the check)."""

    def heads(runs: Sequence[ResultFile]) -> list[ResultFile]:
        return [as_head(r, *injection) if injection else r for r in runs]

    options = {"confirm": confirm, "min_effect": min_effect}
    verdict = decide(first[0], heads(first[1]), noise, **options)
    flagged = {(p.key, p.kind) for p in verdict.points if p.outcome == REGRESSION}
    slowed = slowed_keys(first[1], *injection) if injection else set()
    if not flagged or not confirm:
        return Trial(frozenset(flagged), frozenset(slowed))
    if min(len(spare[0]), len(spare[1])) < confirm:
        return Trial(frozenset(flagged) if injection is None else frozenset(), frozenset(slowed), unresolved=True)
    again_a, again_b = spare[0][:confirm], spare[1][:confirm]
    again = decide(again_a, heads(again_b), noise, keys={k for k, _ in flagged}, **options)
    flagged = {(p.key, p.kind) for p in again.points if p.outcome == REGRESSION}
    slowed &= slowed_keys(again_b, *injection) if injection else set()
    return Trial(frozenset(flagged), frozenset(slowed), confirmed=True)


def label_pools(runs: Sequence[ResultFile]) -> list[tuple[list[ResultFile], list[ResultFile]]]:
    """Per GPU and code state, its A and its B processes, each in the order they ran (by their start
    time where recorded, so that pools added in any order split into the same trials)."""
    groups: dict[Any, list[ResultFile]] = {}
    for run in sorted(runs, key=lambda r: r.meta.get("started_unix") or 0.0):
        groups.setdefault(replicate_of(run), []).append(run)
    return [([r for r in members if label_of(r) == A], [r for r in members if label_of(r) == B])
            for members in groups.values()]  # fmt: skip


Check = Callable[[Sides, Sides], Trial]


def disjoint_trials(runs: Sequence[ResultFile], processes: int, confirm: int, check: Check) -> list[Trial]:
    """Every disjoint trial of the pool: ``check(first, spare)`` judges a first pass of the next
    ``processes`` a side, with the next ``confirm`` a side spare for its confirmation; the trial after
    it starts past what it used (both sides advance together, A and B alternating as they ran)."""
    out = []
    for pool_a, pool_b in label_pools(runs):
        i = 0
        while i + processes <= min(len(pool_a), len(pool_b)):
            end = i + processes
            trial = check((pool_a[i:end], pool_b[i:end]), (pool_a[end : end + confirm], pool_b[end : end + confirm]))
            out.append(trial)
            i = end + (confirm if trial.confirmed else 0)
    return out


def first_pass_pairs(runs: Sequence[ResultFile], processes: int) -> list[Sides]:
    """The disjoint pairs of first passes (``processes`` A against ``processes`` B) of the pool."""
    return [(pool_a[i : i + processes], pool_b[i : i + processes])
            for pool_a, pool_b in label_pools(runs)
            for i in range(0, min(len(pool_a), len(pool_b)) - processes + 1, processes)]  # fmt: skip


def kind_of(key: str, timing: str) -> str:
    """The kind a (benchmark, timing) pair reports under: forward direct, decode replay, backward …"""
    if timing == "memory":
        return "memory"
    if key.startswith("TimeForwardBackward("):
        return f"backward {timing}"
    return f"{'decode' if key.startswith('TimeDecode(') else 'forward'} {timing}"


def interval(k: int, n: int) -> list[float]:
    return [round(x, 4) for x in clopper_pearson(k, n)]


Judge = Callable[[Sequence[ResultFile]], Noise]


def held_out(runs: Sequence[ResultFile]) -> Judge:
    """The calibration a trial is judged with: that of every process but the trial's own."""

    def judge(own: Sequence[ResultFile]) -> Noise:
        mine = {id(r) for r in own}
        return from_runs([r for r in runs if id(r) not in mine], source="the other processes", group=label_of)

    return judge


def rows_for(runs: Sequence[ResultFile], judge: Judge, processes: int, confirm: int,
             min_effect: float) -> list[dict[str, Any]]:  # fmt: skip
    """One row per injection (and the A/A row first): disjoint trials, each judged by a calibration
    that saw neither its first pass nor the processes spare for its confirmation."""
    rows = []
    for injection in [None, *injections_of(runs)]:
        usable = runs if injection is None else [r for r in runs if label_of(r) == A or _injects(r, injection)]

        def check(first: Sides, spare: Sides, injection: tuple[str, float] | None = injection) -> Trial:
            noise = judge([run for side in (*first, *spare) for run in side])
            return one_trial(first, spare, noise, injection, min_effect, confirm)

        trials = disjoint_trials(usable, processes, confirm, check)
        rows.append(row(trials, injection, runs))
    return rows


def _injects(run: ResultFile, injection: tuple[str, float]) -> bool:
    return any(_is(r, injection) for r in run.injected)


def row(trials: Sequence[Trial], injection: tuple[str, float] | None, runs: Sequence[ResultFile]) -> dict[str, Any]:
    """A row of the table: the check's rate over disjoint trials, then per kind and per benchmark."""
    if injection is None:
        hit = [bool(t.flagged) for t in trials]
        counted = {(k, kind) for t in trials for k, kind in t.flagged}
    else:
        hit = [any(k in t.slowed for k, _ in t.flagged) for t in trials]
        counted = {(k, kind) for t in trials for k in t.slowed for kind in TIME_KINDS}
    benchmarks = []
    for key, timing in sorted(counted):
        relevant = [t for t in trials if injection is None or key in t.slowed]
        flagged = sum((key, timing) in t.flagged for t in relevant)
        size = measured_slowdown(runs, injection, key, timing) if injection else None
        if injection is not None and size is None:
            continue  # this timing was not slowed (a host delay does not reach the replay)
        benchmarks.append({"key": key, "timing": timing, "kind": kind_of(key, timing), "measured_pct": size,
                           "trials": len(relevant), "flagged": flagged,
                           "ci95": interval(flagged, len(relevant))})  # fmt: skip
    kinds: dict[str, list[int]] = {}
    for bench in benchmarks:
        counts = kinds.setdefault(bench["kind"], [0, 0])
        counts[0] += bench["flagged"]
        counts[1] += bench["trials"]
    name = "A/A" if injection is None else f"{injection[0]} {injection[1]:g}"
    return {
        "injection": name, "trials": len(trials), "flagged": sum(hit), "ci95": interval(sum(hit), len(trials)),
        "confirmed": sum(t.confirmed for t in trials), "unresolved": sum(t.unresolved for t in trials),
        "by_kind": {k: {"flagged": f, "benchmark_trials": n, "rate": f / n if n else None}
                    for k, (f, n) in kinds.items()},
        "benchmarks": benchmarks,
    }  # fmt: skip


def measured_slowdown(runs: Sequence[ResultFile], injection: tuple[str, float], key: str, timing: str) -> float | None:
    """The slowdown the injection really carried on one benchmark and timing, in %: the median over the
    processes that measured both of slowed/plain."""
    ratios = []
    for run in runs:
        plain = next((r for r in run.records if r.key == key and r.ok), None)
        slowed = next((r for r in run.injected if r.key == key and r.ok and _is(r, injection)), None)
        if plain is None or slowed is None:
            continue
        before, after = plain.timing(timing)[0], slowed.timing(timing)[0]
        if before and after and not (injection[0] == "host" and timing == "replay"):
            ratios.append(after / before)
    return round(100 * (statistics.median(ratios) - 1), 3) if ratios else None


def aa_points(runs: Sequence[ResultFile], judge: Judge, processes: int, min_effect: float) -> dict[str, Any]:
    """Every point and timing of every disjoint pair of A/A first passes, judged held out: how many
    99% intervals exclude 1 (nominally 1%), and the first-pass flags against the number the rule's
    model expects (each comparison's P(lower end > threshold) under no change, summed)."""
    compared = excluded = flagged = 0
    expected = 0.0
    q_level = 1 - (1 - LEVEL) / 2
    for base, head in first_pass_pairs(runs, processes):
        noise = judge([*base, *head])
        table: dict[str, list[list[Record]]] = {}
        for side in (base, head):
            for run in side:
                for r in run.records:
                    if r.ok:
                        table.setdefault(r.key, [[], []])[side is head].append(r)
        for key, (b, h) in table.items():
            for timing in TIME_KINDS:
                bt = [t for r in b if (t := r.timing(timing)[0])]
                ht = [t for r in h if (t := r.timing(timing)[0])]
                if not bt or not ht:
                    continue
                sigma, dof = noise.of(timing, key)
                judged = judge_times(bt, ht, sigma, dof)
                if judged is None:
                    continue
                compared += 1
                excluded += judged.low > 1 or judged.high < 1
                flagged += judged.low > 1 + min_effect
                q = t_ppf(q_level, judged.dof)
                expected += 1 - t_cdf(q + math.log1p(min_effect) / judged.se, judged.dof)
    return {
        "comparisons": compared, "interval_excludes_1": excluded,
        "rate": excluded / compared if compared else None, "nominal_rate": 1 - LEVEL,
        "first_pass_flags": flagged, "first_pass_expected": round(expected, 2),
        "observed_over_expected": flagged / expected if expected else None,
    }  # fmt: skip


def evaluate(
    runs: Sequence[ResultFile], *, noise: Noise | None, processes: int, confirm: int, min_effect: float = MIN_EFFECT
) -> dict[str, Any]:
    """The table: rows of disjoint trials and the A/A point-level calibration, held out."""
    judge = held_out(runs) if noise is None else (lambda own: noise)
    return {
        "rows": rows_for(runs, judge, processes, confirm, min_effect),
        "aa_points": aa_points(runs, judge, processes, min_effect),
        "judged_with": noise.source if noise is not None else "each trial by the calibration of all other processes",
    }


def calibration_of(runs: Sequence[ResultFile], machine: str, grid: str | None) -> tuple[Noise, dict[str, Any]]:
    """The calibration of ``runs`` (every label's plain records; the A/B label kept apart) and what it says
    about itself, for the noise file."""
    sigma, dof = calibrate(runs, group=label_of)
    codes = {r.meta.get("measuring_code") for r in runs}
    about = {"machine": machine, "grid": grid, "processes": len(runs), "created_unix": time.time(),
             "fingerprints": sorted({str(r.meta.get("fingerprint")) for r in runs}),
             "measuring_code": codes.pop() if len(codes) == 1 else None}  # fmt: skip
    return Noise(sigma, dof, "calibrate", None), about


def print_table(table: dict[str, Any]) -> None:
    print(f"{'injection':>12} {'trials':>6} {'flagged':>7}  95% interval (Clopper-Pearson, disjoint trials)")
    for r in table["rows"]:
        extra = f"; {r['confirmed']} confirmed" + (f", {r['unresolved']} unresolved" if r["unresolved"] else "")
        low, high = r["ci95"]
        print(f"{r['injection']:>12} {r['trials']:>6} {r['flagged']:>7}  [{low:.3f}, {high:.3f}]{extra}")
        for kind, c in sorted(r["by_kind"].items()):
            rate = "" if c["rate"] is None else f"{c['rate']:.3f}"
            print(f"{'':>14}{kind:<16} {c['flagged']:>4} of {c['benchmark_trials']:<4} benchmark-trials {rate}")
    aa = table["aa_points"]
    if aa["comparisons"]:
        print(f"A/A points: {aa['interval_excludes_1']} of {aa['comparisons']} intervals exclude 1 "
              f"({aa['rate']:.4f}, nominal {aa['nominal_rate']:.2f}); first-pass flags {aa['first_pass_flags']} "
              f"against {aa['first_pass_expected']} expected")  # fmt: skip
