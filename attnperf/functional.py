"""``attention(q, k, v, mechanism=…, backend=…)``: the registry as one function call.

It checks the tensors (clear ``TypeError`` / ``ValueError`` naming the argument), derives the
:class:`Case` from their shapes, asks the backend whether it can run it, and runs it. Layers
are built on this function.
"""

from __future__ import annotations

from typing import Any

import torch

from attnperf.backends import Backend, Unsupported, get_backend
from attnperf.case import DTYPES, Case
from attnperf.correctness import run_unsupported_aware
from attnperf.mechanisms import Mechanism, get_mechanism

_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
#: The :class:`Case` fields a caller passes as options (the rest come from the tensors' shapes).
OPTIONS = ("causal", "window", "top_k", "stride", "block", "num_global", "num_random", "seed")


def check_options(options: dict[str, Any]) -> None:
    """Unknown option names are a ``ValueError`` listing the allowed ones (not ``Case``'s ``TypeError``)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown}; mechanism options are {list(OPTIONS)}")


def case_from_tensors(q: Any, k: Any, v: Any, **options: Any) -> Case:
    """The :class:`Case` of ``q [B, H, Lq, D]``, ``k``/``v [B, H_kv, Lk, D]`` and the options."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions [B, H, L, D], got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"batch of q ({q.shape[0]}) and k ({k.shape[0]}) must match")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"head_dim of q ({q.shape[-1]}) and k ({k.shape[-1]}) must match")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    check_options(options)
    batch, heads, q_len, head_dim = q.shape
    return Case(
        batch=batch,
        heads=heads,
        q_len=q_len,
        head_dim=head_dim,
        kv_heads=k.shape[1],
        kv_len=k.shape[2],
        dtype=_DTYPE_NAMES[q.dtype],
        device=str(q.device),
        **options,
    )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mechanism: str | Mechanism = "full",
    backend: str | Backend = "eager",
    **options: Any,
) -> torch.Tensor:
    """Attention of ``mechanism`` computed by ``backend``; ``options`` are :class:`Case` options
    (``causal``, ``window``, ``top_k``, ``stride``, ``block``, ``num_global``, ``num_random``,
    ``seed``). Raises :class:`Unsupported` with the reason when the backend cannot run it."""
    mech, be = get_mechanism(mechanism), get_backend(backend)
    case = case_from_tensors(q, k, v, **options)
    mech.validate(case)
    reason = be.supports(mech, case, backward=torch.is_grad_enabled() and q.requires_grad)
    if reason is not None:
        raise Unsupported(f"{be.name} cannot run {mech.name} on {case.id}: {reason}")
    return run_unsupported_aware(be, be.prepare(mech, case, q, k, v))
