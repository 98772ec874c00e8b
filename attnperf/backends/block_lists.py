"""A block pattern as the block-sparse lists of flash-attn-4 (``block_sparse_tensors``): one kernel
call that visits only the allowed key blocks of each query block.

flash-attn-4's forward takes, per query block, a count and a list of key blocks to compute whole
("full" blocks) and a second list to compute under a ``mask_mod`` ("mask" blocks). BigBird's
blocks are all whole, so every allowed block is a full block and the mask lists are empty: no
gathers, no second call, tiles sized to the pattern's blocks (``_fit_sm90_fwd_tile_to_block_sparsity``
in ``flash_attn/cute/interface.py``). The lists are sorted ascending: the kernel walks a list from
its end and masks the sequence's end only on the first block it visits, so the last (partial)
block must come last. Built once per prepare, outside the timed call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockLists:
    """flash-attn-4's ``BlockSparseTensorsTorch`` fields, broadcast over batch and heads ([1, 1, …])."""

    full_block_cnt: torch.Tensor  #: int32 [1, 1, nb]: allowed key blocks of each query block
    full_block_idx: torch.Tensor  #: int32 [1, 1, nb, nb]: their indices first, ascending; then padding
    mask_block_cnt: torch.Tensor  #: int32 [1, 1, nb]: zeros (no block needs a mask_mod)
    mask_block_idx: torch.Tensor  #: int32 [1, 1, nb, nb]: zeros
    block: int  #: tokens per block, queries and keys alike


def block_lists(table: torch.Tensor, block: int, device: torch.device | str) -> BlockLists:
    """The lists of a ``[nb, nb]`` boolean block table (every allowed block whole)."""
    nb = table.shape[0]
    # A stable sort of "not allowed" puts the allowed blocks first, each group in ascending order.
    order = torch.argsort((~table).to(torch.int8), dim=1, stable=True).to(torch.int32)
    zeros_cnt = torch.zeros(1, 1, nb, dtype=torch.int32, device=device)
    return BlockLists(
        full_block_cnt=table.sum(1).to(torch.int32)[None, None].to(device),
        full_block_idx=order[None, None].to(device),
        mask_block_cnt=zeros_cnt,
        mask_block_idx=torch.zeros(1, 1, nb, nb, dtype=torch.int32, device=device),
        block=block,
    )


def one_call_pairs(table: torch.Tensor, block: int) -> int:
    """(query, key) pairs the one call computes: every allowed block as a whole tile."""
    return int(table.sum()) * block * block
