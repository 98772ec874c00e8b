"""Per-call masks turned into what the mechanisms take: additive biases, the 0/1 convention refused
where it is ambiguous, and rows with no key left to attend."""

from __future__ import annotations

from typing import Any

import torch

from attnperf.case import Case
from attnperf.mechanisms import SoftmaxMechanism

#: Backends that take a per-call mask and dropout: they reach SDPA's ``attn_mask`` / ``dropout_p``
#: (or, for eager, the same arithmetic written out). Flex, tiled and the other libraries build
#: their masks from the mechanism's index functions once per shape and take no per-call mask.
MASK_BACKENDS = ("eager", "sdpa", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn")


def user_bias(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    batch: int,
    heads: int,
    q_len: int,
    k_len: int,
    dtype: torch.dtype,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """The caller's masks as one additive ``[B|1, H|1, Lq, Lk]`` float tensor (``-inf`` = masked).

    ``attn_mask`` follows SDPA: boolean True = attend, or float added to the scores; shapes
    ``[Lq, Lk]``, ``[B·H, Lq, Lk]`` (nn.MultiheadAttention's 3-D form) or ``[B|1, H|1, Lq, Lk]``.
    ``key_padding_mask`` ``[B, Lk]`` follows nn.MultiheadAttention: boolean True = ignore this
    key, or float added. A wrong shape, dtype or device is a ``ValueError`` naming the mask.
    """
    total = None
    if attn_mask is not None:
        _check_mask("attn_mask", attn_mask, device)
        mask = attn_mask
        shape = tuple(mask.shape)
        allowed = (
            f"({q_len}, {k_len}) [Lq, Lk], ({batch * heads}, {q_len}, {k_len}) [B·H, Lq, Lk] "
            f"or ({batch}|1, {heads}|1, {q_len}, {k_len}) [B, H, Lq, Lk]"
        )
        if mask.dim() == 2 and shape == (q_len, k_len):
            mask = mask[None, None]
        elif mask.dim() == 3 and shape == (batch * heads, q_len, k_len):
            mask = mask.view(batch, heads, q_len, k_len)
        elif not (
            mask.dim() == 4 and shape[0] in (1, batch) and shape[1] in (1, heads) and shape[2:] == (q_len, k_len)
        ):
            raise ValueError(f"attn_mask: expected {allowed}, got {shape}")
        total = _additive(mask, attend=True, dtype=dtype)
    if key_padding_mask is not None:
        _check_mask("key_padding_mask", key_padding_mask, device)
        if tuple(key_padding_mask.shape) != (batch, k_len):
            raise ValueError(
                f"key_padding_mask: expected ({batch}, {k_len}) [B, Lk], got {tuple(key_padding_mask.shape)}"
            )
        pad = _additive(key_padding_mask[:, None, None, :], attend=False, dtype=dtype)
        total = pad if total is None else total + pad
    return total


def _check_mask(name: str, mask: Any, device: torch.device | None) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(f"{name}: dtype must be torch.bool or a floating point type, got {mask.dtype}")
    if device is not None and mask.device != device:
        raise ValueError(f"{name}: on {mask.device}, the inputs are on {device}")


def _additive(mask: torch.Tensor, *, attend: bool, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = ``attend`` when ``attend`` else True = ignore) or a float one, additive."""
    if mask.dtype == torch.bool:
        blocked = ~mask if attend else mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(blocked, float("-inf"))
    return mask.to(dtype)


def _refuse_binary_float(name: str, mask: torch.Tensor | None) -> None:
    """A float mask of only 0s and 1s (some of each) is refused: it is additive here, so its 0s mask
    nothing, yet it reads as the 1 = attend / 0 = masked convention. One reduction and one host read."""
    if mask is None or not isinstance(mask, torch.Tensor) or not mask.is_floating_point():
        return
    ones = mask == 1
    if bool((ones | (mask == 0)).all() & ones.any() & ~ones.all()):
        raise ValueError(
            f"{name}: a float mask of only 0.0 and 1.0 is ambiguous. Float masks are added to the scores "
            f"(SDPA's and nn's convention), so its 0s would mask nothing. For 1 = attend, 0 = masked (the "
            f"masked_fill(mask == 0, -inf) convention) pass mask= instead, or {name}="
            + ("m.bool() (True = attend)" if name == "attn_mask" else "m == 0 (True = ignore the key)")
        )


def binary_mask_bias(
    mask: Any, batch: int, heads: int, q_len: int, k_len: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The tutorials' ``mask`` (0 = masked, anything else = attend, any dtype; the Annotated
    Transformer's ``scores.masked_fill(mask == 0, -inf)``) as an additive ``[B|1, H|1, Lq|1, Lk]``
    tensor. Shapes ``[Lq|1, Lk]``, ``[B|1, Lq|1, Lk]`` (the heads dimension added, as those write-ups
    do with ``mask.unsqueeze(1)``) or ``[B|1, H|1, Lq|1, Lk]``."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.device != device:
        raise ValueError(f"mask: on {mask.device}, the inputs are on {device}")
    shape = tuple(mask.shape)
    full = mask.dim() == 4
    view = mask if full else (mask[None, None] if mask.dim() == 2 else mask[:, None] if mask.dim() == 3 else None)
    allowed = [(1, batch), (1, heads), (1, q_len), (k_len,)]
    if view is None or any(size not in ok for size, ok in zip(view.shape, allowed, strict=True)):
        raise ValueError(
            f"mask: expected ({q_len}|1, {k_len}) [Lq, Lk], ({batch}|1, {q_len}|1, {k_len}) [B, Lq, Lk] or "
            f"({batch}|1, {heads}|1, {q_len}|1, {k_len}) [B, H, Lq, Lk] (0 = masked), got {shape}"
        )
    return torch.zeros(view.shape, dtype=dtype, device=device).masked_fill(view == 0, float("-inf"))


def empty_rows(total: torch.Tensor | None) -> torch.Tensor | None:
    """``[B|1, H|1, Lq, 1]``: True where an additive mask leaves a query row no key (all ``-inf``)."""
    if total is None:
        return None
    return torch.isneginf(total).all(dim=-1, keepdim=True)


def masked_scores_bias(
    mechanism: SoftmaxMechanism, case: Case, device: torch.device, dtype: torch.dtype, extra: torch.Tensor | None
) -> torch.Tensor | None:
    """The mechanism's own mask and bias plus the caller's, as one additive float tensor."""
    bias = mechanism.dense_bias(case, device, dtype)
    total = bias[None] if bias is not None else None
    if extra is not None:
        total = extra if total is None else total + extra
    mask = mechanism.dense_mask(case, device)
    if mask is not None:
        total = torch.zeros(mask.shape, dtype=dtype, device=device) if total is None else total
        total = total.masked_fill(~mask, float("-inf"))
    return total
