"""A decode loop: q_len = 1 steps against a growing KV cache, equal to one causal pass."""

from __future__ import annotations

import torch

from attnperf.layers.attention import MultiHeadAttention


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
