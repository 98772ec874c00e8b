"""BigBird as a dense call for the global rows and a variable-length call over gathered key blocks
(attnperf/backends/block_sparse_split.py), against the float64 reference of the ``bigbird``
mechanism, with float64 stand-ins for flash-attn-4's two entry points; the kernels themselves are
checked on a GPU like every backend."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from attnperf.backends.block_sparse_split import block_sparse_attention, layout, split_pairs
from attnperf.case import Case, make_inputs
from attnperf.correctness import relative_error
from attnperf.mechanisms import get_mechanism
from attnperf.mechanisms.sparse import bigbird_blocks

from .conftest import SEED


def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, softmax_scale: float) -> torch.Tensor:
    """flash-attn's contract on ``[B, T, H, D]`` (GQA by head groups), non-causal only here."""
    assert not causal
    qh, kh, vh = (t.transpose(1, 2).double() for t in (q, k, v))
    kh, vh = (t.repeat_interleave(qh.shape[1] // t.shape[1], dim=1) for t in (kh, vh))
    weights = torch.softmax(qh @ kh.transpose(-1, -2) * softmax_scale, dim=-1)
    return (weights @ vh).transpose(1, 2).to(q.dtype)


def varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
           max_q: int, max_k: int, **kwargs: Any) -> torch.Tensor:  # fmt: skip
    """flash-attn's varlen contract: packed ``[T, H, D]``, sequence s = rows cu[s]:cu[s+1]."""
    out = torch.empty(q.shape[0], q.shape[1], v.shape[2], dtype=q.dtype)
    for s in range(len(cu_q) - 1):
        qs, ks = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        assert cu_q[s + 1] - cu_q[s] <= max_q
        assert cu_k[s + 1] - cu_k[s] <= max_k
        out[qs] = dense(q[None, qs], k[None, ks], v[None, ks], **kwargs)[0]
    return out


@pytest.mark.parametrize(
    ("batch", "n", "block", "num_global", "num_random", "kv_heads"),
    [(1, 64, 8, 1, 2, 4), (2, 70, 8, 1, 2, 2), (1, 40, 8, 0, 1, 4), (1, 48, 8, 2, 1, 1), (1, 16, 8, 2, 2, 4)],
)
def test_the_split_is_the_bigbird_pattern(
    batch: int, n: int, block: int, num_global: int, num_random: int, kv_heads: int
) -> None:
    case = Case(batch=batch, heads=4, kv_heads=kv_heads, q_len=n, kv_len=n, head_dim=16, dtype="float32",
                block=block, num_global=num_global, num_random=num_random)  # fmt: skip
    q, k, v = make_inputs(case, seed=SEED)
    want = get_mechanism("bigbird").reference(q, k, v, case)
    plan = layout(bigbird_blocks(case), n, block, num_global, batch, torch.device("cpu"))
    got = block_sparse_attention(*(t.transpose(1, 2) for t in (q, k, v)), plan, dense, varlen,
                                 softmax_scale=case.scale)  # fmt: skip
    assert relative_error(got.transpose(1, 2), want) < 1e-6, f"seed {SEED}"


def test_each_sequence_holds_exactly_its_allowed_keys() -> None:
    case = Case(heads=1, q_len=64, kv_len=64, head_dim=16, block=8, num_global=1, num_random=2)
    table = bigbird_blocks(case)
    plan = layout(table, 64, 8, 1, 1, torch.device("cpu"))
    assert plan.global_rows == 8
    assert [k for _, k in plan.pairs] == [8 * int(table[qb].sum()) for qb in range(1, 8)]
    assert plan.key_rows[: plan.pairs[0][1]].tolist() == [
        j for kb in table[1].nonzero().flatten().tolist() for j in range(kb * 8, kb * 8 + 8)
    ]
    # tiles of 16: the global rows' 8 queries pad to 16 against 64 keys; each block's 8 queries to 16
    assert split_pairs(plan, 64, 16) == 16 * 64 + sum(16 * (-(-k // 16) * 16) for _, k in plan.pairs)


def test_flash_attn4_runs_bigbird_through_the_split() -> None:
    """The backend's layouts and its two library calls, with the stand-ins in place of the library."""
    from attnperf.backends.flash_attn import FlashAttn4

    backend = FlashAttn4()

    def library(*tensors: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return dense(*tensors, **kwargs), None

    def library_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, cu_seqlens_q: torch.Tensor,
                       cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                       **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
        return varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kwargs), None

    def load() -> None:
        backend.fn, backend.varlen_fn = library, library_varlen

    backend.load = load
    case = Case(heads=4, kv_heads=2, q_len=72, kv_len=72, head_dim=16, dtype="float32", block=8, num_global=1,
                num_random=2)  # fmt: skip
    q, k, v = make_inputs(case, seed=SEED)
    mech = get_mechanism("bigbird")
    assert relative_error(backend.prepare(mech, case, q, k, v)(), mech.reference(q, k, v, case)) < 1e-6
    causal = Case(heads=4, q_len=72, kv_len=72, head_dim=16, block=8, causal=True)
    assert backend.case_reasons(mech, causal) == ["BigBird runs as its non-causal split only"]
