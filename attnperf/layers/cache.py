"""The KV cache of a decode loop: keys and values of the tokens so far, grown in place."""

from __future__ import annotations

from typing import Any

import torch


class KVCache:
    """Preallocated keys and values ``[B, H_kv, max_len, D]`` and how many are filled."""

    def __init__(
        self, batch: int, kv_heads: int, max_len: int, head_dim: int, *, dtype: torch.dtype, device: Any
    ) -> None:
        self.k = torch.empty(batch, kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' k/v; return views of everything cached so far."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache overflow: {end} tokens for max_len={self.k.shape[2]}")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]
