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
