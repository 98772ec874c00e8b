"""The write-ups' layer conventions, for snippets that should run after one changed import line::

    from attnperf.layers.zoo import MultiHeadAttention

    attn = MultiHeadAttention(d_model=512, num_heads=8, dropout=0.1)
    output, attention_weights = attn(query, key, value)   # (2, 128, 512), (2, 8, 128, 128)

The "attention zoo" write-ups' ``MultiHeadAttention`` computes ``weights = dropout(softmax(scores))``
and returns ``(output, weights)`` from every call, with ``forward(query, key, value, mask=None)``
and the tutorials' ``masked_fill(mask == 0, ...)`` mask. attnperf's
:class:`attnperf.layers.MultiHeadAttention` returns the output alone unless asked (weights off a
fused kernel cost a recomputed score matrix) and, asked, the weights before dropout. Unpacking its
single ``[B, T, E]`` output into two names would silently split the batch; this subclass keeps the
write-up's conventions instead:

* every call returns ``(output, weights [B, H, Lq, Lk])`` (``return_attention=False`` at
  construction or per call gives the output alone);
* ``mask`` is the fourth positional argument, 0 = masked (attnperf's ``mask=``);
* in training with dropout the weights are the ones the output was computed with, after dropout,
  as the write-up's are. Only the eager backend materializes those; any other backend is refused
  in that case with a message naming the convention, never answered with other weights.

A query row the mask leaves no key gets zero weights and a zero output (attnperf's and SDPA's
convention): the write-ups' ``-1e9`` fill would average every value there instead.
"""

from __future__ import annotations

from typing import Any

import torch

from attnperf.layers import attention as base


class MultiHeadAttention(base.MultiHeadAttention):
    """:class:`attnperf.layers.MultiHeadAttention` with the write-ups' call and return values."""

    weights_after_dropout = True

    def __init__(self, *args: Any, return_attention: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, return_attention=return_attention, **kwargs)

    def forward(  # type: ignore[override]  (mask positional, as the write-ups' forward takes it)
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(output, weights)`` of ``query [B, T, E]`` against ``key`` / ``value``; ``mask``: 0 = masked.
        Every keyword of :meth:`attnperf.layers.MultiHeadAttention.forward` is taken too."""
        return super().forward(query, key, value, mask=mask, **kwargs)
