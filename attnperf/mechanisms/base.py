"""What every mechanism is: a name, its options, validation and a float64 reference.

Three families share the code of their backends:

* :class:`SoftmaxMechanism` — ``softmax(q kᵀ · scale + bias) v`` over the keys a mask allows.
  The mask and bias are given as *index functions* (the vocabulary of ``flex_attention``'s
  ``mask_mod`` / ``score_mod``): ``mask_fn(q_idx, kv_idx) -> bool`` and
  ``bias_fn(h, q_idx, kv_idx) -> float``, broadcasting over tensors of indices. One definition
  then serves a dense mask (eager, SDPA), a block mask (flex), tile masks (tiled) and a picture.
* top-k and linear attention, whose results depend on the data or drop the softmax; they
  define their own reference.

Shapes: ``q`` ``[B, H, Lq, D]``, ``k``/``v`` ``[B, H_kv, Lk, D]``, output ``[B, H, Lq, D]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from enum import Enum
from typing import ClassVar

import torch

from attnperf.case import Case

MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BiasFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
QKTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
#: ``(x, cos, sin) -> x`` rotated by its tables (RoPE), written in the layout the transform was asked for.
Rotation = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Family(Enum):
    """What a backend must compute for a mechanism; backends, the FLOP model and the memory model
    each dispatch on it once (``match mechanism.family``)."""

    SOFTMAX = "softmax"  #: softmax over the keys a mask allows, with a bias and a q/k transform
    TOPK = "topk"  #: softmax over each query's k best keys (data-dependent selection)
    LINEAR = "linear"  #: kernelized attention without a softmax


def expand_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Repeat kv heads so query head h reads kv head ``h // (H / H_kv)`` (SDPA ``enable_gqa``)."""
    groups = heads // t.shape[1]
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def as_reference(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Detached float64 CPU copies: the precision every backend is judged against."""
    return [t.detach().to(device="cpu", dtype=torch.float64) for t in tensors]


def causal_fn(case: Case) -> MaskFn:
    """Bottom-right causal: query i (at key position i + Δ) sees keys j ≤ i + Δ."""
    delta = case.offset

    def causal(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return kv_idx <= q_idx + delta

    return causal


def query_index(case: Case, device: torch.device | str, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The query indices a dense result covers: ``rows``, or all ``0 … Lq − 1``."""
    return torch.arange(case.q_len, device=device) if rows is None else rows.to(device)


def dense_causal(case: Case, device: torch.device | str, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``[Lq, Lk]`` (or ``[len(rows), Lk]``) boolean bottom-right causal mask."""
    q_idx = query_index(case, device, rows)[:, None]
    return causal_fn(case)(q_idx, torch.arange(case.k_len, device=device)[None, :])


def both(first: MaskFn, second: MaskFn) -> MaskFn:
    def combined(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return first(q_idx, kv_idx) & second(q_idx, kv_idx)

    return combined


class Mechanism(ABC):
    """A mathematical definition of attention; backends implement it, tests hold them to it."""

    name: ClassVar[str]
    family: ClassVar[Family]
    summary: ClassVar[str]
    #: Case options this mechanism reads (shown by ``attnperf list`` and used in ids).
    options: ClassVar[tuple[str, ...]] = ()
    #: Multiplies a backend's bf16/fp16 error bound where the definition itself adds a rounding
    #: step (each use says why).
    half_precision_factor: ClassVar[float] = 1.0

    def validate(self, case: Case) -> None:
        """Raise ``ValueError`` naming the option when ``case`` does not fit this mechanism."""

    def ambiguous_rows(
        self, q: torch.Tensor, k: torch.Tensor, case: Case, rows: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """``[B, H, R]`` booleans: query rows whose result a correct float32 implementation may
        legitimately compute differently from the float64 reference, so the check leaves them
        out (None: every row is determined). Only a data-dependent choice has such rows (top-k)."""
        return None

    @abstractmethod
    def weights(self, q: torch.Tensor, k: torch.Tensor, case: Case, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The ``[B, H, Lq, Lk]`` attention weights, in q's dtype and device (materialized).

        Readable and slow is fine: this is the definition, used for the reference, for layers'
        ``return_attention`` and for heatmaps. ``rows`` (query indices) restricts the result to
        those queries, ``[B, H, len(rows), Lk]``, so long cases can be checked on a sample.
        """

    def reference(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The float64 CPU result every backend is judged against: ``weights · v`` (of ``rows``)."""
        q, k, v = as_reference(q, k, v)
        return self.weights(q, k, case, rows) @ expand_kv(v, case.heads)

    def __repr__(self) -> str:
        return f"<mechanism {self.name}>"


class SoftmaxMechanism(Mechanism):
    """Exact softmax attention with a positional mask, an additive bias and a q/k transform.

    ``case.causal`` composes with every pattern (bottom-right alignment, see :func:`causal_fn`).
    """

    family = Family.SOFTMAX
    #: True when the pattern is positional and needs each query's aligned position i + Δ ≥ 0.
    positional: ClassVar[bool] = False
    #: True when :meth:`qk_transform` rotates q and k and so takes a ``rotate`` (RoPE).
    rotates: ClassVar[bool] = False

    def validate(self, case: Case) -> None:
        if self.positional and case.q_len > case.k_len:
            raise ValueError(
                f"{self.name} aligns queries to the end of the keys and needs q_len <= kv_len, "
                f"got q_len={case.q_len}, kv_len={case.k_len}"
            )

    def pattern(self, case: Case, device: torch.device | str) -> MaskFn | None:
        """The mechanism's own mask, before causality is added; None means every key."""
        return None

    def is_causal(self, case: Case) -> bool:
        """Whether the bottom-right causal mask applies (the case's flag, unless always)."""
        return case.causal

    def mask_kind(self, case: Case) -> str:
        """``"none"``, ``"causal"`` or ``"custom"``: lets kernels with a built-in causal mode
        (SDPA ``is_causal``, flash-attn ``causal``) skip building a mask."""
        if self.pattern(case, "cpu") is not None:
            return "custom"
        return "causal" if self.is_causal(case) else "none"

    def mask_fn(self, case: Case, device: torch.device | str) -> MaskFn | None:
        own = self.pattern(case, device)
        if not self.is_causal(case):
            return own
        causal = causal_fn(case)
        return causal if own is None else both(own, causal)

    def bias_fn(self, case: Case, device: torch.device | str, dtype: torch.dtype = torch.float32) -> BiasFn | None:
        """Additive score bias per (head, query, key), applied after scaling; None for none.

        ``dtype`` is the precision of the bias's own constants (float64 for the reference)."""
        return None

    def qk_transform(
        self,
        case: Case,
        device: torch.device | str,
        dtype: torch.dtype,
        *,
        seq_major: bool = False,
        rotate: Rotation | None = None,
    ) -> QKTransform | None:
        """A transform of (q, k) before the scores (RoPE); None for none. It takes ``[B, H, T, D]``
        and returns that layout, or with ``seq_major`` contiguous ``[B, T, H, D]`` (flash-attn's and
        xFormers' layout) written in the same pass.

        ``rotate`` is how a mechanism that :attr:`rotates` applies its tables; None means its own
        eager rotation (the reference's). Mechanisms import no kernels: a backend that has a
        faster rotation passes it in (:meth:`attnperf.backends.Backend.qk_transform`)."""
        return None

    def dense_mask(
        self, case: Case, device: torch.device | str, rows: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """``[Lq, Lk]`` boolean mask (True = attend) of all queries or ``rows``; None: all keys."""
        fn = self.mask_fn(case, device)
        if fn is None:
            return None
        q_idx = query_index(case, device, rows)
        kv_idx = torch.arange(case.k_len, device=device)[None, :]
        return fn(q_idx[:, None], kv_idx).expand(len(q_idx), case.k_len)

    def dense_bias(
        self, case: Case, device: torch.device | str, dtype: torch.dtype, rows: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """``[H, Lq, Lk]`` additive bias of all queries or ``rows``, or None."""
        fn = self.bias_fn(case, device, dtype)
        if fn is None:
            return None
        h = torch.arange(case.heads, device=device)[:, None, None]
        q_idx = query_index(case, device, rows)[None, :, None]
        kv_idx = torch.arange(case.k_len, device=device)[None, None, :]
        return fn(h, q_idx, kv_idx).to(dtype)

    def weights(self, q: torch.Tensor, k: torch.Tensor, case: Case, rows: torch.Tensor | None = None) -> torch.Tensor:
        transform = self.qk_transform(case, q.device, q.dtype)
        if transform is not None:
            q, k = transform(q, k)  # on every query: positions are those of the whole sequence
        if rows is not None:
            q = q[:, :, rows.to(q.device)]
        scores = q @ expand_kv(k, case.heads).transpose(-1, -2) * case.scale
        bias = self.dense_bias(case, q.device, q.dtype, rows)
        if bias is not None:
            scores = scores + bias
        mask = self.dense_mask(case, q.device, rows)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1)


def require_option(case: Case, option: str, mechanism: str) -> int:
    """The value of a mechanism option that must be set, or a ``ValueError`` naming it."""
    value = getattr(case, option)
    if value is None:
        raise ValueError(f"{option}: the {mechanism} mechanism needs {option}= an integer >= 1")
    return value
