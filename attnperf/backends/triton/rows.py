"""What a program of a row-wise kernel owns: ``BLOCK_T`` positions of one (batch, head), whole
rows of the head dim. The RoPE rotation (:mod:`.rotary`) and the strided merge
(:mod:`.strided_merge`) both work this way: one division per program, none per element."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def head_block(H, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's batch and head (int64, for offsets past 2³¹), positions and columns."""
    bh = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    return (bh // H).to(tl.int64), (bh % H).to(tl.int64), t, tl.arange(0, BLOCK_D)
