"""Positions added to a layer's input: the sinusoidal table (Vaswani et al. 2017) and learned ones."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """``[max_len, dim]``: sin on even, cos on odd dimensions, wavelengths 2π … 10000·2π
    (Vaswani et al. 2017, §3.5)."""
    position = torch.arange(max_len, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table.float()


class SinusoidalPositions(nn.Module):
    """Adds the fixed sinusoidal encoding of positions ``start … start + T − 1`` to ``x [B, T, E]``."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_len, dim), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return x + self.table[start : start + x.shape[1]].to(x.dtype)


class LearnedPositions(nn.Module):
    """Adds a learned embedding per absolute position (BERT, GPT-2) to ``x [B, T, E]``."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_len, dim)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return x + self.embedding.weight[start : start + x.shape[1]].to(x.dtype)
