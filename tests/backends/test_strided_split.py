"""The strided split (attnperf/backends/strided_split.py) against the float64 reference of the
``strided`` mechanism, with a float64 stand-in for flash-attn-4's (out, lse) kernel: the regrouping
by residue, the shift that leaves i − j = 0 to the band, the padding and the merge are all here on
the CPU; the kernel itself is checked on a GPU like every backend."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from attnperf.backends.strided_split import split_pairs, strided_attention
from attnperf.case import Case, make_inputs
from attnperf.correctness import relative_error
from attnperf.mechanisms import get_mechanism

from ..conftest import SEED


def stand_in(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
    window_size: tuple[int, int] | None = None, softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """flash-attn's contract on ``[B, T, H, D]``: bottom-right causal, inclusive window, lse ``[B, H, T]``."""
    assert causal
    qh, kh, vh = (t.transpose(1, 2).double() for t in (q, k, v))
    kh, vh = (t.repeat_interleave(qh.shape[1] // t.shape[1], dim=1) for t in (kh, vh))
    scores = qh @ kh.transpose(-1, -2) * softmax_scale
    i = torch.arange(q.shape[1])[:, None] + k.shape[1] - q.shape[1]
    j = torch.arange(k.shape[1])[None, :]
    allowed = j <= i
    if window_size is not None:
        allowed &= j >= i - window_size[0]
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return (torch.softmax(scores, dim=-1) @ vh).transpose(1, 2).to(q.dtype), lse.float()


@pytest.mark.parametrize(
    ("n", "stride", "kv_heads"),
    [(64, 8, 4), (67, 8, 2), (50, 7, 1), (9, 8, 4), (5, 8, 4), (40, 1, 4), (33, 2, 2)],
)
def test_the_split_is_the_strided_pattern(n: int, stride: int, kv_heads: int) -> None:
    case = Case(heads=4, kv_heads=kv_heads, q_len=n, kv_len=n, head_dim=16, dtype="float32", causal=True, stride=stride)
    q, k, v = make_inputs(case, seed=SEED)
    want = get_mechanism("strided").reference(q, k, v, case)
    got = strided_attention(*(t.transpose(1, 2) for t in (q, k, v)), stride, stand_in, softmax_scale=case.scale)
    assert relative_error(got.transpose(1, 2), want) < 1e-6, f"seed {SEED}"


def test_a_band_only_split_makes_one_call() -> None:
    calls: list[dict[str, Any]] = []

    def counting(*args: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(kwargs)
        return stand_in(*args, **kwargs)

    q = torch.randn(1, 6, 2, 8)
    strided_attention(q, q, q, 8, counting, softmax_scale=0.3)
    assert calls == [{"causal": True, "window_size": (7, 0), "softmax_scale": 0.3}]


def test_the_split_visits_what_its_two_calls_multiply() -> None:
    # n 256, s 16, tiles of 128: the band touches 2 + 1·... tiles; groups of m − 1 = 15 tokens are one tile each.
    band = 128 * 128 + 128 * 256  # first query tile: keys 0..127; second: the tile before it too
    groups = 16 * 15 * 15
    assert split_pairs(256, 16, 128) == band + groups
    assert split_pairs(100, 200, 128) == 100 * 100  # m = 1: the band alone


def test_flash_attn4_runs_strided_through_the_split() -> None:
    """The backend's layout (``[B, H, T, D]`` in and out, ``[B, T, H, D]`` to the kernel) and its
    ``return_lse`` request, with the stand-in in place of the library."""
    from attnperf.backends.flash_attn import FlashAttn4

    backend = FlashAttn4()

    def library(*tensors: torch.Tensor, return_lse: bool, **mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        assert return_lse
        return stand_in(*tensors, **mask)

    backend.load = lambda: setattr(backend, "fn", library)
    case = Case(heads=4, kv_heads=2, q_len=70, kv_len=70, head_dim=16, dtype="float32", causal=True, stride=8)
    q, k, v = make_inputs(case, seed=SEED)
    mech = get_mechanism("strided")
    got = backend.prepare(mech, case, q, k, v)()
    assert relative_error(got, mech.reference(q, k, v, case)) < 1e-6, f"seed {SEED}"
    cross = Case(heads=4, q_len=7, kv_len=70, head_dim=16, dtype="bfloat16", causal=True, stride=8)
    assert "the strided split needs q_len == kv_len (got 7 and 70)" in backend.case_reasons(mech, cross)
