"""Every attention mechanism, by name. To add one: a class in the module of its kind, then a
line in :data:`MECHANISMS`; tests, benchmarks and ``attnperf list`` pick it up from here."""

from __future__ import annotations

from attnperf.mechanisms.base import Family, Mechanism, SoftmaxMechanism
from attnperf.mechanisms.decode import Decode
from attnperf.mechanisms.dense import Full
from attnperf.mechanisms.linear import Linear
from attnperf.mechanisms.local import Window
from attnperf.mechanisms.positional import ALiBi, RoPE
from attnperf.mechanisms.sparse import BigBird, BigBirdTokens, Fixed, Strided, StridedColumns, TopK

MECHANISMS: dict[str, Mechanism] = {
    m.name: m
    for m in (
        Full(), Window(), TopK(), Strided(), StridedColumns(), Fixed(), BigBird(), BigBirdTokens(), Linear(), ALiBi(),
        RoPE(), Decode(),
    )
}  # fmt: skip


def get_mechanism(name: str | Mechanism) -> Mechanism:
    """The mechanism called ``name``; a ``ValueError`` lists the names when it is unknown."""
    if isinstance(name, Mechanism):
        return name
    try:
        return MECHANISMS[name]
    except KeyError:
        raise ValueError(f"mechanism must be one of {sorted(MECHANISMS)}, got {name!r}") from None


__all__ = ["MECHANISMS", "Family", "Mechanism", "SoftmaxMechanism", "get_mechanism"]
