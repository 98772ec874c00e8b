"""Full scaled dot-product attention (Vaswani et al. 2017), causal or not, any head layout."""

from __future__ import annotations

from attnperf.mechanisms.base import SoftmaxMechanism


class Full(SoftmaxMechanism):
    """``softmax(q kᵀ / √D) v`` over every key; with ``causal``, keys j ≤ i + Δ (bottom-right).

    Self-attention, cross-attention (``kv_len ≠ q_len``), MQA and GQA are shapes of this one
    mechanism: the case's ``kv_len`` and ``kv_heads`` select them.
    """

    name = "full"
    summary = "dense softmax attention; causal, cross, MQA and GQA are case shapes"
    options = ("causal",)
