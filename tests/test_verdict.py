"""The verdict and the trials' statistics on synthetic per-process medians (fast, no processes)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from attnperf.benchgrid import BACKWARD, FORWARD, PointSpec
from attnperf.trials import (
    added_run,
    as_head,
    by_measured_slowdown,
    calibrate,
    held_out,
    injected_benchmarks,
    wilson,
)
from attnperf.verdict import HOLE, IMPROVEMENT, NEW, REGRESSION, SAME, Noise, compare_times, decide

SPEC = PointSpec("flash-attn4", "causal", 8192, 128, "bfloat16", FORWARD, device="cuda", heads=16)
OTHER = PointSpec("sdpa-cudnn", "causal", 8192, 128, "bfloat16", BACKWARD, device="cuda", heads=16)


def record(spec: PointSpec, median: float, status: str = "ok", **extra: object) -> dict:
    return {"key": spec.key, "spec": spec.as_dict(), "status": status, "median": median, "samples": [median],
            "number": 1, **extra}  # fmt: skip


def process(*records: dict) -> dict:
    return {"records": list(records)}


def test_compare_times_flags_beyond_noise_and_minimum_effect() -> None:
    base = [1.000, 1.004, 0.997]
    ratio, low, _high, flagged = compare_times(base, [1.05 * x for x in base], sigma=0.004, min_effect=0.01)
    assert ratio == pytest.approx(1.05)
    assert low > 1.01
    assert flagged
    assert not compare_times(base, [1.005 * x for x in base], sigma=0.004, min_effect=0.01)[3]


def test_a_noisy_run_widens_the_interval_beyond_the_calibration() -> None:
    """The pooled spread of the run itself is used when it exceeds the calibrated one."""
    base, head = [1.0, 1.2, 0.8], [1.08, 1.3, 0.9]
    assert not compare_times(base, head, sigma=0.001, min_effect=0.01)[3]


def test_decide_reports_regressions_improvements_holes_and_new() -> None:
    noise = Noise(sigma={SPEC.key: 0.003})
    new = PointSpec("xformers", "causal", 8192, 128, "bfloat16", FORWARD, device="cuda", heads=16)
    base = [process(record(SPEC, 1.0 + d, peak_bytes=100 << 20), record(OTHER, 2.0 + d)) for d in (0, 0.002, -0.002)]
    head = [process(record(SPEC, 1.05 + d, peak_bytes=110 << 20),
                    record(OTHER, 2.0, "unsupported", reason="xformers not importable: boom"),
                    record(new, 1.0)) for d in (0, 0.002, -0.002)]  # fmt: skip
    verdict = decide(base, head, noise)
    outcomes = {(p.key, p.kind): p.outcome for p in verdict.points}
    assert outcomes[(SPEC.key, "time")] == REGRESSION
    assert outcomes[(SPEC.key, "memory")] == REGRESSION
    assert outcomes[(OTHER.key, "time")] == HOLE
    assert outcomes[(new.key, "time")] == NEW
    (hole,) = verdict.where(HOLE)
    assert hole.reason == "unsupported on head: xformers not importable: boom"
    assert verdict.failed
    declared = decide(base, head, noise, allow_grid_change=True)
    assert declared.where(HOLE) == []
    faster = decide([process(record(SPEC, 1.0 + d)) for d in (0, 0.001, 0.002)],
                    [process(record(SPEC, 0.9 + d)) for d in (0, 0.001, 0.002)], noise)  # fmt: skip
    assert faster.points[0].outcome == IMPROVEMENT
    assert not faster.failed


def test_a_missing_head_point_is_a_hole_with_its_reason() -> None:
    verdict = decide([process(record(SPEC, 1.0))] * 2, [process()] * 2, Noise())
    (hole,) = verdict.where(HOLE)
    assert hole.reason.startswith("missing on head")
    same = decide([process(record(SPEC, 1.0))] * 2, [process(record(SPEC, 1.0))] * 2, Noise())
    assert [p.outcome for p in same.points] == [SAME]


def test_head_processes_that_crashed_before_a_point_count_against_it() -> None:
    """Two of three head processes died before the point: one survivor does not make it pass."""
    base = [process(record(SPEC, 1.0 + d)) for d in (0, 0.001, 0.002)]
    head = [process(record(SPEC, 1.0)), process(), process()]
    (hole,) = decide(base, head, Noise()).where(HOLE)
    assert hole.reason == "missing in 2 of 3 head processes (they ended before it)"


def test_wilson_interval() -> None:
    low, high = wilson(0, 100)
    assert low == 0
    assert high == pytest.approx(0.037, abs=0.001)
    assert wilson(50, 100)[0] < 0.5 < wilson(50, 100)[1]


def synthetic_runs(n: int, sigma: float, seed: int = 1) -> list[dict]:
    """``n`` processes a label of one point with lognormal per-process noise and injected records."""
    rng = random.Random(seed)
    runs = []
    for i in range(2 * n):
        base = math.exp(rng.gauss(0, sigma))
        injected = [{**record(SPEC, base * (1 + pct / 100)), "key": f"{SPEC.key}+{pct:g}%", "base_key": SPEC.key,
                     "injected_pct": pct} for pct in (3.0, 10.0)]  # fmt: skip
        runs.append({"trial_label": "AB"[i % 2], "records": [record(SPEC, base), *injected]})
    return runs


def test_trials_find_a_clear_slowdown_and_stay_quiet_on_aa() -> None:
    runs = synthetic_runs(20, sigma=0.004)
    sigma = calibrate(runs)
    assert sigma[SPEC.key] == pytest.approx(0.004, rel=0.5)
    rows = held_out(runs, processes=2, confirm=2, levels=(3.0, 10.0), backend="flash-attn4", resamples=200,
                    seed=0)  # fmt: skip
    by_pct = {row["injected_pct"]: row for row in rows}
    assert by_pct[0.0]["rate"] <= 0.01
    assert by_pct[10.0]["rate"] == 1.0
    assert by_pct[3.0]["rate"] >= 0.8
    assert by_pct[3.0]["measured_pct"] == pytest.approx(3.0, abs=0.01)
    # Two halves of 10 processes a label, 2 a trial (the last trial's confirmation wraps round): 5 + 5.
    assert by_pct[0.0]["real_trials"] == 10
    judged = held_out(runs, noise=Noise(sigma=sigma), processes=2, confirm=2, levels=(), backend=None, resamples=0,
                      seed=0)  # fmt: skip
    assert judged[0]["real_trials"] == 10  # an earlier calibration lets every process serve: 20 a label, one pool


def test_as_head_swaps_in_the_injected_records_of_one_backend() -> None:
    run = synthetic_runs(1, sigma=0.0)[0]
    head = as_head(run, 10.0, "flash-attn4")
    (rec,) = head["records"]
    assert rec["key"] == SPEC.key
    assert rec["median"] == pytest.approx(1.1)
    assert as_head(run, 10.0, "sdpa-cudnn")["records"][0]["median"] == pytest.approx(1.0)


def test_a_slowdown_that_could_not_be_injected_leaves_the_benchmark_plain() -> None:
    """An unsupported injected record (shorter than the spin's cost) must not become the head's
    record: the verdict would call it a hole and count a detection that no slowdown earned."""
    run = synthetic_runs(1, sigma=0.0)[0]
    for r in run["records"]:
        if r.get("injected_pct") == 3.0:
            r.update(status="unsupported", reason="below the spin's own cost")
            del r["median"]
    assert as_head(run, 3.0, "flash-attn4")["records"][0] == record(SPEC, 1.0)
    assert injected_benchmarks([run], 3.0) == {"slowed": 0, "of": 1}
    assert injected_benchmarks([run], 10.0) == {"slowed": 1, "of": 1}
    rows = held_out([*synthetic_runs(8, sigma=0.004), run], noise=Noise(sigma={}), processes=2, confirm=2,
                    levels=(3.0,), backend="flash-attn4", resamples=0, seed=0)  # fmt: skip
    assert rows[1]["slowed_benchmarks"] == {"slowed": 1, "of": 1}, "slowed in the processes that could inject it"


def test_each_slowed_benchmark_counts_the_trials_that_slowed_it_in_every_head_process() -> None:
    """A trial flags when any benchmark is, so a row's rate can be carried by one benchmark slowed
    more than asked: each benchmark's own count says how a slowdown of its measured size fares.

    Beside the 3%/10% benchmark, a second flash-attn-4 benchmark whose injection added nothing
    (never flagged, though its trials are) and a cuDNN benchmark that every B process runs 20%
    slower (flagged at 0%, where anything counts, and never at x%, where only the slowed backend
    does). A head process that could not inject a size takes the trials that read it (its first
    pass and the previous trial's confirmation) out of that benchmark's count, flagged or not;
    what the spin added beyond the request is reported in µs."""
    unmoved = PointSpec("flash-attn4", "rope", 8192, 128, "bfloat16", FORWARD, device="cuda", heads=16)
    runs = synthetic_runs(20, sigma=0.004, seed=2)
    for run in runs:
        slower = 1.2 if run["trial_label"] == "B" else 1.0
        run["records"] += [record(unmoved, 1.0), record(OTHER, slower)]
        run["records"] += [{**record(unmoved, 1.0), "key": f"{unmoved.key}+{pct:g}%", "base_key": unmoved.key,
                            "injected_pct": pct} for pct in (3.0, 10.0)]  # fmt: skip
        for r in run["records"]:
            if r.get("injected_pct") == 10.0 and r["base_key"] == SPEC.key:
                r["median"] += 2e-6  # a spin that added 2 µs more than asked
    b_runs = [r for r in runs if r["trial_label"] == "B"]
    for pct, run in ((3.0, b_runs[4]), (10.0, b_runs[6])):
        for r in run["records"]:
            if r.get("injected_pct") == pct and r["base_key"] == SPEC.key:
                r.update(status="unsupported", reason="below the spin's own cost")
            elif pct == 10.0 and r["key"] == SPEC.key:
                r["median"] *= 1.1  # slow by itself: its head reads 10% slower without an injection
    noise = Noise(sigma={SPEC.key: 0.004, unmoved.key: 0.004, OTHER.key: 0.004})
    aa, three, ten = held_out(runs, noise=noise, processes=2, confirm=2, levels=(3.0, 10.0), backend="flash-attn4",
                              resamples=0, seed=0)  # fmt: skip
    assert aa["real_flagged"] == aa["real_trials"] == 10, "cuDNN's 20% is a false alarm at 0%"
    by_key = {pct: {b["key"]: b for b in row["benchmarks"]} for pct, row in ((3.0, three), (10.0, ten))}
    bench3, bench10 = by_key[3.0][SPEC.key], by_key[10.0][SPEC.key]
    assert OTHER.key not in by_key[3.0], "only the slowed backend's benchmarks"
    # seeded: 7 of the 10 trials flag, all 7 among the 8 that slowed the benchmark in every head
    assert (three["real_trials"], three["real_flagged"]) == (10, 7), "cuDNN's 20% does not count at 3%"
    assert (bench3["trials"], bench3["flagged"]) == (8, 7)
    assert bench3["measured_pct"] == pytest.approx(3.0, abs=0.01)
    assert bench3["excess_us"] == pytest.approx(0.0, abs=0.01)
    # at 10% the trials that read the process slow by itself flag, but did not slow the benchmark
    assert (ten["real_flagged"], bench10["trials"], bench10["flagged"]) == (10, 8, 8)
    assert bench10["excess_us"] == pytest.approx(2.0, abs=0.01)
    for pct in (3.0, 10.0):
        assert by_key[pct][unmoved.key] == {"key": unmoved.key, "measured_pct": 0.0, "excess_us": pytest.approx(
            -1e6 * pct / 100), "trials": 10, "flagged": 0}  # fmt: skip


def test_detections_pool_by_measured_slowdown_apart_where_the_threshold_is_raised() -> None:
    """A benchmark whose σ exceeds the minimum effect needs a larger slowdown: its bins stay apart."""
    noisy = PointSpec("flash-attn4", "rope", 8192, 128, "bfloat16", FORWARD, device="cuda", heads=16).key
    rows = [
        {"benchmarks": None},
        {"benchmarks": [{"key": SPEC.key, "measured_pct": 3.4, "trials": 10, "flagged": 9},
                        {"key": noisy, "measured_pct": 3.8, "trials": 10, "flagged": 0},
                        {"key": SPEC.key, "measured_pct": 5.2, "trials": 0, "flagged": 0}]},
        {"benchmarks": [{"key": SPEC.key, "measured_pct": 3.9, "trials": 10, "flagged": 10},
                        {"key": noisy, "measured_pct": -0.3, "trials": 10, "flagged": 0},
                        {"key": noisy, "measured_pct": 11.0, "trials": 10, "flagged": 10}]},
    ]  # fmt: skip
    bins = by_measured_slowdown(rows, Noise(sigma={SPEC.key: 0.004, noisy: 0.015}, min_effect=0.01))
    summary = [(b["threshold_raised"], b["measured_pct"], b["benchmarks"], b["trials"], b["flagged"]) for b in bins]
    assert summary == [
        (False, [3.0, 4.0], 2, 20, 19),
        (True, [0.0, 1.0], 1, 10, 0),  # a slowdown measured under 0 falls in the first bin
        (True, [3.0, 4.0], 1, 10, 0),
        (True, [10.0, None], 1, 10, 10),
    ], "a benchmark slowed in no trial's every head process is left out"
    assert bins[0]["rate"] == 0.95


def test_pooled_processes_keep_their_sides() -> None:
    """Processes added from elsewhere: an earlier trial's keep their label (a trial-001-A pooled as
    B made the pool lopsided and left no trial), an A/A check's base is A and its head B."""
    labels = {name: added_run({"label": name, "records": []})["trial_label"]
              for name in ("trial-001-A", "trial-002-B", "pass1-base-1", "pass1-head-2")}  # fmt: skip
    assert labels == {"trial-001-A": "A", "trial-002-B": "B", "pass1-base-1": "A", "pass1-head-2": "B"}


def test_trials_budget_the_next_pair_on_processes_after_the_first(monkeypatch, tmp_path: Path) -> None:
    """The first process runs the checks and compilations; a budget read from it ends trials early."""
    from attnperf import trials

    clock = [0.0]
    monkeypatch.setattr(trials.time, "perf_counter", lambda: clock[0])

    class Runner:
        workdir = tmp_path

        def run(self, repo, points, label, **_) -> dict:
            wall = 300.0 if label.startswith("trial-001") else 100.0
            clock[0] += wall
            return {"label": label, "wall_s": wall}

    runs = trials.run_processes(Runner(), tmp_path, tmp_path / "points.json", inject=None, budget_s=1000,
                                max_processes=50)  # fmt: skip
    # 300 + 100 = 400 s after two; the next pair is expected at 2 × 100 s (not 2 × 300): 600, 800, then
    # 800 + 200 = 1000 is not over the budget, 1000 + 200 is
    assert [r["trial_label"] for r in runs] == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert clock[0] == 1000


def test_trials_compare_the_processes_of_one_gpu() -> None:
    """Two GPUs 3% apart, each with A and B processes, arranged so that in run order the first A
    processes ran on one GPU and the first B processes on the other: within a GPU every comparison
    is A/A; a trial that set one GPU's A against the other's B would flag the 3%, and a calibration
    pooled across GPUs would read the 3% as noise."""
    runs = synthetic_runs(12, sigma=0.002, seed=3)
    seen = {"A": 0, "B": 0}
    for run in runs:  # A on x x x x y y y y x x x x, B on y y y y x x x x y y y y
        k = seen[run["trial_label"]]
        seen[run["trial_label"]] += 1
        first = (k // 4) % 2 == 0
        run["gpu"] = "x" if first == (run["trial_label"] == "A") else "y"
        if run["gpu"] == "y":
            for r in run["records"]:
                r["median"] *= 1.03
    sigma = calibrate(runs)
    assert max(sigma.values()) < 0.006, "the spread is measured within each GPU"
    rows = held_out(runs, noise=Noise(sigma=sigma), processes=2, confirm=2, levels=(), backend=None, resamples=200,
                    seed=0)  # fmt: skip
    assert rows[0]["flagged"] == 0
    assert rows[0]["real_trials"] == 4, "4 processes of the rarer label on each GPU: 4 // 2 = 2 a GPU"


@pytest.mark.parametrize(("processes", "confirm"), [(2, 2), (1, 3), (3, 1), (2, 5), (4, 0)])
@pytest.mark.parametrize("extra", range(6))
def test_a_confirmation_never_reuses_its_own_trials_processes(monkeypatch, processes, confirm, extra) -> None:
    """Real trials take disjoint first passes; each confirms on the next processes (the last on the
    first ones'), never on its own: n // processes trials for n processes a label, none below
    processes + confirm."""
    from attnperf import trials

    seen: list[tuple[list[int], list[int], list[int], list[int]]] = []

    def one_trial(base, head, base_c, head_c, *_) -> trials.Outcome:
        seen.append(tuple([r["i"] for r in side] for side in (base, head, base_c, head_c)))
        return trials.Outcome()

    monkeypatch.setattr(trials, "one_trial", one_trial)
    n = processes + confirm + extra - 1  # one short of a trial when extra is 0
    runs = [{"i": i // 2, "trial_label": "AB"[i % 2], "records": []} for i in range(2 * n)]
    trials.evaluate(runs, Noise(), processes=processes, confirm=confirm, levels=(), backend=None, resamples=0,
                    seed=0)  # fmt: skip
    assert len(seen) == (n // processes if n >= processes + confirm else 0)
    firsts = [i for base, *_ in seen for i in base]
    assert len(firsts) == len(set(firsts)), "first passes are disjoint"
    for base, head, base_c, head_c in seen:
        assert base == head, "each label's processes in run order"
        assert base_c == head_c
        assert len(base_c) == confirm
        assert not set(base) & set(base_c)


def test_trials_never_compare_two_code_states_and_aa_only_processes_serve_zero_percent() -> None:
    """An earlier commit's pool on the same GPU (another fingerprint, 10% slower, and an injection
    that never took) pooled with --aa-runs: its A/A trials count within it, no trial or calibration
    sets it against the other pool, and it feeds neither the injected rows nor their measured size.
    The pools' labels are lopsided the other way round (5 A 8 B, 8 A 5 B): by code state that is
    2 + 2 real trials; pooled by GPU alone, 13 a label, 6."""

    def without_last(runs: list[dict], label: str, count: int) -> list[dict]:
        drop = [i for i, r in enumerate(runs) if r["trial_label"] == label][-count:]
        return [r for i, r in enumerate(runs) if i not in drop]

    current = without_last(synthetic_runs(8, sigma=0.002, seed=5), "A", 3)
    earlier = without_last(synthetic_runs(8, sigma=0.002, seed=6), "B", 3)
    for run in current:
        run["fingerprint"] = "now"
    for run in earlier:
        run |= {"fingerprint": "before", "aa_only": True}
        for r in run["records"]:
            r["median"] *= 1.10
            if "injected_pct" in r:  # its injection read nothing: were it pooled, the 10% row would fall
                r["median"] /= 1 + r["injected_pct"] / 100
    runs = current + earlier
    assert max(calibrate(runs).values()) < 0.006, "the spread is measured within each code state"
    aa, ten = held_out(runs, noise=Noise(), processes=2, confirm=2, levels=(10.0,), backend="flash-attn4",
                       resamples=200, seed=0)  # fmt: skip
    assert aa["real_trials"] == 4
    assert aa["flagged"] == 0
    assert ten["real_trials"] == 2
    assert ten["rate"] == 1.0
    assert ten["measured_pct"] == pytest.approx(10.0, abs=0.01)
    assert ten["measured_range_pct"] == [pytest.approx(10.0, abs=0.01)] * 2


def test_reuse_reads_the_grid_and_injection_from_the_processes(tmp_path: Path, capsys) -> None:
    """A GPU pool evaluated on a CPU machine: without the processes' own grid and injection the
    table judged flash-attn4's slowdowns as eager's and counted none (the H200's pool at c1c8ea0
    first read 0% at every size that way). A contradicting --inject names what the pool injected."""
    from attnperf import trials
    from attnperf.results import read_json, write_json

    for i, run in enumerate(synthetic_runs(10, sigma=0.002, seed=7)):
        label = f"trial-{i + 1:03d}-{run['trial_label']}"
        write_json(tmp_path / f"{label}.json", run | {"label": label, "exit_code": 0, "wall_s": 1.0})
    out = tmp_path / "table.json"
    argv = ["--reuse", "--workdir", str(tmp_path), "--out", str(out), "--resamples", "50"]
    assert trials.main(argv) == 0
    table = read_json(out)
    assert (table["grid"], table["inject"]) == ("pr-gpu", "flash-attn4=3,10")
    assert {row["injected_pct"]: row["rate"] for row in table["rows"]}[10.0] == 1.0
    with pytest.raises(SystemExit):
        trials.main([*argv, "--inject", "eager=10"])
    assert "the pooled processes injected flash-attn4=3,10" in capsys.readouterr().err


def test_a_pool_of_mixed_devices_backends_or_repeated_files_is_refused(tmp_path: Path, capsys) -> None:
    """The evaluation cannot guess a grid for CPU and GPU processes together, nor one injection for
    two slowed backends, and a process given twice would sit in both halves of the calibration."""
    from attnperf import trials
    from attnperf.results import write_json

    def saved(name: str, run: dict) -> Path:
        return write_json(tmp_path / f"{name}.json", run | {"label": name, "exit_code": 0, "wall_s": 1.0})

    gpu = saved("trial-001-A", synthetic_runs(1, sigma=0.0)[0])
    cpu_run = synthetic_runs(1, sigma=0.0)[1]
    for r in cpu_run["records"]:
        r["spec"] = r["spec"] | {"device": "cpu"}
    cpu = saved("other-B", cpu_run)
    cudnn_run = synthetic_runs(1, sigma=0.0)[1]
    for r in cudnn_run["records"]:
        r["spec"] = r["spec"] | {"backend": "sdpa-cudnn"}
    cudnn = saved("cudnn-B", cudnn_run)
    out = ["--out", str(tmp_path / "t.json"), "--workdir", str(tmp_path / "none"), "--reuse"]
    for extra, message in (([str(cpu)], "several devices (cpu, cuda)"),
                           ([str(cudnn)], "slowed several backends (flash-attn4, sdpa-cudnn)"),
                           ([str(gpu), "--aa-runs", str(gpu)], "processes given twice")):  # fmt: skip
        with pytest.raises(SystemExit):
            trials.main([*out, "--add-runs", str(gpu), *extra])
        assert message in capsys.readouterr().err
