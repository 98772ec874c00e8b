"""Local (sliding-window) attention: each query sees a band of keys around its position."""

from __future__ import annotations

import torch

from attnperf.case import Case
from attnperf.mechanisms.base import MaskFn, SoftmaxMechanism, require_option


def window_bounds(case: Case) -> tuple[int, int]:
    """``(left, right)``, inclusive, for ``case.window`` = W.

    * causal (Mistral / HF ``sliding_window=W``): ``(W − 1, 0)``, so each query sees exactly W
      keys, itself included; flash-attn's ``window_size=(W − 1, 0)``.
    * non-causal (Longformer, whose w is the total width): ``(W // 2, W // 2)``, a centred band
      of ``2·(W // 2) + 1`` keys.
    """
    window = require_option(case, "window", "window")
    if case.causal:
        return window - 1, 0
    return window // 2, window // 2


class Window(SoftmaxMechanism):
    """Query i, at key position i' = i + Δ, sees keys j with i' − left ≤ j ≤ i' + right.

    The one definition every library's parameters are mapped to (see :func:`window_bounds`).
    """

    name = "window"
    summary = "sliding window: causal (W-1, 0) as Mistral, symmetric (W//2, W//2) as Longformer"
    options = ("window", "causal")
    positional = True

    def validate(self, case: Case) -> None:
        super().validate(case)
        window_bounds(case)

    def pattern(self, case: Case, device: torch.device | str) -> MaskFn:
        left, right = window_bounds(case)
        delta = case.offset

        def sliding_window(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            pos = q_idx + delta
            return (kv_idx >= pos - left) & (kv_idx <= pos + right)

        sliding_window.__name__ = f"sliding_window_{left}_{right}"
        return sliding_window
