"""Positional mechanisms that change the scores: ALiBi (a bias) and RoPE (a rotation of q, k).

Sinusoidal and learned absolute positions change the inputs, not the attention, and live in
:mod:`attnperf.layers`.
"""

from __future__ import annotations

import math

import torch

from attnperf.case import Case
from attnperf.mechanisms.base import BiasFn, QKTransform, Rotation, SoftmaxMechanism


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al. 2022, the authors' ``get_slopes``), float64, ``[H]``.

    For H a power of two: ``2^(-8k/H)``, k = 1..H. Otherwise, with n the largest power of two
    below H: the n slopes of n, then every other slope of 2n (k = 1, 3, 5, …) for the
    remaining H − n heads.
    """
    if heads < 1:
        raise ValueError(f"heads must be >= 1, got {heads}")

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]

    n = 2 ** math.floor(math.log2(heads))
    slopes = power_of_two(n)
    if n < heads:
        slopes += power_of_two(2 * n)[0::2][: heads - n]
    return torch.tensor(slopes, dtype=torch.float64)


class ALiBi(SoftmaxMechanism):
    """Softmax attention with bias ``−slope_h · |i + Δ − j|``.

    Causal (the paper's setting) sees only j ≤ i + Δ, where the distance is non-negative; the
    non-causal form is flash-attn's symmetric one (``alibi_slopes`` with ``causal=False``).
    """

    name = "alibi"
    summary = "ALiBi linear distance bias, slopes for any head count (Press et al. 2022)"
    options = ("causal",)

    def bias_fn(self, case: Case, device: torch.device | str, dtype: torch.dtype = torch.float32) -> BiasFn:
        slopes = alibi_slopes(case.heads).to(device=device, dtype=dtype)
        delta = case.offset

        def alibi(h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            return -slopes[h] * (q_idx + delta - kv_idx).abs()

        return alibi


def rope_tables(
    positions: torch.Tensor, head_dim: int, dtype: torch.dtype, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos``, ``sin`` of shape ``[len(positions), head_dim]`` for half-rotation RoPE.

    Frequencies θ_m = base^(−2m/D), m < D/2, repeated for both halves (GPT-NeoX / HF Llama).
    Computed in float64 and cast, so the tables carry no error of their own.
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-rotation RoPE: pairs (x_m, x_{m+D/2}) rotate by θ_m · position.

    Computed in at least float32 and rounded once to x's dtype (as flash-attn's rotary kernel):
    rotating in bfloat16 rounds three times and, at positions in the hundreds, doubles the
    error of the whole attention.
    """
    work = torch.promote_types(x.dtype, torch.float32)
    xw = x.to(work)
    half = x.shape[-1] // 2
    rotated = torch.cat([-xw[..., half:], xw[..., :half]], dim=-1)
    return (xw * cos + rotated * sin).to(x.dtype)


def rotate_half_rope_seq_major(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`rotate_half_rope` of ``[B, H, T, D]`` written as contiguous ``[B, T, H, D]``, the
    layout flash-attn and xFormers take."""
    return rotate_half_rope(x, cos, sin).transpose(1, 2).contiguous()


class RoPE(SoftmaxMechanism):
    """Softmax attention over rotary-embedded q and k (Su et al. 2021), half-rotation convention.

    Half-rotation (GPT-NeoX, HF Llama) pairs dimension m with m + D/2; the interleaved convention
    (GPT-J, ``flash_attn_with_kvcache``'s default) pairs 2m with 2m + 1 and is not offered.
    Keys sit at positions 0 … Lk − 1 and queries at Δ … Δ + Lq − 1 (the end of the keys), base
    10000.
    """

    name = "rope"
    summary = "rotary position embedding on q and k (half-rotation, base 10000)"
    options = ("causal",)
    rotates = True
    #: The rotated q and k are rounded to the case's dtype once more (the rotation is computed in
    #: float32); with one 16-dim query the output error is not averaged out: over 300 seeds in
    #: bf16 (H 4, KV 2, Lq 1, Lk 257) eager reached 0.0126 and tiled 0.0114 against the 1e-2 bound.
    half_precision_factor = 1.5

    def validate(self, case: Case) -> None:
        super().validate(case)
        if case.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {case.head_dim}")

    def qk_transform(
        self,
        case: Case,
        device: torch.device | str,
        dtype: torch.dtype,
        *,
        seq_major: bool = False,
        rotate: Rotation | None = None,
    ) -> QKTransform:
        """Rotate q and k by their positions' tables, with ``rotate`` or by default eagerly
        (:func:`rotate_half_rope`, which is the reference's rotation)."""
        dtype = torch.promote_types(dtype, torch.float32)  # tables in the rotation's precision
        q_cos, q_sin = rope_tables(torch.arange(case.q_len) + case.offset, case.head_dim, dtype)
        k_cos, k_sin = rope_tables(torch.arange(case.k_len), case.head_dim, dtype)
        q_cos, q_sin, k_cos, k_sin = (t.to(device) for t in (q_cos, q_sin, k_cos, k_sin))
        eager = rotate_half_rope_seq_major if seq_major else rotate_half_rope
        rotation = eager if rotate is None else rotate

        def rope(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return rotation(q, q_cos, q_sin), rotation(k, k_cos, k_sin)

        return rope
