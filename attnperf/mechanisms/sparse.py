"""Sparse attention: top-k (data-dependent) and fixed patterns (strided, BigBird)."""

from __future__ import annotations

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

    def weights(self, q: torch.Tensor, k: torch.Tensor, case: Case, rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is not None:
            q = q[:, :, rows.to(q.device)]
        scores = q @ expand_kv(k, case.heads).transpose(-1, -2) * case.scale
        if case.causal:
            scores = scores.masked_fill(~dense_causal(case, q.device, rows), float("-inf"))
        keep = topk_keep(scores, require_option(case, "top_k", self.name))
        return torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)


class Strided(SoftmaxMechanism):
    """Strided sparse attention (Child et al. 2019, "strided" pattern), stride s.

    Query at position i' = i + Δ sees key j when it is one of the last s positions
    (``|i' − j| < s``) or a multiple of s away (``(i' − j) mod s == 0``). The paper's pattern
    is causal (``causal=True``); without it the pattern is mirrored to both sides.
    """

    name = "strided"
    summary = "strided sparse (Child et al. 2019): local band of s plus every s-th key"
    options = ("stride", "causal")
    positional = True

    def validate(self, case: Case) -> None:
        super().validate(case)
        require_option(case, "stride", self.name)

    def pattern(self, case: Case, device: torch.device | str) -> MaskFn:
        stride, delta = require_option(case, "stride", self.name), case.offset

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
