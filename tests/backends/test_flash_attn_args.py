"""What attnperf hands flash-attn-4 and FlashAttention-3, checked on the CPU with a stand-in for
the library call (the kernels themselves run, and are checked against the reference, on a GPU)."""

from __future__ import annotations

from typing import Any

import torch

from attnperf.backends.flash_attn import SPLIT_KV_MAX_Q, FlashAttn3, FlashAttn4
from attnperf.case import make_inputs
from attnperf.catalog import get_variant
from attnperf.mechanisms import get_mechanism


def recorded_kwargs(
    backend_cls: type, variant: str, seq_len: int, *, requires_grad: bool, capability: tuple[int, int] = (9, 0)
) -> dict[str, Any]:
    calls: list[dict[str, Any]] = []

    def stand_in(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> Any:
        calls.append(kwargs)
        out = torch.zeros_like(q)
        return (out, None) if backend_cls is FlashAttn4 else out

    backend = backend_cls()
    backend.load = lambda: setattr(backend, "fn", stand_in)  # no library on this machine
    need = backend.split_kv_capability
    backend.splits_kv = lambda device: need is not None and capability >= need  # the GPU it would run on
    spec = get_variant(variant)
    case = spec.case(seq_len, heads=2, head_dim=16, dtype="bfloat16")
    q, k, v = make_inputs(case, seed=0, requires_grad=requires_grad)
    backend.prepare(get_mechanism(spec.mechanism), case, q, k, v)()
    return calls[0]


def test_a_decode_step_asks_for_split_kv_and_a_prefill_does_not() -> None:
    assert recorded_kwargs(FlashAttn3, "decode", 4096, requires_grad=False)["num_splits"] == 0
    assert "num_splits" not in recorded_kwargs(FlashAttn3, "causal", 4 * SPLIT_KV_MAX_Q, requires_grad=False)


def test_flash_attn4_splits_only_where_its_kernels_can() -> None:
    """flash-attn-4's SM90 kernel asserts "SplitKV not supported on SM 9.0": on an H100 or H200 a
    split request would turn every decode point into a failure."""
    assert "num_splits" not in recorded_kwargs(FlashAttn4, "decode", 4096, requires_grad=False, capability=(9, 0))
    blackwell = recorded_kwargs(FlashAttn4, "decode", 4096, requires_grad=False, capability=(10, 0))
    assert blackwell["num_splits"] == 0


def test_split_kv_is_never_asked_for_when_gradients_are_needed() -> None:
    assert "num_splits" not in recorded_kwargs(FlashAttn4, "decode", 4096, requires_grad=True, capability=(10, 0))


def test_no_split_is_asked_for_off_cuda() -> None:
    assert not FlashAttn3().splits_kv(torch.device("cpu"))


def test_flash_attn4_takes_alibi_as_a_score_mod_beside_its_causal_mask(monkeypatch) -> None:
    """ALiBi reaches flash-attn-4 as its ``score_mod`` (built for the case's head count) with the
    causal flag kept, so the kernel still skips the blocks above the diagonal; a plain causal
    call gets no score_mod. The CuTe code itself needs the DSL and is checked on a GPU."""
    import sys
    import types

    made: list[int] = []
    fake = types.ModuleType("attnperf.backends.flash_attn_score_mods")
    fake.alibi_score_mod = lambda heads: made.append(heads) or "alibi-mod"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "attnperf.backends.flash_attn_score_mods", fake)
    alibi = recorded_kwargs(FlashAttn4, "alibi", 256, requires_grad=False)
    assert alibi["score_mod"] == "alibi-mod"
    assert alibi["causal"] is True
    assert made == [2]
    assert "score_mod" not in recorded_kwargs(FlashAttn4, "causal", 256, requires_grad=False)


def test_flash_attn4_alibi_is_forward_only_and_skips_masked_blocks() -> None:
    backend, mech = FlashAttn4(), get_mechanism("alibi")
    case = get_variant("alibi").case(1024, heads=16, head_dim=128, dtype="bfloat16")
    reasons = backend.not_supported_reasons(mech, case, backward=True)
    assert "ALiBi's score_mod is forward only here (no score_mod_bwd passed)" in reasons
    assert backend.native_mask(mech, case)
    assert backend.executed_pairs(mech, case) < case.q_len * case.k_len * 0.6  # per batch and head: about half


def test_rope_reaches_flash_attn_rotated_in_its_own_layout() -> None:
    """RoPE's rotation writes q and k straight into flash-attn's contiguous [B, T, H, D] (one pass
    inside the timed call, no transpose after it); what the library gets is the rotated input."""
    from attnperf.mechanisms.positional import rope_tables, rotate_half_rope

    seen: list[torch.Tensor] = []

    def stand_in(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> Any:
        seen.extend((q, k))
        return torch.zeros_like(q), None

    backend = FlashAttn4()
    backend.load = lambda: setattr(backend, "fn", stand_in)
    spec = get_variant("rope")
    case = spec.case(40, heads=2, head_dim=16, dtype="bfloat16")
    q, k, v = make_inputs(case, seed=1)
    backend.prepare(get_mechanism(spec.mechanism), case, q, k, v)()
    cos, sin = rope_tables(torch.arange(40), 16, torch.float32)
    for got, x in zip(seen, (q, k), strict=True):
        assert got.shape == (1, 40, 2, 16)
        assert got.is_contiguous()
        assert torch.equal(got, rotate_half_rope(x, cos, sin).transpose(1, 2))
