"""The correctness harness itself: it must catch wrong results, NaN and refusals."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from attnperf.backends import BACKENDS as BACKENDS_UNDER_TEST
from attnperf.backends import Unsupported
from attnperf.backends.eager import Eager
from attnperf.case import Case
from attnperf.correctness import WrongResult, check, relative_error, verified_runner


class Perturbed(Eager):
    """Eager with a deliberate 1% error: the harness must call it wrong."""

    name = "perturbed"

    def prepare(self, mechanism, case, q, k, v):
        run = super().prepare(mechanism, case, q, k, v)
        return lambda: run() * 1.01


class NaNs(Eager):
    name = "nans"
    # A bound so loose nothing finite could fail it: NaN must fail anyway.
    tolerance: ClassVar[dict[str, float]] = {"float32": 1e9}

    def prepare(self, mechanism, case, q, k, v):
        run = super().prepare(mechanism, case, q, k, v)
        return lambda: run().index_fill(2, torch.tensor([0], device=q.device), float("nan"))


class Refuses(Eager):
    name = "refuses"
    unsupported_errors = ("No available kernel",)

    def prepare(self, mechanism, case, q, k, v):
        def run():
            raise RuntimeError("No available kernel. Aborting execution.")

        return run


CASE = Case(heads=2, q_len=9, head_dim=8, causal=True)


def test_relative_error_is_inf_for_nan_and_zero_for_equal() -> None:
    ref = torch.randn(3, 4, dtype=torch.float64)
    assert relative_error(ref.float(), ref) < 1e-6
    assert relative_error(torch.full((3, 4), float("nan")), ref) == float("inf")
    with pytest.raises(WrongResult, match="shape"):
        relative_error(torch.zeros(4, 3), ref)


def test_a_wrong_backend_is_reported_wrong_and_never_timed() -> None:
    result = check("full", Perturbed(), CASE, seed=1)
    assert result.status == "wrong"
    assert result.error == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(WrongResult, match=r"perturbed on full .*relative error 0.01 > bound 1e-05") as raised:
        verified_runner("full", Perturbed(), CASE)
    seed = int(str(raised.value).rsplit("seed ", 1)[1].rstrip(")"))  # the message names its inputs' seed
    assert check("full", Perturbed(), CASE, seed=seed).error == pytest.approx(result.error, rel=1e-2)


def test_nan_never_passes_whatever_the_bound() -> None:
    assert check("full", NaNs(), CASE, seed=2).status == "wrong"


def test_run_time_refusals_become_unsupported_with_the_library_text() -> None:
    result = check("full", Refuses(), CASE, seed=3)
    assert result.status == "unsupported"
    assert result.reason == "No available kernel. Aborting execution."
    with pytest.raises(Unsupported, match="No available kernel"):
        verified_runner("full", Refuses(), CASE)


def test_declared_limits_are_all_reported() -> None:
    result = check("linear", "sdpa-efficient", Case(dtype="float64", device="cuda"))
    assert result.status == "unsupported"
    assert "sdpa-efficient does not implement linear" in result.reason
    assert "dtype float64 unsupported (accepts float32, bfloat16, float16)" in result.reason


def test_verified_runner_returns_the_checked_closure() -> None:
    run, result = verified_runner("window", "tiled", Case(heads=2, q_len=40, head_dim=8, window=7))
    assert result.ok
    assert run().shape == (1, 2, 40, 8)


def test_long_cases_are_checked_on_sampled_rows(monkeypatch) -> None:
    import attnperf.correctness as check_module

    monkeypatch.setattr(check_module, "FULL_CHECK_LIMIT", 1000)  # force sampling on a small case
    case = Case(heads=2, q_len=300, head_dim=8, window=9, causal=True)
    rows = check_module.sample_rows(case, seed=5)
    assert rows is not None
    assert len(rows) == 64
    assert rows[0] == 0
    assert rows[-1] == 299
    assert check("window", "tiled", case, seed=5).ok
    assert check("full", Perturbed(), case.replace(window=None), seed=5).status == "wrong"
    assert check("rope", "eager", case.replace(window=None), seed=5).ok
    assert check("linear", "tiled", case.replace(window=None), seed=5).ok
    assert check("topk", "tiled", case.replace(window=None, top_k=5), seed=5).ok


@pytest.mark.parametrize("backend", ["eager", "tiled"])
@pytest.mark.parametrize("variant", ["causal", "sliding_window", "linear_causal", "linear", "topk"])
def test_backward_runs_and_matches_eager_gradients(backend, variant) -> None:
    """What asv's TimeForwardBackward times must be a correct backward, not only a forward."""
    from attnperf.case import make_inputs
    from attnperf.catalog import VARIANTS
    from attnperf.mechanisms import get_mechanism

    var = VARIANTS[variant]
    case = var.case(150, heads=4, head_dim=8, dtype="float64", window=9, top_k=5)
    mech = get_mechanism(var.mechanism)
    grads = []
    for name in ("eager", backend):
        q, k, v = make_inputs(case, requires_grad=True)
        out = BACKENDS_UNDER_TEST[name].prepare(mech, case, q, k, v)()
        out.backward(torch.ones_like(out))
        grads.append([t.grad for t in (q, k, v)])
    for ref, got in zip(*grads, strict=True):
        assert torch.allclose(got, ref, atol=1e-9)
