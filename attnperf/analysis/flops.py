"""FLOPs per (mechanism, backend, case): useful (attended pairs) and executed (what runs).

Convention (flash-attn's benchmarks): matrix-multiply FLOPs only, 2 per multiply-add.
A softmax forward has two products, q kᵀ and P v, so attending Lk keys from Lq queries costs
``4 · B · H · Lq · Lk · D``; a causal square case attends n(n+1)/2 pairs, about half. Softmax,
masks, biases and rotations are elementwise and not counted (nor does
``torch.utils.flop_counter.FlopCounterMode``, which the tests hold the eager counts to).

* **useful**: only the attended (query, key) pairs, so an O(n·w) window kernel is not credited
  with n² work; for top-k, the n² scores it must compute to choose plus the k products.
* **executed**: what the backend really multiplies, from the facts each backend states about
  itself (:class:`KernelFacts`): its ``block_size`` (None for code that works on whole tensors
  and materializes every score) and its ``executed_pairs`` (dense for whole-tensor code and for
  kernels given a dense mask, whole blocks for block-skipping kernels, counted by
  :func:`visited_block_pairs`); the associative O(n·D²) form for linear attention (chunked where
  the backend works in chunks).

These are formulas of objects: they take a :class:`~attnperf.mechanisms.Mechanism` and a
backend, never their names, and import nothing from :mod:`attnperf.backends`, which builds on
them (a backend's ``executed_pairs`` counts with :func:`visited_block_pairs`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import torch

from attnperf.case import Case
from attnperf.mechanisms import Family, Mechanism, SoftmaxMechanism


class KernelFacts(Protocol):
    """What the FLOP model reads of a backend (:class:`attnperf.backends.Backend` states them)."""

    @property
    def block_size(self) -> int | None:
        """The query/key block (linear attention's chunk) the kernel works in; None for code that
        works on whole tensors."""
        ...

    def executed_pairs(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        """(query, key) pairs the backend multiplies, summed over every device it runs on."""
        ...

    def for_case(self, mechanism: Mechanism, case: Case) -> KernelFacts:
        """The facts that hold for ``case`` (a dispatching backend answers with its kernel's)."""
        ...


@dataclass(frozen=True)
class Flops:
    useful: float
    executed: float


def _rows(case: Case, rows: int = 256) -> list[tuple[int, int]]:
    return [(s, min(s + rows, case.q_len)) for s in range(0, case.q_len, rows)]


@functools.lru_cache(maxsize=512)
def allowed_pairs(mechanism: SoftmaxMechanism, case: Case) -> int:
    """How many (query, key) pairs the mask allows, counted a band of rows at a time (a band keeps
    the boolean mask small at long lengths), and cached per (mechanism, case) in a process: a batch
    process asks it for every backend of a point, and at long lengths the count evaluates every
    one of the n² pairs on the CPU."""
    fn = mechanism.mask_fn(case, "cpu")
    if fn is None:
        return case.q_len * case.k_len
    kv_idx = torch.arange(case.k_len)[None, :]
    return sum(int(fn(torch.arange(s, e)[:, None], kv_idx).expand(e - s, case.k_len).sum()) for s, e in _rows(case))


@functools.lru_cache(maxsize=512)
def visited_block_pairs(mechanism: SoftmaxMechanism, case: Case, block: int) -> int:
    """(query, key) pairs inside the ``block × block`` tiles that have any allowed pair (once per
    arguments in a process, as :func:`allowed_pairs`)."""
    fn = mechanism.mask_fn(case, "cpu")
    if fn is None:
        return case.q_len * case.k_len
    total = 0
    kv_idx = torch.arange(case.k_len)[None, :]
    for qs in range(0, case.q_len, block):
        qe = min(qs + block, case.q_len)
        allowed = fn(torch.arange(qs, qe)[:, None], kv_idx).expand(qe - qs, case.k_len)
        for ks in range(0, case.k_len, block):
            ke = min(ks + block, case.k_len)
            if allowed[:, ks:ke].any():
                total += (qe - qs) * (ke - ks)
    return total


def forward_flops(mechanism: Mechanism, backend: KernelFacts, case: Case) -> Flops:
    """Useful and executed forward FLOPs of ``backend`` computing ``mechanism`` on ``case``.

    Objects, not names: resolve a name with :func:`attnperf.mechanisms.get_mechanism` and
    :func:`attnperf.backends.get_backend` (a name is a ``TypeError`` that says so)."""
    if not isinstance(mechanism, Mechanism) or isinstance(backend, str):
        raise TypeError(
            "forward_flops takes a Mechanism and a Backend (get_mechanism(name), get_backend(name)), "
            f"got mechanism={mechanism!r}, backend={backend!r}"
        )
    mech, be = mechanism, backend.for_case(mechanism, case)
    bh, d = case.batch * case.heads, case.head_dim
    match mech.family:
        case Family.SOFTMAX:
            assert isinstance(mech, SoftmaxMechanism)
            return Flops(4 * bh * d * allowed_pairs(mech, case), 4 * bh * d * be.executed_pairs(mech, case))
        case Family.TOPK:
            scores = 2 * bh * d * case.q_len * case.k_len
            useful = scores + 2 * bh * d * case.q_len * (case.top_k or 0)
            # whole-tensor code multiplies the masked P with every v; a tiled kernel gathers the k kept rows
            return Flops(useful, 2 * scores if be.block_size is None else useful)
        case Family.LINEAR:
            state = 2 * bh * d * d * case.k_len  # Σ φ(k) vᵀ
            readout = 2 * bh * d * d * case.q_len  # φ(q) S
            useful = state + readout
            if case.causal and be.block_size is None:
                executed = readout  # the running states are an elementwise outer product + cumsum
            elif case.causal:
                executed = useful + 4 * bh * d * case.q_len * be.block_size  # intra-chunk q kᵀ and P v
            else:
                executed = useful
            return Flops(useful, executed)


#: A fused softmax backward's products against its forward's two: the scores again, dV = Pᵀ dO,
#: dP = dO Vᵀ, dQ = dS K and dK = dSᵀ Q (FlashAttention's count: fwd+bwd = 3.5 × forward).
FUSED_BACKWARD_FACTOR = 2.5
#: Whole-tensor code keeps P from its forward: four products, no recomputation.
WHOLE_TENSOR_BACKWARD_FACTOR = 2.0


def forward_backward_flops(mechanism: Mechanism, backend: KernelFacts, case: Case) -> Flops:
    """Useful and executed FLOPs of a forward+backward step (the ``forward+backward`` points).

    Softmax: useful is the forward and :data:`FUSED_BACKWARD_FACTOR` times it (FlashAttention's
    convention); executed, that for a tiled kernel, which recomputes the scores, and
    :data:`WHOLE_TENSOR_BACKWARD_FACTOR` times the forward for whole-tensor code. Top-k: useful is
    the forward (its selection included) and four products of length D per kept key (dP, dQ, dK,
    dV): a backward over the kept keys, the selection not repeated; whole-tensor code executes
    twice its dense forward again. Linear attention has no backward model (its backends differ in
    what they recompute): ``NotImplementedError``."""
    forward = forward_flops(mechanism, backend, case)
    whole_tensor = backend.for_case(mechanism, case).block_size is None
    match mechanism.family:
        case Family.SOFTMAX:
            factor = 1 + (WHOLE_TENSOR_BACKWARD_FACTOR if whole_tensor else FUSED_BACKWARD_FACTOR)
            return Flops(forward.useful * (1 + FUSED_BACKWARD_FACTOR), forward.executed * factor)
        case Family.TOPK:
            kept = 8 * case.batch * case.heads * case.head_dim * case.q_len * min(case.top_k or 0, case.k_len)
            if whole_tensor:
                return Flops(forward.useful + kept, forward.executed * (1 + WHOLE_TENSOR_BACKWARD_FACTOR))
            return Flops(forward.useful + kept, forward.executed + kept)
    raise NotImplementedError(f"no forward+backward FLOP model for {mechanism.name}")
