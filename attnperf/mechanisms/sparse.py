"""Sparse attention: top-k (data-dependent) and fixed patterns (strided, fixed, BigBird).

The fixed patterns exist in the forms different sources define; each is a mechanism of its own
with its convention written down, so that a figure always says which one it timed:

* ``strided``: Child et al.'s strided pattern (a band of s plus every s-th key back);
* ``strided_columns``: every row sees the columns 0, s, 2s, … (the masks scripts' pattern);
* ``fixed``: Child et al.'s "fixed" pattern (own block of s plus c summary columns per block);
* ``bigbird``: BigBird-ITC at block level (Zaheer et al.; what the HF implementation runs);
* ``bigbird_tokens``: BigBird at token level (window, global tokens, random tokens per row).

A stride left unset defaults to round(√kv_len) (:func:`stride_of`): the choice that gives the
strided and fixed patterns their O(n√n) cost.
"""

from __future__ import annotations

import math

import torch

from attnperf.case import Case
from attnperf.mechanisms.base import (
    Family,
    MaskFn,
    Mechanism,
    SoftmaxMechanism,
    dense_causal,
    expand_kv,
    require_option,
)
from attnperf.mechanisms.local import window_bounds


def stride_of(case: Case) -> int:
    """``case.stride``, or round(√kv_len) when unset (at least 1): Child et al. take s ≈ √n, so
    that each query sees O(√n) keys and the whole pattern costs O(n√n)."""
    return case.stride if case.stride is not None else max(1, round(math.sqrt(case.k_len)))


def topk_keep(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """Boolean mask of each row's ``top_k`` largest scores; ties keep the lower key index.

    ``torch.topk`` leaves the order of equal scores unspecified, so a stable descending sort
    is used: among equal scores the earlier (lower) index sorts first and is kept.
    """
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :top_k]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order, True)


class TopK(Mechanism):
    """Each query attends only to its ``top_k`` highest-scoring keys (Gupta et al. 2021).

    Scores are ``q kᵀ / √D``; with ``causal`` the keys after i + Δ are excluded before the
    selection, so early queries may have fewer than ``top_k`` candidates and keep them all.
    Ties keep the lower key index (see :func:`topk_keep`). The softmax runs over the kept keys.
    """

    name = "topk"
    family = Family.TOPK
    summary = "top-k sparse: each query keeps its k highest-scoring keys (ties: lower index)"
    options = ("top_k", "causal")

    def validate(self, case: Case) -> None:
        if require_option(case, "top_k", self.name) > case.k_len:
            raise ValueError(f"top_k must be between 1 and kv_len ({case.k_len}), got {case.top_k}")

    def scores(self, q: torch.Tensor, k: torch.Tensor, case: Case, rows: torch.Tensor | None) -> torch.Tensor:
        """``q kᵀ / √D`` of ``rows``, the keys a causal query cannot see at −inf."""
        if rows is not None:
            q = q[:, :, rows.to(q.device)]
        scores = q @ expand_kv(k, case.heads).transpose(-1, -2) * case.scale
        if case.causal:
            scores = scores.masked_fill(~dense_causal(case, q.device, rows), float("-inf"))
        return scores

    def weights(self, q: torch.Tensor, k: torch.Tensor, case: Case, rows: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.scores(q, k, case, rows)
        keep = topk_keep(scores, require_option(case, "top_k", self.name))
        return torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)

    def ambiguous_rows(
        self, q: torch.Tensor, k: torch.Tensor, case: Case, rows: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Rows whose k-th and (k+1)-th scores are closer than float32 can tell apart.

        A float32 dot product of length D is within ``γ_D · Σ|q_i k_i|`` of the exact one
        (γ_D = D·u/(1 − D·u), u = 2⁻²⁴), in any order of summation. When the gap between the
        k-th and the (k+1)-th score is under the sum of the two keys' bounds, a correct float32
        implementation may keep either key, and the output differs from the reference by O(1)
        in that row (measured before this rule: ``attnperf check --variants topk --backends
        eager,tiled --seq-lens 512,1024`` reported a wrong result in 3 of 6 runs). Such rows are
        not evidence either way and are left out of the comparison; at 1024 keys and D 64 they are
        well under 1% of the rows.
        """
        top_k = require_option(case, "top_k", self.name)
        q64, k64 = (t.detach().to(torch.float64) for t in (q, k))
        scores = self.scores(q64, k64, case, rows)
        if scores.shape[-1] <= top_k:
            return torch.zeros(scores.shape[:-1], dtype=torch.bool, device=scores.device)
        magnitudes = self.scores(q64.abs(), k64.abs(), case, rows)  # Σ|q_i k_i| · scale per pair
        n = q.shape[-1] + 1  # D products and sums, and the scale's rounding
        gamma = n * 2.0**-24 / (1 - n * 2.0**-24)
        best = torch.topk(scores, top_k + 1, dim=-1)
        pair = torch.gather(magnitudes, -1, best.indices[..., -2:])
        gap = best.values[..., -2] - best.values[..., -1]
        finite = torch.isfinite(best.values[..., -1])  # the (k+1)-th key exists (causal rows)
        return finite & (gap <= gamma * pair.sum(-1))


class Strided(SoftmaxMechanism):
    """Strided sparse attention (Child et al. 2019, "strided" pattern), stride s.

    Query at position i' = i + Δ sees key j when it is one of the last s positions
    (``|i' − j| < s``) or a multiple of s away (``(i' − j) mod s == 0``). The paper's pattern
    is causal (``causal=True``); without it the pattern is mirrored to both sides. s defaults
    to round(√kv_len) (:func:`stride_of`).
    """

    name = "strided"
    summary = "strided sparse (Child et al. 2019): local band of s plus every s-th key"
    options = ("stride", "causal")
    positional = True

    def pattern(self, case: Case, device: torch.device | str) -> MaskFn:
        stride, delta = stride_of(case), case.offset

        def strided(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            diff = q_idx + delta - kv_idx
            return (diff.abs() < stride) | (diff % stride == 0)

        strided.__name__ = f"strided_{stride}"
        return strided


def bigbird_blocks(case: Case) -> torch.Tensor:
    """Block-level pattern ``[nb, nb]`` (nb = ⌈kv_len / block⌉) of BigBird-ITC (Zaheer et al. 2020).

    Query block qb (of aligned position i + Δ) sees key block kb when
    * kb is within one block of qb (sliding, 3 blocks),
    * qb or kb is one of the first ``num_global`` blocks (global rows and columns), or
    * kb is one of ``num_random`` blocks drawn for qb from the blocks not already seen.
    The random blocks are drawn once from ``case.seed`` with torch's CPU generator, so every
    backend and every call sees the same pattern (HF draws them per call; we do not).
    """
    block = require_option(case, "block", "bigbird")
    nb = -(-case.k_len // block)
    idx = torch.arange(nb)
    table = (idx[:, None] - idx[None, :]).abs() <= 1
    g = min(case.num_global, nb)
    table[:g, :] = True
    table[:, :g] = True
    gen = torch.Generator().manual_seed(case.seed)
    for qb in range(g, nb):
        candidates = (~table[qb]).nonzero().flatten()
        picks = candidates[torch.randperm(len(candidates), generator=gen)[: case.num_random]]
        table[qb, picks] = True
    return table


class BigBird(SoftmaxMechanism):
    """BigBird block-sparse attention: sliding + global + random blocks, seeded from the case.

    See :func:`bigbird_blocks` for the block pattern; token (i, j) is allowed when its blocks
    ((i + Δ) // block, j // block) are. ``causal`` intersects it with the causal mask.
    """

    name = "bigbird"
    summary = "BigBird: sliding, global and seeded random blocks (Zaheer et al. 2020)"
    options = ("block", "num_global", "num_random", "seed", "causal")
    positional = True

    def validate(self, case: Case) -> None:
        super().validate(case)
        require_option(case, "block", self.name)

    def pattern(self, case: Case, device: torch.device | str) -> MaskFn:
        table = bigbird_blocks(case).to(device)
        block, delta = case.block, case.offset

        def bigbird(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            return table[(q_idx + delta) // block, kv_idx // block]

        bigbird.__name__ = f"bigbird_b{block}_g{case.num_global}_r{case.num_random}"
        return bigbird


class StridedColumns(SoftmaxMechanism):
    """Every row sees the columns 0, s, 2s, … (the strided pattern of the masks scripts).

    Key j is allowed when ``j mod s == 0``, whatever the query; with ``causal=True`` (as those
    scripts draw it) only the columns up to the query's position i + Δ. Column 0 is always
    among them, so no row is empty. Unlike Child et al.'s ``strided`` there is no local band:
    a query does not see itself unless its position is a multiple of s. s defaults to
    round(√kv_len) (:func:`stride_of`).
    """

    name = "strided_columns"
    summary = "strided columns: every row sees keys 0, s, 2s, … (the masks scripts' pattern)"
    options = ("stride", "causal")
    positional = True

    def pattern(self, case: Case, device: torch.device | str) -> MaskFn:
        stride = stride_of(case)

        def strided_columns(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            return (kv_idx % stride == 0) & (q_idx >= 0)  # q_idx: broadcast to the [Lq, Lk] shape

        strided_columns.__name__ = f"strided_columns_{stride}"
        return strided_columns


class Fixed(SoftmaxMechanism):
    """Child et al.'s (2019) "fixed" pattern, block length l = stride, c = num_global.

    Query at position i' = i + Δ sees key j when j is in its own block (``j // l == i' // l``,
    the paper's A⁽¹⁾) or j is one of the last c positions of a block (``j mod l ≥ l − c``, the
    "summary" columns A⁽²⁾ that carry information between blocks). The paper's pattern is causal
    (``causal=True``); without it both halves apply on both sides. l defaults to round(√kv_len)
    (:func:`stride_of`); c is ``num_global`` (the case's count of global positions), at most l.
    """

    name = "fixed"
    summary = "fixed sparse (Child et al. 2019): own block of l plus c summary columns per block"
    options = ("stride", "num_global", "causal")
    positional = True

    def validate(self, case: Case) -> None:
        super().validate(case)
        if case.num_global > stride_of(case):
            raise ValueError(
                f"num_global (c, summary columns per block) must be between 0 and the block length "
                f"{stride_of(case)}, got {case.num_global}"
            )

    def pattern(self, case: Case, device: torch.device | str) -> MaskFn:
        block, summary, delta = stride_of(case), case.num_global, case.offset

        def fixed(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            return ((q_idx + delta) // block == kv_idx // block) | (kv_idx % block >= block - summary)

        fixed.__name__ = f"fixed_l{block}_c{summary}"
        return fixed


def bigbird_random_tokens(case: Case) -> torch.Tensor:
    """``[kv_len, kv_len]`` boolean: the ``num_random`` random keys of each query position.

    Row p (a query at aligned position p = i + Δ) holds ``num_random`` keys drawn uniformly,
    without replacement, from the keys neither in its window (:func:`window_bounds`) nor global,
    by torch's CPU generator seeded with ``case.seed``: the same keys for every backend and call.
    Fewer remain near the edges of short sequences: then it holds all that remain. Drawn in
    chunks of rows so the random scores never exceed 1024 × kv_len floats.
    """
    n, g = case.k_len, min(case.num_global, case.k_len)
    left, right = window_bounds(case.replace(causal=False))
    gen = torch.Generator().manual_seed(case.seed)
    table = torch.zeros(n, n, dtype=torch.bool)
    if case.num_random == 0:
        return table
    keys = torch.arange(n)
    for start in range(0, n, 1024):
        pos = torch.arange(start, min(n, start + 1024))[:, None]
        seen = ((keys >= pos - left) & (keys <= pos + right)) | (keys < g)
        scores = torch.rand(len(pos), n, generator=gen).masked_fill(seen, -1.0)
        picks = scores.topk(min(case.num_random, n), dim=-1)
        table[start : start + len(pos)].scatter_(-1, picks.indices, picks.values >= 0)
    return table


class BigBirdTokens(SoftmaxMechanism):
    """BigBird at token level (Zaheer et al. 2020, Fig. 1): window, global and random tokens.

    Query at position i' = i + Δ sees key j when
    * j is in its window: the symmetric band of :func:`window_bounds` (``window`` = W, keys
      i' − W//2 … i' + W//2), the paper's w neighbours;
    * i' or j is one of the first ``num_global`` positions (global rows and columns); or
    * j is one of the ``num_random`` random keys drawn for position i' (:func:`bigbird_random_tokens`,
      seeded from the case, the same for every backend).
    The window is symmetric even with ``causal=True``: causality then intersects the whole
    pattern (keys after i' are dropped, random ones included). The block-level ``bigbird`` is
    what the HF implementation runs; this is the paper's definition drawn per token.
    """

    name = "bigbird_tokens"
    summary = "BigBird per token: window, global tokens and seeded random tokens per row"
    options = ("window", "num_global", "num_random", "seed", "causal")
    positional = True

    def validate(self, case: Case) -> None:
        super().validate(case)
        require_option(case, "window", self.name)

    def pattern(self, case: Case, device: torch.device | str) -> MaskFn:
        left, right = window_bounds(case.replace(causal=False))
        table = bigbird_random_tokens(case).to(device)
        g, delta = case.num_global, case.offset

        def bigbird_tokens(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            pos = q_idx + delta
            local = (kv_idx >= pos - left) & (kv_idx <= pos + right)
            return local | (kv_idx < g) | (pos < g) | table[pos, kv_idx]

        bigbird_tokens.__name__ = f"bigbird_tokens_w{case.window}_g{g}_r{case.num_random}"
        return bigbird_tokens
