"""MultiHeadAttention: self- or cross-attention over any mechanism and backend, with its arguments
and inputs checked and named."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnperf.backends import Unsupported, get_backend
from attnperf.backends.eager import softmax_probs
from attnperf.backends.sdpa import Sdpa, only_kernel
from attnperf.case import Case
from attnperf.correctness import run_unsupported_aware
from attnperf.functional import attention, case_from_tensors, check_options
from attnperf.layers.cache import KVCache
from attnperf.layers.masks import (
    MASK_BACKENDS,
    _refuse_binary_float,
    binary_mask_bias,
    empty_rows,
    masked_scores_bias,
    user_bias,
)
from attnperf.layers.positions import LearnedPositions, SinusoidalPositions
from attnperf.mechanisms import SoftmaxMechanism, get_mechanism
from attnperf.mechanisms.base import expand_kv

POSITIONS = ("sinusoidal", "learned", "rope", "alibi")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _alias(name: str, value: Any, alias: str, alias_value: Any) -> Any:
    """``value``, or the same thing given under its other name; both given must agree."""
    if alias_value is None:
        return value
    if value is not None and value != alias_value:
        raise ValueError(f"{name}={value!r} and {alias}={alias_value!r} name one thing; give one of them")
    return alias_value


def _check_arguments(
    e_name: str, embed_dim: Any, h_name: str, heads: Any, kv_heads: Any, dropout: Any, options: dict[str, Any]
) -> None:
    """The constructor's numbers and mechanism options: a ``ValueError`` naming the argument and what it allows."""
    _positive_int(e_name, embed_dim)
    _positive_int(h_name, heads)
    if embed_dim % heads:
        raise ValueError(f"{h_name} must divide {e_name}={embed_dim} (allowed: {_divisors(embed_dim)}), got {heads}")
    if kv_heads is not None:
        _positive_int("kv_heads", kv_heads)
        if heads % kv_heads:
            raise ValueError(f"kv_heads must divide {h_name}={heads} (allowed: {_divisors(heads)}), got {kv_heads}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1) (the chance to drop a weight), got {dropout!r}")
    check_options(options)
    # The options' own checks (window >= 1, causal a bool, …) now rather than at the first call.
    Case(heads=heads, kv_heads=kv_heads, head_dim=embed_dim // heads, q_len=1, **options)


class MultiHeadAttention(nn.Module):
    """Multi-head attention over ``query [B, T, E]``: self, cross (``key``/``value``), MHA/MQA/GQA.

    ``kv_heads`` < ``heads`` gives GQA, 1 gives MQA. ``mechanism`` and the remaining keyword
    options (``causal``, ``window``, …) are those of :func:`attnperf.functional.attention`.

    Every argument and every call's tensors and masks are checked first: a ``ValueError`` names
    the argument and what it allows, or the input and the shape it needs.

    nn.MultiheadAttention's names are accepted too, so a model's construction call carries over:
    ``num_heads`` (= ``heads``), ``d_model`` (= ``embed_dim``), ``kdim`` / ``vdim`` (key and
    value widths; ``kv_dim`` sets both), ``dropout`` and ``batch_first`` (default True here:
    ``[B, T, E]``; False reads ``[T, B, E]`` as nn.MultiheadAttention's default does).
    :class:`MultiheadAttention` (nn's spelling) also returns what nn's layer returns.

    Per call (``forward``):

    * ``attn_mask``: SDPA's convention, boolean True = attend, or float added to the scores;
      ``key_padding_mask``: nn.MultiheadAttention's, boolean True = ignore the key. Both combine
      with the mechanism's own pattern. They need a backend of :data:`MASK_BACKENDS`, which
      pass them to SDPA's ``attn_mask`` (eager adds them itself). A query row the masks leave no
      key gets zero weights and a zero attention output on every backend (SDPA's convention;
      the drop-in :class:`MultiheadAttention` follows nn instead).
    * ``mask``: the tutorials' 0 = masked convention (``masked_fill(mask == 0, -inf)``), any dtype;
      a float ``attn_mask`` / ``key_padding_mask`` of only 0s and 1s is refused as ambiguous.
      ``is_causal``: SDPA's per-call switch, where Lq == Lk (see :meth:`forward`).
    * ``dropout`` applies to the attention weights in training mode only, as
      nn.MultiheadAttention and SDPA's ``dropout_p`` do; :data:`MASK_BACKENDS` honour it (SDPA
      through ``dropout_p``; eager with ``F.dropout`` on the weights). Others refuse to train with
      dropout rather than silently skip it.
    * ``need_weights`` / ``return_attention``: the weights ``[B, H, Lq, Lk]`` from any backend.
      Only eager materializes them while computing; for the others they are recomputed on the
      reference path (the mechanism's own definition, plus the caller's masks) from the same
      q and k — the weights before dropout, since dropout's random draw is not reproducible.
    """

    def __init__(
        self,
        embed_dim: int | None = None,
        heads: int | None = None,
        *,
        num_heads: int | None = None,
        d_model: int | None = None,
        kv_heads: int | None = None,
        kv_dim: int | None = None,
        kdim: int | None = None,
        vdim: int | None = None,
        dropout: float = 0.0,
        batch_first: bool = True,
        mechanism: str = "full",
        backend: str = "eager",
        positions: str | None = None,
        max_len: int = 4096,
        bias: bool = True,
        return_attention: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        embed_dim = _alias("embed_dim", embed_dim, "d_model", d_model)
        heads = _alias("heads", heads, "num_heads", num_heads)
        # Errors name the argument as the caller spelled it (nn's and the tutorials' names too).
        e_name, h_name = (
            ("d_model" if d_model is not None else "embed_dim"),
            ("num_heads" if num_heads is not None else "heads"),
        )
        if embed_dim is None or heads is None:
            raise ValueError("embed_dim (or d_model) and heads (or num_heads) are required")
        _check_arguments(e_name, embed_dim, h_name, heads, kv_heads, dropout, options)
        for name, width in (("kdim", kdim), ("vdim", vdim), ("kv_dim", kv_dim), ("max_len", max_len)):
            if width is not None:
                _positive_int(name, width)
        for name, flag in (("batch_first", batch_first), ("bias", bias), ("return_attention", return_attention)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        kv_heads = heads if kv_heads is None else kv_heads
        if positions is not None and positions not in POSITIONS:
            raise ValueError(f"positions must be None or one of {list(POSITIONS)}, got {positions!r}")
        if positions in ("rope", "alibi"):
            if mechanism != "full":
                raise ValueError(
                    f"positions={positions!r} is its own mechanism; it needs mechanism='full', got {mechanism!r}"
                )
            mechanism = positions
        self.mechanism = get_mechanism(mechanism).name
        self.backend = get_backend(backend).name
        self.options = options
        self.dropout, self.batch_first, self.return_attention = dropout, batch_first, return_attention
        self.embed_dim, self.heads, self.kv_heads, self.head_dim = embed_dim, heads, kv_heads, embed_dim // heads
        kdim = kv_dim if kdim is None else kdim
        vdim = kv_dim if vdim is None else vdim
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim if kdim is None else kdim, kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim if vdim is None else vdim, kv_heads * self.head_dim, bias=bias)
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
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        *,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        cache: KVCache | None = None,
        return_attention: bool | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``query [B, T, E]``; ``key`` (and ``value``, default ``key``) for cross-attention.

        Returns the output, or ``(output, weights [B, H, Lq, Lk])`` with ``need_weights`` or
        ``return_attention`` (the same switch under nn's and attnperf's names; the constructor's
        ``return_attention=True`` makes it the default of every call). A query row that the masks
        leave no key to attend gets zero weights and a zero attention output (SDPA's convention),
        whichever backend runs and whether or not the weights are asked for.

        ``mask``: the tutorials' convention, ``scores.masked_fill(mask == 0, -inf)``: any dtype,
        0 = masked, anything else = attend; ``[Lq, Lk]``, ``[B|1, Lq|1, Lk]`` (heads added) or
        ``[B|1, H|1, Lq|1, Lk]``. A float ``attn_mask`` or ``key_padding_mask`` holding only 0s and
        1s is refused: added to the scores (SDPA's and nn's float convention) its 0s would mask
        nothing, so it is most likely such a mask given to the wrong argument. ``is_causal=True``:
        SDPA's per-call causal switch, taken where SDPA's top-left and attnperf's bottom-right
        alignments agree (``Lq == Lk``); otherwise refused, saying which to use."""
        self._check_inputs(query, key, value)
        if not self.batch_first:
            query, key, value = (t if t is None else t.transpose(0, 1) for t in (query, key, value))
        if cache is not None:
            self._check_cache(cache, query.shape[0])
        if self.positions is not None:
            query = self.positions(query, start=cache.length if cache is not None else 0)
        key = query if key is None else key
        value = key if value is None else value
        q = self._split(self.q_proj(query), self.heads)
        k = self._split(self.k_proj(key), self.kv_heads)
        v = self._split(self.v_proj(value), self.kv_heads)
        if cache is not None:
            k, v = cache.append(k, v)
        dropout = self.dropout if self.training else 0.0
        weights_asked = need_weights or (self.return_attention if return_attention is None else return_attention)
        options = self._call_options(is_causal, q.shape[2], k.shape[2])
        if self.checks_binary_float_masks:
            for name, m in (("attn_mask", attn_mask), ("key_padding_mask", key_padding_mask)):
                _refuse_binary_float(name, m)
        extra = user_bias(
            attn_mask, key_padding_mask, q.shape[0], self.heads, q.shape[2], k.shape[2], q.dtype, q.device
        )
        if mask is not None:
            binary = binary_mask_bias(mask, q.shape[0], self.heads, q.shape[2], k.shape[2], q.dtype, q.device)
            extra = binary if extra is None else extra + binary
        empty_value = self._empty_row_value(weights_asked)
        applied = weights_asked and dropout > 0.0 and self.weights_after_dropout
        if applied and self.backend != "eager":
            raise ValueError(
                f"{type(self).__module__}.{type(self).__name__} returns the weights after dropout (the ones its "
                f"output is computed with), which only backend='eager' materializes; got backend={self.backend!r}: "
                "use backend='eager', or layer.eval() / dropout=0 for weights without dropout"
            )
        dropped = None
        if extra is None and dropout == 0.0:
            out = attention(q, k, v, mechanism=self.mechanism, backend=self.backend, **options)
        else:
            out, dropped = self._masked_attention(q, k, v, extra, dropout, empty_value, options)
        out = self.out_proj(out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not weights_asked:
            return out
        if applied:
            assert dropped is not None  # the eager path ran: it keeps the weights it applied
            return out, dropped
        return out, self._weights(q, k, extra, empty_value, options)

    #: In training with dropout, return the weights after dropout (those the output was computed
    #: with), as the write-ups' layers do (:mod:`attnperf.layers.zoo`); attnperf's and nn's layers
    #: return them before dropout, the one reproducible answer on every backend.
    weights_after_dropout = False

    #: Refuse float masks of only 0s and 1s (see :meth:`forward`); nn's drop-in adds them, as nn does.
    checks_binary_float_masks = True

    def _call_options(self, is_causal: bool, q_len: int, k_len: int) -> dict[str, Any]:
        """The layer's mechanism options for this call, with SDPA's per-call ``is_causal``."""
        if not isinstance(is_causal, bool):
            raise ValueError(f"is_causal must be True or False, got {is_causal!r}")
        if not is_causal or self.options.get("causal"):
            return self.options
        if q_len != k_len:
            raise ValueError(
                f"is_causal=True with Lq={q_len} != Lk={k_len} is ambiguous: SDPA aligns the causal mask "
                f"top-left (query i sees keys <= i), attnperf bottom-right (queries are the last Lq keys, as "
                f"in KV-cache decoding). Build the layer with causal=True for bottom-right, or pass attn_mask"
            )
        return {**self.options, "causal": True}

    def _empty_row_value(self, weights_asked: bool) -> float:
        """The attention output (before ``out_proj``) and the weights of a query row that may attend
        to no key: 0, SDPA's convention, so that every backend gives one answer and the weights
        returned agree with the output (eager's softmax alone would give NaN, SDPA's kernels 0)."""
        return 0.0

    def _layout(self, batch: object, seq: object, width: object, unbatched: bool = False) -> str:
        if unbatched:
            return f"({seq}, {width})"
        return f"({batch}, {seq}, {width})" if self.batch_first else f"({seq}, {batch}, {width})"

    def _check_inputs(self, query: Any, key: Any, value: Any, *, unbatched: bool = False) -> None:
        """Each tensor's rank, widths, batch, dtype and device against the layer: a ``ValueError``
        naming the input and the shape it must have, before any projection fails obscurely."""
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t is not None and not isinstance(t, torch.Tensor):
                raise TypeError(
                    f"{name} must be a torch.Tensor {self._layout('batch', 'seq', 'E')}, got {type(t).__name__}"
                )
        if value is not None and key is None:
            raise ValueError("value needs key: pass key and value, or key alone (used as both)")
        b_axis, s_axis = (None, 0) if unbatched else ((0, 1) if self.batch_first else (1, 0))
        rank = 2 if unbatched else 3
        batch = "batch" if b_axis is None or query.dim() != rank else query.shape[b_axis]
        expected = [("query", query, "batch", "seq", self.embed_dim)]
        if key is not None:
            expected.append(("key", key, batch, "seq", self.k_proj.in_features))
        if value is not None:
            seq = key.shape[s_axis] if key.dim() == rank else "seq"
            expected.append(("value", value, batch, seq, self.v_proj.in_features))
        weight = self.q_proj.weight
        for name, t, b, s, width in expected:
            want = self._layout(b, s, width, unbatched)
            ok = t.dim() == rank and t.shape[-1] == width
            ok = ok and (b_axis is None or not isinstance(b, int) or t.shape[b_axis] == b)
            ok = ok and (not isinstance(s, int) or t.shape[s_axis] == s)
            if not ok:
                hint = ""
                if t.dim() == 2 and not unbatched:
                    hint = (
                        f"; one unbatched sequence needs its batch dimension: {name}.unsqueeze"
                        f"({0 if self.batch_first else 1})"
                    )
                raise ValueError(f"{name}: expected {want}, got {tuple(t.shape)}{hint}")
            if t.dtype != weight.dtype and not torch.is_autocast_enabled(t.device.type):  # autocast casts both
                raise ValueError(
                    f"{name}: dtype {t.dtype}, but the layer's parameters are {weight.dtype}; "
                    f"convert one of them ({name}.to({weight.dtype}) or layer.to({t.dtype}))"
                )
            if t.device != weight.device:
                raise ValueError(
                    f"{name}: on {t.device}, but the layer's parameters are on {weight.device}; move one of them"
                )

    def _check_cache(self, cache: KVCache, batch: int) -> None:
        """The cache was made for this layer and this batch."""
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache (layer.new_cache(batch, max_len)), got {type(cache).__name__}")
        made = (cache.k.shape[0], cache.k.shape[1], cache.k.shape[3])
        if made != (batch, self.kv_heads, self.head_dim):
            raise ValueError(
                f"cache: made for (batch, kv_heads, head_dim) = {made}, this call needs "
                f"{(batch, self.kv_heads, self.head_dim)}; make it with layer.new_cache({batch}, max_len)"
            )

    def _case(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, options: dict[str, Any]
    ) -> tuple[SoftmaxMechanism, Case]:
        mech = get_mechanism(self.mechanism)
        if not isinstance(mech, SoftmaxMechanism):
            raise ValueError(
                f"attn_mask, key_padding_mask and dropout need a softmax mechanism; {mech.name} is {mech.family}"
            )
        case = case_from_tensors(q, k, v, **options)
        mech.validate(case)
        return mech, case

    def _masked_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        extra: torch.Tensor | None,
        dropout: float,
        empty_value: float,
        options: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention with the caller's masks and/or dropout, through SDPA's ``attn_mask`` / ``dropout_p``;
        rows the masks leave empty set to ``empty_value``. With it, on eager, the weights it applied
        (after dropout; None on SDPA's kernels, which never materialize them)."""
        if self.backend not in MASK_BACKENDS:
            raise ValueError(
                f"attn_mask, key_padding_mask and dropout in training need backend in {list(MASK_BACKENDS)}, "
                f"got {self.backend!r}"
            )
        mech, case = self._case(q, k, v, options)
        backend = get_backend(self.backend)
        reason = backend.supports(mech, case)
        if reason is not None:
            raise Unsupported(f"{backend.name} cannot run {mech.name} on {case.id}: {reason}")
        transform = backend.qk_transform(mech, case, q.device, q.dtype)
        if transform is not None:
            q, k = transform(q, k)
        total = masked_scores_bias(mech, case, q.device, q.dtype, extra)
        if self.backend == "eager":
            scores = q @ expand_kv(k, case.heads).transpose(-1, -2) * case.scale
            if total is not None:
                scores = scores + total
            weights = F.dropout(softmax_probs(scores, v.dtype), p=dropout, training=dropout > 0)
            out = weights @ expand_kv(v, case.heads)
        else:
            weights = None
            kwargs: dict[str, Any] = {"attn_mask": total, "dropout_p": dropout, "scale": case.scale}
            kwargs["enable_gqa"] = case.n_kv_heads != case.heads
            if isinstance(backend, Sdpa):
                with only_kernel(backend.kernel):
                    out = run_unsupported_aware(backend, lambda: F.scaled_dot_product_attention(q, k, v, **kwargs))
            else:  # "sdpa": SDPA picks its kernel
                out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        empty = empty_rows(total)
        if empty is None:
            return out, weights
        return out.masked_fill(empty, empty_value), None if weights is None else weights.masked_fill(empty, empty_value)

    def _weights(
        self, q: torch.Tensor, k: torch.Tensor, extra: torch.Tensor | None, empty_value: float, options: dict[str, Any]
    ) -> torch.Tensor:
        """``[B, H, Lq, Lk]`` weights on the reference path (before dropout), masks included; rows the
        masks leave empty set to ``empty_value``, as the output's are."""
        mech = get_mechanism(self.mechanism)
        case = case_from_tensors(q, k, k, **options)
        if extra is None:
            return mech.weights(q, k, case)
        soft, case = self._case(q, k, k, options)
        transform = soft.qk_transform(case, q.device, q.dtype)
        if transform is not None:
            q, k = transform(q, k)
        scores = q @ expand_kv(k, case.heads).transpose(-1, -2) * case.scale
        total = masked_scores_bias(soft, case, q.device, q.dtype, extra)
        weights = torch.softmax(scores if total is None else scores + total, dim=-1)
        empty = empty_rows(total)
        return weights if empty is None else weights.masked_fill(empty, empty_value)
