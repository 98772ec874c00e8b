"""The verdict, its calibration and the trials' statistics on synthetic per-process medians (fast, no
processes)."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest

from attnperf.benchgrid import BACKWARD, DECODE, FORWARD, PointSpec
from attnperf.errors import UsageError
from attnperf.files import write_json
from attnperf.noise import Noise, calibrate, measuring_code
from attnperf.records import Record, ResultFile, Status
from attnperf.stats import clopper_pearson, f_ppf, t_ppf
from attnperf.trials import Trial, as_head, disjoint_trials, evaluate, label_of
from attnperf.verdict import (
    HOLE,
    IMPROVEMENT,
    INCONCLUSIVE,
    NEW,
    REGRESSION,
    SAME,
    SLOWER_FIRST_CALL,
    decide,
    guarded_slowdown,
    judge_times,
)

SPEC = PointSpec("flash-attn4", "causal", 8192, 128, "bfloat16", FORWARD, device="cuda", heads=16)
OTHER = PointSpec("sdpa-cudnn", "causal", 8192, 128, "bfloat16", BACKWARD, device="cuda", heads=16)
DECODE_SPEC = PointSpec("flash-attn4", "decode", 4096, 128, "bfloat16", DECODE, device="cuda", heads=16)


def record(spec: PointSpec, median: float, status: Status = Status.OK, **extra: object) -> Record:
    if status is not Status.OK:
        return Record(spec, status, **extra)  # type: ignore[arg-type]
    return Record(spec, status, median_s=median, samples_s=(median,), number=1, **extra)  # type: ignore[arg-type]


def process(*records: Record, label: str = "", **meta: object) -> ResultFile:
    return ResultFile(None, {"label": label, **meta}, list(records))


def calibrated(sigma: float, *keys: str, dof: int = 10, kinds: tuple[str, ...] = ("direct", "replay")) -> Noise:
    return Noise({k: dict.fromkeys(keys, sigma) for k in kinds}, {k: dict.fromkeys(keys, dof) for k in kinds},
                 "test", None)  # fmt: skip


def test_the_distributions_match_their_tables() -> None:
    assert t_ppf(0.995, 2) == pytest.approx(9.925, abs=1e-3)
    assert t_ppf(0.995, 10) == pytest.approx(3.169, abs=1e-3)
    assert t_ppf(0.9, 5) == pytest.approx(1.476, abs=1e-3)
    assert f_ppf(0.999, 2, 10) == pytest.approx(14.91, abs=0.01)
    assert clopper_pearson(0, 6)[1] == pytest.approx(0.4593, abs=1e-4)
    assert clopper_pearson(2, 2)[0] == pytest.approx(0.1581, abs=1e-4)
    low, high = clopper_pearson(5, 10)
    assert (low, high) == (pytest.approx(0.1871, abs=1e-4), pytest.approx(0.8129, abs=1e-4))


def test_a_slowdown_beyond_noise_and_minimum_effect_is_flagged_with_t() -> None:
    base = [1.000, 1.004, 0.997]
    judged = judge_times(base, [1.05 * x for x in base], 0.004, 10)
    assert judged is not None
    assert judged.ratio == pytest.approx(1.05)
    assert judged.low > 1.01
    assert judged.dof == 14, "the calibration's 10 and the run's 4"
    small = judge_times(base, [1.005 * x for x in base], 0.004, 10)
    assert small is not None
    assert small.low < 1.01


def test_without_calibration_two_processes_a_side_are_judged_with_t_on_2_degrees() -> None:
    """z would flag this 3% slowdown (2.576 × se); t with 2 degrees of freedom (9.92) does not."""
    base, head = [1.0, 1.008], [1.03, 1.038]
    judged = judge_times(base, head, None, 0)
    assert judged is not None
    assert judged.dof == 2
    assert math.log(judged.ratio) - 2.576 * judged.se > math.log(1.01), "z would have called it slower"
    assert judged.low < 1.0 < judged.ratio
    assert judge_times([1.0], [1.5], None, 0) is None, "one process a side, no calibration: no spread at all"


def test_a_run_noisier_than_its_calibration_is_inconclusive_never_slower() -> None:
    base, head = [1.0, 1.3, 0.75], [1.4, 1.9, 1.1]
    judged = judge_times(base, head, 0.002, 10)
    assert judged is not None
    assert judged.stale
    noise = calibrated(0.002, SPEC.key)
    verdict = decide([process(record(SPEC, x)) for x in base], [process(record(SPEC, x)) for x in head], noise)
    (point,) = [p for p in verdict.points if p.kind == "direct"]
    assert point.outcome == INCONCLUSIVE
    assert "beyond the calibration" in point.reason
    assert not verdict.failed


def test_decide_reports_both_timings_memory_first_call_holes_and_new() -> None:
    noise = calibrated(0.003, SPEC.key, OTHER.key)
    new = PointSpec("xformers", "causal", 8192, 128, "bfloat16", FORWARD, device="cuda", heads=16)
    cuda = {"peak_kind": "cuda-allocated"}
    base = [process(record(SPEC, 1.0 + d, replay_median_s=0.5 + d, peak_bytes=100 << 20, first_call_s=1.0, **cuda),
                    record(OTHER, 2.0 + d, peak_bytes=50 << 20, **cuda)) for d in (0, 0.002, -0.002)]  # fmt: skip
    head = [process(record(SPEC, 1.05 + d, replay_median_s=0.5 + d, peak_bytes=110 << 20, first_call_s=4.0, **cuda),
                    record(OTHER, 2.0, Status.UNSUPPORTED, reason="xformers not importable: boom"),
                    record(new, 1.0)) for d in (0, 0.002, -0.002)]  # fmt: skip
    verdict = decide(base, head, noise)
    outcomes = {(p.key, p.kind): p.outcome for p in verdict.points}
    assert outcomes[(SPEC.key, "direct")] == REGRESSION, "host work added to the call: the direct timing sees it"
    assert outcomes[(SPEC.key, "replay")] == SAME, "the device's work is unchanged"
    assert outcomes[(SPEC.key, "memory")] == REGRESSION
    assert outcomes[(SPEC.key, "first_call")] == SLOWER_FIRST_CALL
    assert outcomes[(OTHER.key, "direct")] == HOLE
    assert outcomes[(new.key, "direct")] == NEW
    (hole,) = verdict.where(HOLE)
    assert hole.reason == "unsupported on head: xformers not importable: boom"
    assert verdict.failed
    assert decide(base, head, noise, allow_grid_change=True).where(HOLE) == []
    faster = decide([process(record(SPEC, 1.0 + d)) for d in (0, 0.001, 0.002)],
                    [process(record(SPEC, 0.9 + d)) for d in (0, 0.001, 0.002)], noise)  # fmt: skip
    assert [p.outcome for p in faster.points if p.kind == "direct"] == [IMPROVEMENT]
    assert not faster.failed


def test_backward_and_decode_memory_gate_on_cuda_only() -> None:
    step = PointSpec("sdpa-cudnn", "causal", 2048, 128, "bfloat16", BACKWARD, device="cuda", heads=16)
    cpu = PointSpec("eager", "causal", 256, 64, "float32", FORWARD, device="cpu", heads=8)
    noise = calibrated(0.01, step.key, DECODE_SPEC.key, cpu.key)
    base = [process(record(step, 1.0, peak_bytes=100 << 20, peak_kind="cuda-allocated"),
                    record(DECODE_SPEC, 1e-5, peak_bytes=10 << 20, peak_kind="cuda-allocated"),
                    record(cpu, 1.0, peak_bytes=1 << 20, peak_kind="cpu-rss-growth")) for _ in range(2)]  # fmt: skip
    head = [process(record(step, 1.0, peak_bytes=200 << 20, peak_kind="cuda-allocated"),
                    record(DECODE_SPEC, 1e-5, peak_bytes=20 << 20, peak_kind="cuda-allocated"),
                    record(cpu, 1.0, peak_bytes=100 << 20, peak_kind="cpu-rss-growth")) for _ in range(2)]  # fmt: skip
    memory = {p.key: p.outcome for p in decide(base, head, noise).points if p.kind == "memory"}
    assert memory == {step.key: REGRESSION, DECODE_SPEC.key: REGRESSION}, "RSS growth does not gate"


def test_an_uncalibrated_verdict_is_advisory_and_fails_only_on_holes() -> None:
    base = [process(record(SPEC, 1.0 + d), record(OTHER, 1.0)) for d in (0, 0.001, 0.002)]
    head = [process(record(SPEC, 3.0 + d), record(OTHER, 1.0)) for d in (0, 0.001, 0.002)]
    verdict = decide(base, head, Noise(why_uncalibrated="no calibration for machine m"))
    assert verdict.advisory == "advisory: uncalibrated (no calibration for machine m)"
    assert verdict.where(REGRESSION), "the slowdown is still reported"
    assert not verdict.failed
    holes = decide(base, [process(record(SPEC, 1.0)) for _ in range(3)], Noise())
    assert holes.where(HOLE)
    assert holes.failed


def test_a_missing_head_point_is_a_hole_and_crashed_processes_count_against_it() -> None:
    verdict = decide([process(record(SPEC, 1.0))] * 2, [process()] * 2, Noise())
    (hole,) = verdict.where(HOLE)
    assert hole.reason.startswith("missing on head")
    base = [process(record(SPEC, 1.0 + d)) for d in (0, 0.001, 0.002)]
    head = [process(record(SPEC, 1.0)), process(), process()]
    (hole,) = decide(base, head, Noise()).where(HOLE)
    assert hole.reason == "missing in 2 of 3 head processes (they ended before it)"


def test_the_guarded_slowdown_is_caught_nine_times_in_ten() -> None:
    """Simulated checks (lognormal per-process noise of σ, the calibration knowing σ) slowed by exactly
    the guarded slowdown are flagged by the first pass and the confirmation in about 90% of them."""
    rng = random.Random(7)
    sigma, processes, confirm = 0.005, 2, 2
    noise = calibrated(sigma, SPEC.key)
    guard = guarded_slowdown(sigma, 10 + 2 * processes - 2, processes, processes, confirm, 0.01)
    assert 0.01 < guard < 0.05
    assert guarded_slowdown(2 * sigma, 12, 2, 2, 2, 0.01) > guard, "more noise, a larger guarded slowdown"

    def side(n: int, factor: float) -> list[ResultFile]:
        return [process(record(SPEC, factor * math.exp(rng.gauss(0, sigma)))) for _ in range(n)]

    caught = 0
    for _ in range(400):
        first = decide(side(processes, 1.0), side(processes, 1 + guard), noise)
        if any(p.outcome == REGRESSION for p in first.points):
            again = decide(side(confirm, 1.0), side(confirm, 1 + guard), noise)
            caught += any(p.outcome == REGRESSION for p in again.points)
    assert 0.82 <= caught / 400 <= 0.97


def test_a_calibration_counts_only_on_its_machine_and_while_fresh(tmp_path: Path) -> None:
    data = {"schema": 2, "machine": "h200-a", "created_unix": time.time(), "sigma": {"direct": {SPEC.key: 0.01}},
            "dof": {"direct": {SPEC.key: 6}}}  # fmt: skip
    path = write_json(tmp_path / "n.json", data)
    noise = Noise.load(path, machine="h200-a")
    assert noise.calibrated
    assert noise.of("direct", SPEC.key) == (0.01, 6)
    assert noise.of("replay", SPEC.key) == (None, 0)
    other = Noise.load(path, machine="h200-b")
    assert not other.calibrated
    assert "calibrated on machine 'h200-a', this is 'h200-b'" in (other.why_uncalibrated or "")
    old = write_json(tmp_path / "old.json", data | {"created_unix": time.time() - 40 * 86400})
    assert "40 days old" in (Noise.load(old, machine="h200-a").why_uncalibrated or "")
    # Measured by other sampling code, or by code it does not name: not this code's spread.
    coded = write_json(tmp_path / "coded.json", data | {"measuring_code": "c1"})
    assert Noise.load(coded, machine="h200-a", code="c1").calibrated
    stale = Noise.load(coded, machine="h200-a", code="c2")
    assert not stale.calibrated
    assert "measured by other measuring code (c1, this is c2: attnperf/batch.py" in (stale.why_uncalibrated or "")
    unnamed = Noise.load(path, machine="h200-a", code="c2").why_uncalibrated or ""
    assert "other measuring code (not recorded, this is c2" in unnamed
    for bad, message in (({"sigma": 3}, "not a noise calibration"),
                         ({"schema": 2, "sigma": {"direct": {"k": -1}}}, "must be a finite number >= 0")):  # fmt: skip
        with pytest.raises(UsageError, match=message):
            Noise.load(write_json(tmp_path / "bad.json", bad), machine="m")
    (tmp_path / "cut.json").write_text('{"sigma": {')
    with pytest.raises(UsageError, match=r"--noise .*cut.json: is not valid JSON"):
        Noise.load(tmp_path / "cut.json", machine="m")


def test_calibrate_pools_within_gpu_code_state_and_label() -> None:
    rng = random.Random(3)
    runs = [process(record(SPEC, math.exp(rng.gauss(0, 0.01)), replay_median_s=math.exp(rng.gauss(0, 0.002))),
                    label=f"trial-{i:03d}-{'AB'[i % 2]}", gpu=f"gpu-{i % 3}", fingerprint="f")
            for i in range(60)]  # fmt: skip
    sigma, dof = calibrate(runs, group=label_of)
    assert sigma["direct"][SPEC.key] == pytest.approx(0.01, rel=0.3)
    assert sigma["replay"][SPEC.key] == pytest.approx(0.002, rel=0.3)
    assert dof["direct"][SPEC.key] == 60 - 6, "six groups (3 GPUs × 2 labels), one degree each"


def synthetic_pool(n: int, sigma: float, slow: float, seed: int = 1) -> list[ResultFile]:
    """``n`` A and ``n`` B processes (A B B A …) of one point with lognormal per-process noise; the B
    processes also measured it slowed by ``slow`` (a spin) and by a host delay that the replay does not see."""
    rng = random.Random(seed)
    runs = []
    for i in range(2 * n):
        label = "AB"[(i + (i // 2) % 2) % 2]
        direct, replay = math.exp(rng.gauss(0, sigma)), 0.5 * math.exp(rng.gauss(0, sigma))
        injected = []
        if label == "B":
            injected = [Record(SPEC, Status.OK, median_s=direct * slow, replay_median_s=replay * slow,
                               injection={"kind": "spin", "level": round(100 * (slow - 1), 6)}),
                        Record(SPEC, Status.OK, median_s=direct * slow, replay_median_s=replay * 1.3,
                               injection={"kind": "host", "level": 20.0})]  # fmt: skip
        meta = {"label": f"trial-{i + 1:03d}-{label}", "fingerprint": "f", "gpu": "g", "started_unix": 1e9 + i}
        runs.append(ResultFile(None, meta,
                               [record(SPEC, direct, replay_median_s=replay)], injected))  # fmt: skip
    return runs


def test_disjoint_trials_never_share_a_process_and_confirm_only_when_flagged() -> None:
    runs = synthetic_pool(12, 0.004, 1.1)
    for flag, count in ((True, 3), (False, 6)):
        used: list[ResultFile] = []

        def check(first, spare, flag: bool = flag, used: list[ResultFile] = used) -> Trial:
            used.extend(r for side in (*first, *(spare if flag else ((), ()))) for r in side)
            assert {label_of(r) for r in (*first[0], *spare[0])} == {"A"}
            assert {label_of(r) for r in (*first[1], *spare[1])} == {"B"}
            return Trial(frozenset({("k", "direct")}) if flag else frozenset(), frozenset(), confirmed=flag)

        trials = disjoint_trials(runs, processes=2, confirm=2, check=check)
        assert len(trials) == count, "12 processes a label: 4 a label a confirmed trial, 2 an unflagged one"
        assert len({id(r) for r in used}) == len(used) == 24, "every process serves one trial"


def test_a_trial_flagged_without_processes_left_to_confirm_counts_against_the_check() -> None:
    from attnperf.trials import one_trial

    runs = synthetic_pool(2, 0.004, 1.5)
    a = [r for r in runs if label_of(r) == "A"]
    b = [r for r in runs if label_of(r) == "B"]
    noise = calibrated(0.004, SPEC.key)
    spin = one_trial((a, b), ([], []), noise, ("spin", 50.0), 0.01, confirm=2)
    assert spin.unresolved
    assert not spin.flagged, "an injected trial that could not confirm catches nothing"
    slowed = [as_head(r, "spin", 50.0) for r in b]
    aa = one_trial((a, slowed), ([], []), noise, None, 0.01, confirm=2)
    assert aa.unresolved
    assert aa.flagged, "an A/A trial that could not confirm keeps its first-pass flags"
    assert not one_trial((a, slowed), ([], []), noise, None, 0.01, confirm=0).unresolved


def test_a_trial_is_judged_without_its_first_pass_and_its_spare_processes() -> None:
    """The held-out calibration leaves out the confirmation's processes too, and a confirmation reads
    ``confirm`` processes a side."""
    from attnperf.trials import rows_for

    runs = synthetic_pool(8, 0.004, 1.1)
    seen: list[int] = []

    def judge(own):
        seen.append(len(own))
        return calibrated(0.004, SPEC.key)

    rows = rows_for(runs, judge, 2, 2, 0.01)
    aa = rows[0]
    assert aa["trials"] == 4, "8 a label, nothing flagged: 2 a label a trial"
    assert seen[: aa["trials"]] == [8, 8, 8, 4], "first pass and spare, 2 + 2 a side; the last has no spare"


def test_a_confirmation_reads_confirm_processes_a_side_and_decides_every_timing_of_a_flagged_benchmark(
    monkeypatch,
) -> None:
    """As the check does: the first pass flags the direct call, the confirmation finds the replay slow
    and the direct call not, and the trial is flagged by the replay."""
    import attnperf.trials as trials_module
    from attnperf.trials import one_trial

    sides = []
    real = trials_module.decide

    def decide(base, head, noise, **options):
        sides.append((len(base), len(head)))
        return real(base, head, noise, **options)

    monkeypatch.setattr(trials_module, "decide", decide)

    def runs(direct: float, replay: float, n: int) -> list[ResultFile]:
        return [process(record(SPEC, direct, replay_median_s=replay)) for _ in range(n)]

    noise = calibrated(0.004, SPEC.key)
    first = (runs(1.0, 1.0, 2), runs(1.5, 1.0, 2))
    spare = (runs(1.0, 1.0, 3), runs(1.0, 1.5, 3))
    trial = one_trial(first, spare, noise, None, 0.01, confirm=2)
    assert sides == [(2, 2), (2, 2)]
    assert trial.confirmed
    assert trial.flagged == {(SPEC.key, "replay")}


def test_pools_added_in_any_order_split_into_the_same_trials() -> None:
    runs = synthetic_pool(12, 0.02, 1.05, seed=3)
    forward = evaluate(runs, noise=None, processes=2, confirm=2)
    assert evaluate(list(reversed(runs)), noise=None, processes=2, confirm=2) == forward


def test_an_unresolved_injected_trial_counts_as_a_miss_in_every_count() -> None:
    table = evaluate(synthetic_pool(6, 0.004, 1.1), noise=None, processes=2, confirm=2)
    spin = {row["injection"]: row for row in table["rows"]}["spin 10"]
    assert (spin["trials"], spin["flagged"], spin["unresolved"]) == (2, 1, 1)
    assert spin["by_kind"]["forward direct"] == {"flagged": 1, "benchmark_trials": 2, "rate": 0.5}


def test_trials_count_disjoint_checks_per_benchmark_and_kind_held_out() -> None:
    runs = synthetic_pool(24, 0.004, 1.10)
    table = evaluate(runs, noise=None, processes=2, confirm=2)
    rows = {row["injection"]: row for row in table["rows"]}
    aa = rows["A/A"]
    assert aa["trials"] == 12, "24 processes a label, 2 a label a trial that flags nothing (no confirmation)"
    assert aa["flagged"] == aa["confirmed"] == aa["unresolved"] == 0
    assert aa["ci95"][1] == pytest.approx(clopper_pearson(0, 12)[1], abs=1e-4)
    spin = rows["spin 10"]
    assert spin["flagged"] == spin["trials"] == spin["confirmed"] == 6, "each flagged trial takes 2 + 2 a label"
    assert {b["kind"] for b in spin["benchmarks"]} == {"forward direct", "forward replay"}
    assert all(b["measured_pct"] == pytest.approx(10.0, abs=0.01) for b in spin["benchmarks"])
    host = rows["host 20"]
    assert {b["timing"] for b in host["benchmarks"]} == {"direct"}, "a host delay is not looked for in the replay"
    assert host["by_kind"]["forward direct"]["flagged"] == 6
    points = table["aa_points"]
    assert points["comparisons"] == 12 * 2  # 12 disjoint first-pass pairs of two processes a side × two timings
    assert points["nominal_rate"] == pytest.approx(0.01)


def test_as_head_swaps_in_one_injection_and_a_host_delay_leaves_the_replay_plain() -> None:
    (run,) = [r for r in synthetic_pool(2, 0.001, 1.2) if label_of(r) == "B"][:1]
    spun = as_head(run, "spin", 20.0).records[0]
    host = as_head(run, "host", 20.0).records[0]
    plain = run.records[0]
    assert spun.median_s == pytest.approx(plain.median_s * 1.2)
    assert spun.replay_median_s == pytest.approx(plain.replay_median_s * 1.2)
    assert host.median_s == pytest.approx(plain.median_s * 1.2)
    assert host.replay_median_s == plain.replay_median_s
    assert as_head(run, "spin", 5.0).records[0] == plain, "another level: nothing swapped"


def test_the_judge_reads_the_runners_or_the_bases_calibration_never_the_heads(tmp_path: Path, monkeypatch) -> None:
    from attnperf.prcheck import judge_noise

    base = tmp_path / "base"
    (base / "attnperf").mkdir(parents=True)
    (base / "attnperf" / "measure.py").write_text("# the base's sampling\n")
    data = {"schema": 2, "machine": "m", "created_unix": time.time(), "sigma": {"direct": {SPEC.key: 0.01}},
            "measuring_code": measuring_code(base)}  # fmt: skip
    write_json(base / "benchmarks" / "noise" / "m.json", data)
    monkeypatch.delenv("ATTNPERF_NOISE", raising=False)
    assert judge_noise(None, base, "m").source == str(base / "benchmarks" / "noise" / "m.json")
    assert judge_noise(None, base, "m").calibrated
    (base / "attnperf" / "measure.py").write_text("# the base's sampling, changed since the calibration\n")
    stale = judge_noise(None, base, "m")
    assert not stale.calibrated, "a calibration taken by other measuring code than the base's does not count"
    assert "measured by other measuring code" in (stale.why_uncalibrated or "")
    data["measuring_code"] = measuring_code(base)
    write_json(base / "benchmarks" / "noise" / "m.json", data)
    assert not judge_noise(None, tmp_path / "head-only", "m").calibrated, "nothing in base: uncalibrated"
    runner = tmp_path / "runner"
    monkeypatch.setenv("ATTNPERF_NOISE", str(runner))
    missing = judge_noise(None, base, "m")
    assert not missing.calibrated, "the runner's folder wins over the base, and it has no file for m"
    assert f"ATTNPERF_NOISE: no {runner / 'm.json'}" in (missing.why_uncalibrated or "")
    write_json(runner / "m.json", data)
    assert judge_noise(None, base, "m").source == str(runner / "m.json")
    given = write_json(tmp_path / "given.json", data)
    assert judge_noise(given, base, "m").source == str(given), "--noise wins"


def test_the_next_pair_is_expected_to_take_the_longest_later_a_and_the_longest_later_b() -> None:
    """A pool stops before a pair that would end past its budget: a pair is one A and one B (which
    also measures the injections), the first process compiled for everyone and is left out."""
    from attnperf.trials import next_pair_s

    walls = [("A", 368.0), ("B", 115.0), ("B", 109.0), ("A", 67.0), ("A", 68.0), ("B", 100.0)]
    runs = [process(label=f"trial-{i + 1:03d}-{label}", wall_s=wall) for i, (label, wall) in enumerate(walls)]
    assert next_pair_s(runs) == 68.0 + 115.0
    assert next_pair_s(runs[:2]) == 115.0 + 115.0, "no later A yet: the longest later process stands in"
    assert next_pair_s(runs[:1]) == 2 * 368.0
