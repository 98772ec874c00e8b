"""``nn.Module``s to drop into a model, each taking ``backend=``: the registry behind a layer.

* :class:`MultiHeadAttention` — self- or cross-attention, MHA / MQA / GQA (``kv_heads``), any
  mechanism, optional positions (``"sinusoidal"``, ``"learned"`` added to the input;
  ``"rope"``, ``"alibi"`` inside the scores), optional :class:`KVCache`, per-call
  ``attn_mask`` / ``key_padding_mask``, dropout, and the weights from any backend.
* :class:`MultiheadAttention` — the same with ``torch.nn.MultiheadAttention``'s constructor,
  call, mask convention and return values, to replace it in a model (``from_torch`` copies one).
* :class:`attnperf.layers.zoo.MultiHeadAttention` — the attention write-ups' conventions (every
  call returns ``(output, weights)``, ``mask`` positional, the weights after dropout in training),
  so their snippets run after one changed import line.
* :class:`KVCache` and :func:`generate` — a decode loop whose steps are ``q_len = 1`` queries
  against the growing cache (bottom-right causal), equal to one causal pass over the sequence.
"""

from attnperf.layers.attention import POSITIONS, MultiHeadAttention
from attnperf.layers.cache import KVCache
from attnperf.layers.decode import generate
from attnperf.layers.masks import MASK_BACKENDS, user_bias
from attnperf.layers.positions import LearnedPositions, SinusoidalPositions, sinusoidal_table
from attnperf.layers.torch_compat import MultiheadAttention

__all__ = ["MASK_BACKENDS", "POSITIONS", "KVCache", "LearnedPositions", "MultiHeadAttention", "MultiheadAttention",
           "SinusoidalPositions", "generate", "sinusoidal_table", "user_bias"]  # fmt: skip
