"""KV-cache decoding: the newest tokens attend to a cache that already holds them."""

from __future__ import annotations

from attnperf.case import Case
from attnperf.mechanisms.base import SoftmaxMechanism


class Decode(SoftmaxMechanism):
    """A decode step: ``q_len`` new queries (1 for token-by-token generation) against a cache of
    ``kv_len`` keys whose last ``q_len`` entries are the new tokens' keys.

    Always causal with bottom-right alignment: new token i sees cache entries j ≤ i + Δ. This is
    the step :class:`attnperf.layers.KVCache` runs in a generation loop; backends time it at
    ``q_len = 1`` and long caches, where it is bound by reading the cache.
    """

    name = "decode"
    summary = "decode step: new queries against a KV cache, bottom-right causal"
    positional = True

    def is_causal(self, case: Case) -> bool:
        return True
