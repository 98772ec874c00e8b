"""Crossovers: the pure function on synthetic power laws, and the pairing with dense references."""

from __future__ import annotations

import math

import pytest

from attnperf.reports.crossover import HORIZON, Point, crossover, crossovers, lines, reference_of

LENGTHS = [256, 512, 1024, 2048, 4096]


def series(fn, lengths=LENGTHS):
    return [(n, fn(n)) for n in lengths]


def test_a_bracketed_crossing_is_interpolated_log_log_between_its_two_lengths() -> None:
    # c·n against n²: the ratio c/n is a power law, so log-log interpolation finds n = c exactly
    got = crossover(series(lambda n: 3000.0 * n), series(lambda n: float(n * n)))
    assert got.how == "measured"
    assert got.lengths == (2048, 4096)
    assert got.length == pytest.approx(3000, rel=1e-9)
    assert got.describe("faster") == "faster from n ≈ 3,000 (measured, between 2048 and 4096)"


def test_predicted_series_say_predicted() -> None:
    got = crossover(series(lambda n: 3000.0 * n), series(lambda n: float(n * n)), predicted=True)
    assert got.how == "predicted"
    assert "(predicted, between 2048 and 4096)" in got.describe("faster")


def test_noise_below_the_crossing_does_not_move_it_the_last_sign_change_counts() -> None:
    eff = {256: 0.9, 512: 1.1, 1024: 0.8, 2048: 0.5}  # faster at 256 by chance, slower at 512, then for good
    got = crossover(list(eff.items()), [(n, 1.0) for n in eff])
    assert got.how == "measured"
    assert got.lengths == (512, 1024)
    assert 512 < got.length < 1024


def test_beyond_the_grid_the_fitted_power_laws_give_the_crossing() -> None:
    got = crossover(series(lambda n: 5000.0 * n, [256, 512, 1024]), series(lambda n: float(n * n), [256, 512, 1024]))
    assert got.how == "extrapolated"
    assert got.length == pytest.approx(5000, rel=1e-9)
    assert got.lengths == (512, 1024), "fitted over the longer half"
    assert got.exponents == pytest.approx((1.0, 2.0))
    assert got.describe("less memory") == "less memory from n ≈ 5,000 (extrapolated from 512–1024: n^1.00 vs n^2.00)"


def test_extrapolation_starts_from_the_measured_gap_at_the_longest_length() -> None:
    # the short lengths flatten the efficient slope (a fixed cost); the tail's slopes (1 vs 2) and the gap
    # at 2048 (ratio 4) put the crossing at 4 · 2048
    eff = {256: 4.0 * 2048 * 2048, 512: 4.0 * 2048 * 2048, 1024: 4.0 * 1024 * 2048, 2048: 4.0 * 2048 * 2048}
    got = crossover(list(eff.items()), [(n, float(n * n)) for n in eff])
    assert got.how == "extrapolated"
    assert got.length == pytest.approx(4 * 2048, rel=1e-9)


def test_faster_at_every_length_is_always() -> None:
    got = crossover(series(lambda n: 0.5 * n * n), series(lambda n: float(n * n)))
    assert (got.how, got.length, got.lengths) == ("always", None, (256, 4096))
    assert got.describe("faster") == "faster at every length compared (256–4096)"


def test_a_steeper_or_parallel_efficient_curve_never_crosses() -> None:
    steeper = crossover(series(lambda n: 2.0 * n**2.1), series(lambda n: float(n * n)))
    assert (steeper.how, steeper.length, steeper.within) == ("never", None, None)
    assert steeper.exponents == pytest.approx((2.1, 2.0))
    assert steeper.describe("faster") == (
        "never faster within the grid (exponent 2.10 ≥ the reference's 2.00, fitted 1024–4096)"
    )
    parallel = crossover(series(lambda n: 1.5 * n * n), series(lambda n: float(n * n)))
    assert parallel.how == "never"
    assert parallel.exponents is not None
    assert math.isclose(*parallel.exponents)


def test_fits_that_cross_only_far_beyond_the_grid_are_never_within_the_horizon() -> None:
    # 10·n^1.99 against n²: the fits meet at n = 10^100
    got = crossover(series(lambda n: 10.0 * n**1.99), series(lambda n: float(n * n)))
    assert (got.how, got.within) == ("never", HORIZON * 4096)
    assert f"never faster within n ≤ {HORIZON * 4096:,}" in got.describe("faster")
    assert "; " not in got.describe("faster"), "'; ' separates a line's time and memory phrases only"


def test_the_same_series_is_never_and_says_so() -> None:
    same = series(lambda n: float(n * n))
    got = crossover(same, same)
    assert got.how == "never"
    assert got.describe("less memory") == "never less memory: the same as the reference at every length (256–4096)"


@pytest.mark.parametrize(
    ("efficient", "reference", "common"),
    [
        ([(1024, 1.0)], [(1024, 2.0)], "1024"),  # one length
        ([(512, 1.0), (1024, 1.0)], [(1024, 2.0), (2048, 2.0)], "1024"),  # one length in common
        ([(512, 0.0), (1024, None)], [(512, 1.0), (1024, 2.0)], "none"),  # no positive value: no power law
    ],
)
def test_fewer_than_two_common_lengths_are_unknown(efficient, reference, common) -> None:
    got = crossover(efficient, reference)
    assert (got.how, got.length) == ("unknown", None)
    assert got.why == f"fewer than 2 lengths with a positive value in both (common: {common})"
    assert got.describe("faster").startswith("faster: unknown (fewer than 2 lengths")


def test_each_efficient_variant_is_held_against_dense_attention_of_its_causality() -> None:
    assert {v: reference_of(v) for v in ("sliding_window", "strided", "fixed", "linear_causal")} == dict.fromkeys(
        ("sliding_window", "strided", "fixed", "linear_causal"), "causal"
    )
    assert {v: reference_of(v) for v in ("local", "topk", "linear", "bigbird", "bigbird_tokens")} == dict.fromkeys(
        ("local", "topk", "linear", "bigbird", "bigbird_tokens"), "full"
    )
    for dense in ("full", "causal", "cross", "gqa", "alibi", "rope", "decode"):
        assert reference_of(dense) is None


def _points(variant, backend, time, peak, lengths=(256, 512, 1024, 2048), batch=1):
    return [Point(variant, backend, batch, n, time(n), peak(n)) for n in lengths]


def test_crossovers_pair_the_same_backend_and_name_another_pair() -> None:
    points = [
        *_points("causal", "tiled", lambda n: n * n / 2, lambda n: 4.0 * n),
        *_points("causal", "sdpa", lambda n: n * n / 8, lambda n: 1.0 * n * n),
        *_points("sliding_window", "tiled", lambda n: 600.0 * n, lambda n: 4.0 * n),
        *_points("linear", "fla", lambda n: 100.0 * n, lambda n: 2.0 * n),  # its reference (full) not measured
        *_points("linear_causal", "fla", lambda n: 100.0 * n, lambda n: 2.0 * n),  # causal ran on tiled and sdpa
    ]
    found = {(c.variant, c.backend): c for c in crossovers(points)}
    assert set(found) == {("sliding_window", "tiled"), ("linear", "fla"), ("linear_causal", "fla")}
    window = found["sliding_window", "tiled"]
    assert (window.reference, window.reference_backend, window.source) == ("causal", "tiled", "measured")
    assert window.time.how == "measured"
    assert window.time.length == pytest.approx(1200)
    assert window.memory.how == "never"
    assert window.memory.why
    other = found["linear_causal", "fla"]
    assert other.reference_backend == "sdpa", "the reference's fastest backend at its longest length"
    assert other.line().startswith("crossover linear_causal vs causal (linear_causal on fla, causal on sdpa): faster")
    missing = found["linear", "fla"]
    assert missing.reference_backend == ""
    assert missing.line() == "crossover linear vs full (fla): full not measured at batch 1; add it to --variants"
    printed = lines(list(found.values()))
    assert printed[:2] == ["", printed[1]]
    assert printed[1].startswith("crossovers against dense attention")
    assert len(printed) == 2 + 3
    assert "batch" not in printed[2], "one batch: not named"
    assert lines([]) == []
