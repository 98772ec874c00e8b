"""BigBird's block pattern as two dense kernel calls: the global query rows against every key,
and every other query block against its own key blocks, gathered and packed as variable-length
sequences.

A block mask at the kernel's 128-token tiles (flex) computes whole 128 × 128 tiles for BigBird's
64-token blocks: each random 64-block drags in its 128-tile for two query blocks, and every tile
runs the mask function. Here each query block (``block`` queries) is one sequence of a
variable-length call whose keys are exactly its allowed key blocks (sliding, global and random,
:func:`attnperf.mechanisms.sparse.bigbird_blocks`), copied next to each other once per call; the
first ``num_global`` query blocks, which see every key, are one dense call. Non-causal, q_len =
kv_len (Δ = 0). The layout (which key rows each sequence gathers, the sequences' offsets) depends
on the pattern only and is built once, outside the timed call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

#: ``attend(q, k, v, **kw) -> out`` on ``[B, T, H, D]``; ``attend_varlen(q, k, v, cu_seqlens_q,
#: cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw) -> out`` on packed ``[T, H, D]``.
Attend = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """Where each packed sequence's queries and keys come from."""

    global_rows: int  #: queries 0 … global_rows − 1 see every key (one dense call)
    key_rows: torch.Tensor  #: int64, the key positions gathered for the other query blocks, in order
    cu_seqlens_q: torch.Tensor  #: int32 [S + 1], over the batch × query blocks
    cu_seqlens_k: torch.Tensor  #: int32 [S + 1]
    max_seqlen_q: int
    max_seqlen_k: int
    batch: int  #: the sequences repeat for each batch element

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(queries, keys) of every packed sequence of one batch element."""
        q, k = self.cu_seqlens_q.diff().tolist(), self.cu_seqlens_k.diff().tolist()
        per = len(q) // self.batch
        return list(zip(q[:per], k[:per], strict=True))


def layout(table: torch.Tensor, n: int, block: int, num_global: int, batch: int, device: torch.device) -> Layout:
    """The packed layout of the block pattern ``table`` ``[nb, nb]`` over n tokens, for ``batch``."""
    nb = table.shape[0]
    g = min(num_global, nb)
    starts = torch.arange(nb) * block
    lengths = (torch.clamp(torch.tensor(n) - starts, max=block)).tolist()
    rows, q_lens, k_lens = [], [], []
    for qb in range(g, nb):
        blocks = table[qb].nonzero().flatten().tolist()
        rows += [torch.arange(kb * block, kb * block + lengths[kb]) for kb in blocks]
        q_lens.append(lengths[qb])
        k_lens.append(sum(lengths[kb] for kb in blocks))
    key_rows = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)

    def offsets(lens: list[int]) -> torch.Tensor:
        return torch.tensor([0, *lens * batch], dtype=torch.int64).cumsum(0).to(device=device, dtype=torch.int32)

    return Layout(min(g * block, n), key_rows.to(device), offsets(q_lens), offsets(k_lens), max(q_lens, default=0),
                  max(k_lens, default=0), batch)  # fmt: skip


def block_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Layout, attend: Attend, attend_varlen: Attend,
    **kwargs: Any,
) -> torch.Tensor:  # fmt: skip
    """The pattern's attention of ``[B, n, H, D]`` q, k, v; ``kwargs`` (``softmax_scale``) go to both calls."""
    b, n, h, d = q.shape
    parts = []
    if plan.global_rows:
        parts.append(attend(q[:, : plan.global_rows], k, v, causal=False, **kwargs))
    if plan.global_rows < n:
        rest = q[:, plan.global_rows :].reshape(-1, h, d)
        kg, vg = (t[:, plan.key_rows].reshape(-1, t.shape[2], t.shape[3]) for t in (k, v))
        out = attend_varlen(rest, kg, vg, plan.cu_seqlens_q, plan.cu_seqlens_k, plan.max_seqlen_q, plan.max_seqlen_k,
                            causal=False, **kwargs)  # fmt: skip
        parts.append(out.view(b, n - plan.global_rows, h, -1))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def split_pairs(plan: Layout, n: int, tile: int) -> int:
    """(query, key) pairs the two calls multiply in ``tile × tile`` tiles, per batch element and head."""

    def up(x: int) -> int:
        return -(-x // tile) * tile

    dense = up(plan.global_rows) * up(n) if plan.global_rows else 0
    return dense + sum(up(lq) * up(lk) for lq, lk in plan.pairs)
