"""``nn.Module``s to drop into a model, each taking ``backend=``: the registry behind a layer.

* :class:`MultiHeadAttention` — self- or cross-attention, MHA / MQA / GQA (``kv_heads``), any
  mechanism, optional positions (``"sinusoidal"``, ``"learned"`` added to the input;
  ``"rope"``, ``"alibi"`` inside the scores), optional :class:`KVCache`, and
  ``return_attention=True`` (eager backend: the only one that materializes the weights).
* :class:`KVCache` and :func:`generate` — a decode loop whose steps are ``q_len = 1`` queries
  against the growing cache (bottom-right causal), equal to one causal pass over the sequence.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from attnperf.functional import attention, case_from_tensors
from attnperf.mechanisms import get_mechanism

POSITIONS = ("sinusoidal", "learned", "rope", "alibi")


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


class MultiHeadAttention(nn.Module):
    """Multi-head attention over ``x [B, T, E]`` (self) or ``memory [B, S, E_kv]`` (cross).

    ``kv_heads`` < ``heads`` gives GQA, 1 gives MQA. ``mechanism`` and the remaining keyword
    options (``causal``, ``window``, …) are those of :func:`attnperf.functional.attention`.
    """

    def __init__(
        self,
        embed_dim: int,
        heads: int,
        *,
        kv_heads: int | None = None,
        kv_dim: int | None = None,
        mechanism: str = "full",
        backend: str = "eager",
        positions: str | None = None,
        max_len: int = 4096,
        bias: bool = True,
        **options: Any,
    ) -> None:
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by heads ({heads})")
        kv_heads = heads if kv_heads is None else kv_heads
        if kv_heads < 1 or heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be divisible by kv_heads ({kv_heads})")
        if positions is not None and positions not in POSITIONS:
            raise ValueError(f"positions must be None or one of {list(POSITIONS)}, got {positions!r}")
        if positions in ("rope", "alibi"):
            if mechanism != "full":
                raise ValueError(
                    f"positions={positions!r} is its own mechanism; it needs mechanism='full', got {mechanism!r}"
                )
            mechanism = positions
        self.mechanism = get_mechanism(mechanism).name
        self.backend, self.options = backend, options
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, embed_dim // heads
        kv_dim = embed_dim if kv_dim is None else kv_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kv_dim, kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(kv_dim, kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.positions: nn.Module | None = None
        if positions == "sinusoidal":
            self.positions = SinusoidalPositions(max_len, embed_dim)
        elif positions == "learned":
            self.positions = LearnedPositions(max_len, embed_dim)

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, heads, self.head_dim).transpose(1, 2)

    def new_cache(self, batch: int, max_len: int, *, dtype: torch.dtype | None = None, device: Any = None) -> KVCache:
        weight = self.k_proj.weight
        return KVCache(
            batch, self.kv_heads, max_len, self.head_dim, dtype=dtype or weight.dtype, device=device or weight.device
        )

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor [B, T, E], got {type(x).__name__}")
        if return_attention and self.backend != "eager":
            raise ValueError(
                f"return_attention=True needs backend='eager' (the one that materializes weights), got {self.backend!r}"
            )
        if self.positions is not None:
            x = self.positions(x, start=cache.length if cache is not None else 0)
        source = x if memory is None else memory
        q = self._split(self.q_proj(x), self.heads)
        k = self._split(self.k_proj(source), self.kv_heads)
        v = self._split(self.v_proj(source), self.kv_heads)
        if cache is not None:
            k, v = cache.append(k, v)
        out = attention(q, k, v, mechanism=self.mechanism, backend=self.backend, **self.options)
        out = self.out_proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
        if not return_attention:
            return out
        case = case_from_tensors(q, k, v, **self.options)
        return out, get_mechanism(self.mechanism).weights(q, k, case)


def generate(layer: MultiHeadAttention, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """A short decode loop: prefill ``prompt [B, T, E]``, then ``steps`` single-token steps, each
    feeding the layer's last output back as the next input. Returns every input fed, ``[B, T + steps, E]``
    (so a test can replay them in one causal pass). The layer must be causal: a decode step is
    bottom-right causal, so only then do the steps equal one pass over the sequence."""
    if not layer.options.get("causal"):
        raise ValueError("generate needs a causal layer (causal=True): decode steps are causal")
    cache = layer.new_cache(prompt.shape[0], prompt.shape[1] + steps, device=prompt.device)
    inputs = [prompt]
    out = layer(prompt, cache=cache)
    assert isinstance(out, torch.Tensor)
    for _ in range(steps):
        token = out[:, -1:]
        inputs.append(token)
        out = layer(token, cache=cache)
        assert isinstance(out, torch.Tensor)
    return torch.cat(inputs, dim=1)
