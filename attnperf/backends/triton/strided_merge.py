"""The strided split's merge (:mod:`attnperf.backends.strided_split`) as one Triton kernel.

The split's two calls leave the band's output at positions and the strided part's output in
residue groups, each with its log-sum-exp. Merged in PyTorch, the part was scattered back to
positions into a zero-filled buffer, both outputs were copied to float32, blended and copied
back: those copies took twice the time of the two attention kernels. Here a program reads each
output row once, where it lies, blends in float32 and writes the result once: about a fifth of
the bytes moved.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnperf.backends.triton.rows import head_block

#: Positions a program merges (each a row of D for one head).
BLOCK_T = 32


@triton.jit
def _merge(
    BAND, BAND_LSE, PART, PART_LSE, OUT, N, H, STRIDE,
    sb_b, sb_t, sb_h, sl_b, sl_h, sp_b, sp_t, sp_h, spl_b, spl_h, so_b, so_t, so_h,
    D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b, h, t, d = head_block(H, BLOCK_T, BLOCK_D)
    rows = t < N
    mask = rows[:, None] & (d[None, :] < D)
    t64 = t.to(tl.int64)
    band = tl.load(BAND + b * sb_b + t64[:, None] * sb_t + h * sb_h + d[None, :], mask=mask, other=0.0)
    lse_band = tl.load(BAND_LSE + b * sl_b + h * sl_h + t64, mask=rows, other=0.0)
    # Position i = a·s + g is row a − 1 of group b·s + g; rows a = 0 (i < s) have no strided key.
    a = t // STRIDE
    g = (t % STRIDE).to(tl.int64)
    has_part = rows & (a > 0)
    group = b * STRIDE + g
    row = (a - 1).to(tl.int64)
    part = tl.load(PART + group[:, None] * sp_b + row[:, None] * sp_t + h * sp_h + d[None, :],
                   mask=mask & has_part[:, None], other=0.0)  # fmt: skip
    lse_part = tl.load(PART_LSE + group * spl_b + h * spl_h + row, mask=has_part, other=0.0)
    # o = o_part + σ(lse_band − lse_part)·(o_band − o_part); without a part the band alone.
    weight = tl.where(has_part, tl.sigmoid(lse_band - lse_part), 1.0)
    band32, part32 = band.to(tl.float32), part.to(tl.float32)
    out = part32 + weight[:, None] * (band32 - part32)
    tl.store(OUT + b * so_b + t64[:, None] * so_t + h * so_h + d[None, :], out.to(OUT.dtype.element_ty), mask=mask)


def merge(band: torch.Tensor, band_lse: torch.Tensor, part: torch.Tensor, part_lse: torch.Tensor,
          stride: int) -> torch.Tensor:  # fmt: skip
    """The exact softmax over both parts: ``band`` ``[B, n, H, D]`` with its lse ``[B, H, n]``,
    ``part`` ``[B·s, m−1, H, D]`` (group g, row a − 1 holding position a·s + g) with its lse
    ``[B·s, H, m−1]``. Returns ``[B, n, H, D]`` in ``band``'s dtype. Rows (the last dims of the
    outputs and of the log-sum-exps) must be contiguous, as the kernels return them."""
    batch, n, heads, dim = band.shape
    if not all(t.stride(-1) == 1 for t in (band, band_lse, part, part_lse)):
        raise ValueError("the strided merge needs rows with a contiguous last dim (outputs and log-sum-exps)")
    out = torch.empty_like(band, memory_format=torch.contiguous_format)
    grid = (batch * heads, triton.cdiv(n, BLOCK_T))
    _merge[grid](
        band, band_lse, part, part_lse, out, n, heads, stride,
        band.stride(0), band.stride(1), band.stride(2), band_lse.stride(0), band_lse.stride(1),
        part.stride(0), part.stride(1), part.stride(2), part_lse.stride(0), part_lse.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        D=dim, BLOCK_T=BLOCK_T, BLOCK_D=triton.next_power_of_2(dim),
    )  # fmt: skip
    return out
