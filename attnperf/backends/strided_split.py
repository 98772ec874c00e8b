"""Child et al.'s causal strided pattern as two dense kernel calls, merged by their log-sum-exps.

A mask kernel (flex) visits every key block for this pattern, because every block holds one of
the strided keys (j ≡ i mod s): at 16k tokens it cost 2.2× dense causal attention for 2% of the
pairs. Split instead, each part skips what it does not need:

* the band ``0 ≤ i − j < s`` is a sliding window ``(s − 1, 0)``;
* the strided keys ``i − j ∈ {s, 2s, …}`` are, after regrouping every position by its residue
  r = i mod s (a key layout that makes them contiguous: ``[B, n, …] → [B·s, n/s, …]``), plain
  causal attention over n/s tokens per group, shifted by one so that ``i − j = 0`` (already in
  the band) is left out: group queries 1…m−1 against group keys 0…m−2.

Both calls return the log-sum-exp of their rows (natural log, as flash-attn's kernels do); the
exact softmax over the union is ``o = o₂ + σ(lse₁ − lse₂)·(o₁ − o₂)``, computed in float32 (on
CUDA by one Triton kernel that reads both outputs where they lie,
:mod:`attnperf.backends.triton.strided_merge`). A row with no strided key (i < s) keeps the
band's output. Work: n·s pairs for the band plus
n²/(2s) for the groups, instead of n²/2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

#: ``attend(q, k, v, **mask) -> (out, lse)`` on ``[B, T, H, D]`` tensors, lse ``[B, H, T]``.
Attend = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def by_residue(x: torch.Tensor, stride: int, rows: slice) -> torch.Tensor:
    """``[B, n, H, D]`` → ``[B·s, len(rows), H, D]``: group g holds positions g, g+s, g+2s, …
    (zero-padded up to a multiple of s), sliced to ``rows`` within each group."""
    b, n, h, d = x.shape
    m = -(-n // stride)
    padded = F.pad(x, (0, 0, 0, 0, 0, m * stride - n)) if m * stride != n else x
    grouped = padded.view(b, m, stride, h, d)[:, rows]
    return grouped.permute(0, 2, 1, 3, 4).reshape(b * stride, -1, h, d)


def strided_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stride: int, attend: Attend, **kwargs: Any
) -> torch.Tensor:
    """Causal strided attention of ``[B, n, H, D]`` q, k, v (q_len = kv_len = n) with stride s.

    ``kwargs`` go to both calls (``softmax_scale``). Returns ``[B, n, H, D]`` in q's dtype.
    """
    n = q.shape[1]
    band, band_lse = attend(q, k, v, causal=True, window_size=(stride - 1, 0), **kwargs)
    m = -(-n // stride)
    if m < 2:  # no query is s or more keys past another: the band is everything
        return band
    qg = by_residue(q, stride, slice(1, m))
    kg, vg = (by_residue(t, stride, slice(0, m - 1)) for t in (k, v))
    part, part_lse = attend(qg, kg, vg, causal=True, **kwargs)  # [B·s, m−1, H, D], [B·s, H, m−1]
    if band.is_cuda and band.dtype in (torch.float16, torch.bfloat16):
        from attnperf.backends.triton.strided_merge import merge  # one pass over both outputs

        return merge(band, band_lse, part, part_lse, stride).to(q.dtype)
    return merge_in_torch(band, band_lse, part, part_lse, stride).to(q.dtype)


def merge_in_torch(band: torch.Tensor, band_lse: torch.Tensor, part: torch.Tensor, part_lse: torch.Tensor,
                   stride: int) -> torch.Tensor:  # fmt: skip
    """The merge of :func:`strided_attention` in PyTorch (float32; the CPU's and the reference of
    the Triton kernel, :mod:`attnperf.backends.triton.strided_merge`)."""
    b, n, h, d = band.shape
    m = -(-n // stride)
    # Back to positions: group row a−1 is position a·s + g; rows a = 0 (positions < s) stay empty.
    out = part.new_zeros(b, m, stride, h, d)
    out[:, 1:] = part.view(b, stride, m - 1, h, d).transpose(1, 2)
    lse = part_lse.new_full((b, m, stride, h), float("-inf"))
    lse[:, 1:] = part_lse.view(b, stride, h, m - 1).permute(0, 3, 1, 2)
    strided_out = out.view(b, m * stride, h, d)[:, :n]
    strided_lse = lse.view(b, m * stride, h)[:, :n]
    weight = torch.sigmoid(band_lse.transpose(1, 2).float() - strided_lse.float()).unsqueeze(-1)  # [B, n, H, 1]
    return torch.lerp(strided_out.float(), band.float(), weight)


def split_pairs(n: int, stride: int, block: int) -> int:
    """Pairs the two calls multiply in ``block × block`` tiles: the band's visited tiles plus, in
    each of the s groups, the causal tiles of m − 1 tokens."""

    def visited(q_len: int, lowest: Callable[[int], int]) -> int:
        total = 0
        for qs in range(0, q_len, block):
            qe = min(qs + block, q_len)
            first = max(0, lowest(qs)) // block * block  # the first key tile any row of this tile sees
            total += (qe - qs) * (qe - first)
        return total

    band = visited(n, lambda qs: qs - stride + 1)
    m = -(-n // stride)
    return band + stride * visited(m - 1, lambda qs: 0) if m >= 2 else band


def split_peak_bytes(batch: int, heads: int, kv_heads: int, n: int, head_dim: int, element: int, stride: int) -> int:
    """Extra bytes at the merge on CUDA, beyond one output and its log-sum-exp: the band's and the
    part's outputs beside the merged one, the second log-sum-exp, and the regrouped q, k, v where
    regrouping copies (a batch above 1 cannot fold into the group dimension, a length that is not
    a multiple of s is padded; with batch 1 and s | n they are views)."""
    out = batch * n * heads * head_dim * element
    m = -(-n // stride)
    copies = batch > 1 or m * stride != n
    grouped = batch * (m - 1) * stride * (heads + 2 * kv_heads) * head_dim * element if copies else 0
    return grouped + 2 * out + batch * heads * n * 4
