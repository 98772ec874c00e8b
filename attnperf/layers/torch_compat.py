"""MultiheadAttention: ``torch.nn.MultiheadAttention``'s constructor, call, masks and return values
over attnperf's layer, to replace it in a model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnperf.layers.attention import MultiHeadAttention


class MultiheadAttention(MultiHeadAttention):
    """A drop-in for ``torch.nn.MultiheadAttention``: its constructor, call and return values.

    ``MultiheadAttention(embed_dim, num_heads, dropout=0.0, bias=True, kdim=None, vdim=None,
    batch_first=False)`` and ``forward(query, key, value, key_padding_mask=None,
    need_weights=True, attn_mask=None, average_attn_weights=True, is_causal=False)`` return
    ``(output, weights or None)`` as nn's layer does, with weights averaged over heads unless
    ``average_attn_weights=False``. ``is_causal`` is nn's hint that ``attn_mask`` is the causal
    mask: as in nn it needs ``attn_mask``, and the mask is applied (nn may use SDPA's causal mode
    instead, which gives the same result when the hint is true; nn leaves a false hint undefined).
    The one convention that differs from
    :class:`MultiHeadAttention`: a boolean ``attn_mask`` here means True = *not allowed*
    (nn.MultiheadAttention's convention), not SDPA's True = attend. Plus ``backend=`` and the
    attnperf options. :meth:`from_torch` copies an ``nn.MultiheadAttention``'s weights.
    Not supported: ``add_bias_kv``, ``add_zero_attn`` and ``dropout=1.0`` or negative (nn accepts
    those two values; a ValueError says what is allowed). A query row the masks leave no key gives
    what nn gives (see :meth:`_empty_row_value`) on every backend.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        **options: Any,
    ) -> None:
        if add_bias_kv or add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn are not supported (allowed: False)")
        super().__init__(
            embed_dim=embed_dim,
            num_heads=num_heads,
            dropout=dropout,
            bias=bias,
            kdim=kdim,
            vdim=vdim,
            batch_first=batch_first,
            **options,
        )

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """nn.MultiheadAttention's call; unbatched ``[T, E]`` inputs too, as nn takes them (key and
        value 2-D as well, ``key_padding_mask [S]``, ``attn_mask [L, S]`` or ``[num_heads, L, S]``)."""
        if is_causal and attn_mask is None:  # nn.MultiheadAttention refuses it too (a RuntimeError there)
            raise ValueError(
                "is_causal=True is a hint that attn_mask is the causal mask; it needs attn_mask "
                "(nn.Transformer.generate_square_subsequent_mask(L) makes one)"
            )
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if query.dim() not in (2, 3):
            raise ValueError(
                f"query: expected {self._layout('batch', 'seq', self.embed_dim)} or unbatched "
                f"{self._layout(None, 'seq', self.embed_dim, unbatched=True)}, got {tuple(query.shape)}"
            )
        unbatched = query.dim() == 2
        self._check_inputs(query, key, value, unbatched=unbatched)
        if unbatched:
            if key_padding_mask is not None and (
                not isinstance(key_padding_mask, torch.Tensor) or tuple(key_padding_mask.shape) != (key.shape[0],)
            ):
                shape = getattr(key_padding_mask, "shape", type(key_padding_mask).__name__)
                raise ValueError(
                    f"key_padding_mask: expected ({key.shape[0]},) [S] for an unbatched query, got {shape}"
                )
            query, key, value = (t.unsqueeze(1 if not self.batch_first else 0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask[None]
        if isinstance(attn_mask, torch.Tensor) and attn_mask.dtype == torch.bool:
            attn_mask = ~attn_mask  # nn.MultiheadAttention: True = not allowed; SDPA: True = attend
        result = super().forward(
            query, key, value, key_padding_mask=key_padding_mask, attn_mask=attn_mask, need_weights=need_weights
        )
        out, weights = result if isinstance(result, tuple) else (result, None)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if unbatched:
            out = out.squeeze(1 if not self.batch_first else 0)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights

    checks_binary_float_masks = False  # nn adds a float mask of 0s and 1s; so does its drop-in

    def _empty_row_value(self, weights_asked: bool) -> float:
        """nn.MultiheadAttention's answer for a query row the masks leave no key: with
        ``need_weights=True`` its softmax gives NaN weights and a NaN output row; without, it calls
        SDPA, which gives a zero attention output (the row's output is ``out_proj``'s bias). Both
        are kept, on every backend. (nn's inference fast path — eval, no grad, batch_first, one
        tensor as query, key and value — gives NaN without weights too; the drop-in follows nn's
        general path.)"""
        return float("nan") if weights_asked else 0.0

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention, **options: Any) -> MultiheadAttention:
        """A layer computing what ``mha`` computes: same shape arguments, weights copied."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn are not supported (allowed: False)")
        layer = cls(
            mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=mha.in_proj_bias is not None, kdim=mha.kdim,
            vdim=mha.vdim, batch_first=mha.batch_first, **options,
        )  # fmt: skip
        e = mha.embed_dim
        with torch.no_grad():
            if mha.in_proj_weight is not None:
                weights = mha.in_proj_weight.split(e)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            for proj, weight in zip((layer.q_proj, layer.k_proj, layer.v_proj), weights, strict=True):
                proj.weight.copy_(weight)
            if mha.in_proj_bias is not None:
                for proj, b in zip((layer.q_proj, layer.k_proj, layer.v_proj), mha.in_proj_bias.split(e), strict=True):
                    proj.bias.copy_(b)
            layer.out_proj.load_state_dict(mha.out_proj.state_dict())
        return layer.to(mha.out_proj.weight.dtype)
