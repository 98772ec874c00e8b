"""BigBird as a dense call for the global rows and a variable-length call over gathered key blocks
(attnperf/backends/block_sparse_split.py), and as one call over flash-attn-4's block-sparse lists
(attnperf/backends/block_lists.py), against the float64 reference of the ``bigbird``
mechanism, with float64 stand-ins for flash-attn-4's two entry points; the kernels themselves are
checked on a GPU like every backend."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from attnperf.analysis.flops import allowed_pairs
from attnperf.backends.block_lists import BlockLists, block_lists, one_call_pairs
from attnperf.backends.block_sparse_split import block_sparse_attention, layout, split_pairs
from attnperf.case import Case, make_inputs
from attnperf.correctness import relative_error
from attnperf.mechanisms import get_mechanism
from attnperf.mechanisms.sparse import bigbird_blocks

from ..conftest import SEED


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


def listed_table(lists: BlockLists) -> torch.Tensor:
    """The ``[nb, nb]`` table flash-attn-4 computes from ``lists``: each query block's first
    ``full_block_cnt`` entries of ``full_block_idx``; no mask blocks."""
    counts, idx = lists.full_block_cnt[0, 0], lists.full_block_idx[0, 0]
    assert not lists.mask_block_cnt.any()
    table = torch.zeros(idx.shape, dtype=torch.bool)
    for qb in range(idx.shape[0]):
        table[qb, idx[qb, : counts[qb]].long()] = True
    return table


@pytest.mark.parametrize(("n", "block", "num_global", "num_random"), [(64, 8, 1, 2), (70, 8, 2, 1), (16, 8, 2, 2)])
def test_block_lists_are_the_bigbird_table_in_ascending_order(n: int, block: int, num_global: int,
                                                              num_random: int) -> None:  # fmt: skip
    case = Case(heads=2, q_len=n, kv_len=n, head_dim=8, block=block, num_global=num_global, num_random=num_random)
    table = bigbird_blocks(case)
    lists = block_lists(table, block, "cpu")
    assert torch.equal(listed_table(lists), table)
    for qb in range(table.shape[0]):
        listed = lists.full_block_idx[0, 0, qb, : lists.full_block_cnt[0, 0, qb]]
        # ascending: the partial last block, where the kernel masks the sequence's end, comes last
        assert torch.equal(listed, listed.sort().values)
    assert lists.full_block_cnt.dtype == lists.full_block_idx.dtype == torch.int32
    nb = table.shape[0]
    assert lists.full_block_cnt.shape == (1, 1, nb)
    assert lists.full_block_idx.shape == (1, 1, nb, nb)
    if n % block == 0:  # whole blocks: the one call computes exactly the pattern's pairs
        assert one_call_pairs(table, block) == allowed_pairs(get_mechanism("bigbird"), case)
    else:  # the last block is partial: its whole tiles count more than the pattern allows
        assert one_call_pairs(table, block) > allowed_pairs(get_mechanism("bigbird"), case)


def test_flash_attn4_runs_bigbird_as_one_block_sparse_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the one call applies, the backend hands flash-attn-4 lists whose blocks are BigBird's:
    a stand-in library that attends over exactly the listed blocks reproduces the reference."""
    import sys
    import types
    from dataclasses import dataclass

    from attnperf.backends.flash_attn import FlashAttn4

    @dataclass
    class BlockSparseTensorsTorch:  # the library's container, by its field names
        mask_block_cnt: torch.Tensor
        mask_block_idx: torch.Tensor
        full_block_cnt: torch.Tensor
        full_block_idx: torch.Tensor
        block_size: tuple[int, int]

    module = types.ModuleType("flash_attn.cute.block_sparsity")
    module.BlockSparseTensorsTorch = BlockSparseTensorsTorch  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flash_attn.cute.block_sparsity", module)

    def library(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, softmax_scale: float,
                block_sparse_tensors: BlockSparseTensorsTorch) -> tuple[torch.Tensor, None]:  # fmt: skip
        s = block_sparse_tensors
        bq, bk = s.block_size
        table = listed_table(BlockLists(s.full_block_cnt, s.full_block_idx, s.mask_block_cnt, s.mask_block_idx, bq))
        n = q.shape[1]
        allowed = table.repeat_interleave(bq, 0)[:n].repeat_interleave(bk, 1)[:, :n]
        qh, kh, vh = (t.transpose(1, 2).double() for t in (q, k, v))
        kh, vh = (t.repeat_interleave(qh.shape[1] // t.shape[1], dim=1) for t in (kh, vh))
        scores = (qh @ kh.transpose(-1, -2) * softmax_scale).masked_fill(~allowed, float("-inf"))
        return (torch.softmax(scores, dim=-1) @ vh).transpose(1, 2).to(q.dtype), None

    backend = FlashAttn4()
    monkeypatch.setattr(backend, "load", lambda: setattr(backend, "fn", library))
    monkeypatch.setattr(backend, "bigbird_one_call", lambda case: True)
    case = Case(heads=4, kv_heads=2, q_len=72, kv_len=72, head_dim=16, dtype="float32", block=8, num_global=1,
                num_random=2)  # fmt: skip
    q, k, v = make_inputs(case, seed=SEED)
    mech = get_mechanism("bigbird")
    assert relative_error(backend.prepare(mech, case, q, k, v)(), mech.reference(q, k, v, case)) < 1e-6
    assert backend.executed_pairs(mech, case) == one_call_pairs(bigbird_blocks(case), 8)


def test_flash_attn4_bigbird_one_call_only_where_the_kernel_takes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """On SM90 with a block its forward tiles fit (64; 128 up to head_dim 128); elsewhere the split.
    Gradients are refused on both paths, with the reason."""
    from attnperf.backends.flash_attn import FlashAttn4

    backend = FlashAttn4()

    def case(block: int, head_dim: int = 128) -> Case:
        return Case(heads=2, q_len=512, kv_len=512, head_dim=head_dim, block=block, device="cuda")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert backend.bigbird_one_call(case(64))
    assert backend.bigbird_one_call(case(64, head_dim=256))
    assert backend.bigbird_one_call(case(128))
    assert not backend.bigbird_one_call(case(128, head_dim=256))  # the key tile is 80 there, not 128
    assert not backend.bigbird_one_call(case(32))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (10, 0))
    assert not backend.bigbird_one_call(case(64))  # Blackwell's kernels tile differently: the split
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not backend.bigbird_one_call(case(64))
    reasons = backend.not_supported_reasons(get_mechanism("bigbird"), case(64), backward=True)
    assert "BigBird is forward only here" in reasons
