"""Named variants: a mechanism plus the options and shape that make it the thing people name.

"causal", "cross", "GQA" or "sliding_window" are not separate mathematics (causal is the full
mechanism with ``causal=True``; GQA is a head layout), but they are what benchmarks, the CLI
and the support matrix are asked for. A variant turns a sequence length and a base shape into
a :class:`Case`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from attnperf.case import Case


@dataclass(frozen=True)
class Variant:
    name: str
    mechanism: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)
    #: kv_len as a multiple of seq_len (cross-attention), or None for self-attention.
    kv_len_factor: float | None = None
    #: kv heads from the query heads (MQA: 1; GQA: heads // 4); None = multi-head.
    kv_heads_of: Callable[[int], int] | None = None
    #: Decode: one new query against a cache of seq_len keys.
    decode: bool = False

    def case(
        self,
        seq_len: int,
        *,
        batch: int = 1,
        heads: int = 8,
        head_dim: int = 64,
        dtype: str = "float32",
        device: str = "cpu",
        **overrides: Any,
    ) -> Case:
        """The case for ``seq_len`` tokens (the cache length for decode variants)."""
        shape: dict[str, Any] = {"batch": batch, "heads": heads, "head_dim": head_dim, "dtype": dtype, "device": device}
        shape["q_len"] = 1 if self.decode else seq_len
        if self.decode:
            shape["kv_len"] = seq_len
        elif self.kv_len_factor is not None:
            shape["kv_len"] = max(1, int(seq_len * self.kv_len_factor))
        if self.kv_heads_of is not None:
            shape["kv_heads"] = self.kv_heads_of(heads)
        options = dict(self.options)
        if "top_k" in options:  # the default k never exceeds the keys there are (overrides may, and fail)
            options["top_k"] = min(options["top_k"], shape.get("kv_len", seq_len))
        return Case(**{**shape, **options, **overrides})


def _variants(*items: Variant) -> dict[str, Variant]:
    return {v.name: v for v in items}


VARIANTS: dict[str, Variant] = _variants(
    Variant("full", "full", "dense softmax attention, every key"),
    Variant("causal", "full", "dense causal (bottom-right) attention", {"causal": True}),
    Variant("cross", "full", "cross-attention to a memory twice as long", kv_len_factor=2.0),
    Variant("mqa", "full", "multi-query: one kv head, causal", {"causal": True}, kv_heads_of=lambda h: 1),
    Variant(
        "gqa", "full", "grouped-query: heads/4 kv heads, causal", {"causal": True}, kv_heads_of=lambda h: max(1, h // 4)
    ),
    Variant("local", "window", "symmetric local window of 256 (Longformer)", {"window": 256}),
    Variant("sliding_window", "window", "causal sliding window of 256 (Mistral)", {"window": 256, "causal": True}),
    Variant("topk", "topk", "top-32 keys per query", {"top_k": 32}),
    Variant("strided", "strided", "causal strided sparse, stride 64", {"stride": 64, "causal": True}),
    Variant(
        "strided_columns",
        "strided_columns",
        "causal strided columns 0, s, 2s, … (masks scripts), stride round(√n)",
        {"causal": True},
    ),
    Variant(
        "fixed", "fixed", "causal fixed pattern (Child et al.), block round(√n), 1 summary column", {"causal": True}
    ),
    Variant(
        "strided_sqrt", "strided", "causal strided sparse (Child et al.), stride round(√n): O(n√n)", {"causal": True}
    ),
    Variant(
        "bigbird_tokens",
        "bigbird_tokens",
        "BigBird per token: window 64, 2 global, 3 random per row",
        {"window": 64, "num_global": 2, "num_random": 3},
    ),
    Variant(
        "bigbird",
        "bigbird",
        "BigBird blocks of 64: 1 global, 2 random",
        {"block": 64, "num_global": 1, "num_random": 2},
    ),
    Variant("linear", "linear", "non-causal linear attention (elu+1)"),
    Variant("linear_causal", "linear", "causal linear attention (elu+1)", {"causal": True}),
    Variant("alibi", "alibi", "causal attention with ALiBi bias", {"causal": True}),
    Variant("rope", "rope", "causal attention with RoPE on q and k", {"causal": True}),
    Variant("decode", "decode", "one new token against a KV cache of seq_len", decode=True),
)


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {name!r}") from None
