"""What every backend is: capabilities as data, every reason it cannot run, and ``prepare``.

Modelled on xFormers' operator classes: the class attributes state what a backend can do
(devices, dtypes, head dims, GQA), :meth:`Backend.not_supported_reasons` returns *every*
reason a case does not fit, and the relative-error bounds live on the class. Optional
libraries are imported lazily in :meth:`Backend.load`, so importing attnperf never needs them.

``prepare(mechanism, case, q, k, v)`` does all set-up (masks, layouts, compilation handles)
and returns a zero-argument closure; asv, pytest-benchmark and the CLI time that closure. It
dispatches on the mechanism's :class:`~attnperf.mechanisms.Family` here, once for every backend,
to the ``prepare_softmax`` / ``prepare_topk`` / ``prepare_linear`` a backend implements.

A backend also states its performance facts, which the analyzer's formulas read: its
``block_size`` and :meth:`Backend.executed_pairs` (the FLOP model,
:func:`attnperf.analysis.flops.forward_flops`) and its memory model
(:meth:`Backend.predicted_peak_bytes`, from the formulas in :mod:`attnperf.analysis.memory`).
The formulas sit below the backends: they take backend objects and never import this package.
Adding a backend is one module and a line in the registry; ``tests/backends/test_backends.py`` proves that
every registered backend has every model for every mechanism it implements.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ClassVar

import torch

from attnperf.analysis.flops import visited_block_pairs
from attnperf.backends.rotation import rotation_for
from attnperf.case import DTYPES, Case
from attnperf.mechanisms import Family, Mechanism, SoftmaxMechanism
from attnperf.mechanisms.base import QKTransform

Runner = Callable[[], torch.Tensor]

#: Relative-error bounds ‖out − ref‖ / ‖ref‖ against the float64 reference (docs/mechanisms.md).
DEFAULT_TOLERANCE: dict[str, float] = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 1e-2, "float16": 1e-2}

ALL_DTYPES = tuple(DTYPES)
HALF_DTYPES = ("bfloat16", "float16")


class Unsupported(RuntimeError):
    """Raised when a backend finds out only at run time that it cannot run a case."""


def cuda_ready(case: Case) -> str | None:
    """Why a CUDA case cannot run here, or None."""
    if case.device.startswith("cuda") and not torch.cuda.is_available():
        return "needs CUDA (no GPU visible to torch)"
    return None


def compute_capability(case: Case) -> tuple[int, int] | None:
    if not case.device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(torch.device(case.device))


def to_bthd(t: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, D]`` → contiguous ``[B, T, H, D]`` (flash-attn's and xFormers' layout)."""
    return t.transpose(1, 2).contiguous()


class Backend:
    """One implementation family of the mechanisms it lists."""

    name: ClassVar[str]
    summary: ClassVar[str]
    mechanisms: ClassVar[frozenset[str]]
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    dtypes: ClassVar[tuple[str, ...]] = ALL_DTYPES
    max_head_dim: ClassVar[int | None] = None
    head_dim_multiple: ClassVar[int] = 1
    #: Smallest CUDA compute capability (major, minor) for a cuda case, if any.
    min_capability: ClassVar[tuple[int, int] | None] = None
    supports_gqa: ClassVar[bool] = True
    supports_backward: ClassVar[bool] = True
    #: Per-dtype overrides of :data:`DEFAULT_TOLERANCE` (each with its reason beside it).
    tolerance: ClassVar[dict[str, float]] = {}
    #: Substrings of run-time errors meaning "this kernel cannot take this case".
    unsupported_errors: ClassVar[tuple[str, ...]] = ()
    #: Builds a kernel per shape (compilation, export): the correctness suite gives it a reduced grid.
    compiles_per_shape: ClassVar[bool] = False
    #: Keeps CPU memory in an arena of its own, invisible to RSS growth: its CPU peak is not measured.
    own_cpu_allocator: ClassVar[bool] = False
    #: Allocates GPU memory from an arena of its own, invisible to torch's CUDA allocator statistics:
    #: its GPU peak is not measured either.
    own_cuda_allocator: ClassVar[bool] = False
    #: Launches on a CUDA stream of its own: a CUDA graph captured on PyTorch's stream would miss
    #: its work, so its points are timed call by call (:func:`attnperf.graphs.replay_or_direct`).
    own_cuda_stream: ClassVar[bool] = False
    #: The query/key block (or linear attention's chunk) its kernel works in, which the FLOP model
    #: counts whole; None for code that works on whole tensors and materializes every score
    #: (so it skips nothing). 128 is flex's and FlashAttention's usual tile.
    block_size: int | None = 128

    def load(self) -> None:
        """Import the backend's optional library; raise ImportError (or any error) if unusable."""

    @functools.cached_property
    def library_reason(self) -> str | None:
        """Why the backend's library cannot be used here, or None. Imported once, lazily."""
        try:
            self.load()
        except Exception as exc:  # any import-time failure means "not usable here", with its text
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"{self.name} not importable: {first_line}"
        return None

    def case_reasons(self, mechanism: Mechanism, case: Case) -> list[str]:
        """Backend-specific reasons beyond the declared capabilities (override when needed)."""
        return []

    def not_supported_reasons(self, mechanism: Mechanism, case: Case, *, backward: bool = False) -> list[str]:
        """Every reason this backend cannot run ``mechanism`` on ``case``; empty when it can."""
        reasons = []
        if mechanism.name not in self.mechanisms:
            reasons.append(f"{self.name} does not implement {mechanism.name}")
        device = case.device.split(":")[0]
        if device not in self.devices:
            reasons.append(f"runs on {'/'.join(self.devices)} only, case is on {device}")
        elif (why := cuda_ready(case)) is not None:
            reasons.append(why)
        if case.dtype not in self.dtypes:
            reasons.append(f"dtype {case.dtype} unsupported (accepts {', '.join(self.dtypes)})")
        if self.max_head_dim is not None and case.head_dim > self.max_head_dim:
            reasons.append(f"head_dim {case.head_dim} unsupported (at most {self.max_head_dim})")
        if case.head_dim % self.head_dim_multiple:
            reasons.append(f"head_dim {case.head_dim} unsupported (must be a multiple of {self.head_dim_multiple})")
        if not self.supports_gqa and case.n_kv_heads != case.heads:
            reasons.append("no grouped/multi-query heads (kv_heads must equal heads)")
        if backward and not self.supports_backward:
            reasons.append("forward only (no backward)")
        cc = compute_capability(case)
        if self.min_capability is not None and cc is not None and cc < self.min_capability:
            reasons.append(f"needs compute capability >= {self.min_capability}, GPU has {cc}")
        if not reasons and self.library_reason is not None:
            reasons.append(self.library_reason)
        if not reasons:
            reasons += self.case_reasons(mechanism, case)
        return reasons

    def supports(self, mechanism: Mechanism, case: Case, *, backward: bool = False) -> str | None:
        """None when the backend can run the case, else a human reason (all reasons joined)."""
        reasons = self.not_supported_reasons(mechanism, case, backward=backward)
        return "; ".join(reasons) if reasons else None

    def native_mask(self, mechanism: SoftmaxMechanism, case: Case) -> bool:
        """Whether the kernel takes this mask itself, and so can skip the blocks it leaves empty.

        By default the causal mask only (the one argument every fused kernel has); a custom mask
        or a bias reaches such a kernel as a dense tensor, and then every block is computed."""
        return mechanism.bias_fn(case, "cpu") is None and mechanism.mask_kind(case) != "custom"

    def executed_pairs(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        """(query, key) pairs the backend multiplies, summed over every device it runs on: the
        executed side of the FLOP model (:mod:`attnperf.analysis.flops`).

        By default one kernel call's: every pair for whole-tensor code or a mask the kernel is
        given densely, else the pairs of the blocks it visits. A backend that splits the work
        differently (context parallelism's ring, flash-attn's strided split) counts its own."""
        if self.block_size is None or not self.native_mask(mechanism, case):
            return case.q_len * case.k_len
        return visited_block_pairs(mechanism, case, self.block_size)

    def for_case(self, mechanism: Mechanism, case: Case) -> Backend:
        """The backend whose performance facts hold for ``case``: itself, except for a backend that
        dispatches to other kernels (``sdpa``), which answers with the kernel it would pick."""
        return self

    def predicted_peak_bytes(self, mechanism: Mechanism, case: Case) -> int:
        """Predicted peak extra bytes of one forward on ``case`` (:mod:`attnperf.analysis.memory`)."""
        facts = self.for_case(mechanism, case)
        if facts is not self:
            return facts.predicted_peak_bytes(mechanism, case)
        match mechanism.family:
            case Family.SOFTMAX:
                assert isinstance(mechanism, SoftmaxMechanism)
                return self.softmax_peak_bytes(mechanism, case)
            case Family.TOPK:
                return self.topk_peak_bytes(case)
            case Family.LINEAR:
                return self.linear_peak_bytes(case)

    def softmax_peak_bytes(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        raise NotImplementedError(f"{self.name} has no memory model for softmax mechanisms")

    def topk_peak_bytes(self, case: Case) -> int:
        raise NotImplementedError(f"{self.name} has no memory model for top-k attention")

    def linear_peak_bytes(self, case: Case) -> int:
        raise NotImplementedError(f"{self.name} has no memory model for linear attention")

    def qk_transform(
        self,
        mechanism: SoftmaxMechanism,
        case: Case,
        device: torch.device | str,
        dtype: torch.dtype,
        *,
        seq_major: bool = False,
    ) -> QKTransform | None:
        """The mechanism's q/k transform as the backend runs it inside its timed call: a rotating
        mechanism (RoPE) rotates with :func:`attnperf.backends.rotation.rotation_for`'s kernel."""
        rotate = rotation_for(device, seq_major) if mechanism.rotates else None
        return mechanism.qk_transform(case, device, dtype, seq_major=seq_major, rotate=rotate)

    def bound(self, dtype: str) -> float:
        """Relative-error bound for results in ``dtype``."""
        return self.tolerance.get(dtype, DEFAULT_TOLERANCE[dtype])

    def prepare(self, mechanism: Mechanism, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Runner:
        """Set everything up and return a closure computing the ``[B, H, Lq, D]`` output."""
        match mechanism.family:
            case Family.SOFTMAX:
                assert isinstance(mechanism, SoftmaxMechanism)
                return self.prepare_softmax(mechanism, case, q, k, v)
            case Family.TOPK:
                return self.prepare_topk(case, q, k, v)
            case Family.LINEAR:
                return self.prepare_linear(case, q, k, v)

    def prepare_softmax(
        self, mechanism: SoftmaxMechanism, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> Runner:
        raise NotImplementedError(f"{self.name} does not implement softmax mechanisms")

    def prepare_topk(self, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Runner:
        raise NotImplementedError(f"{self.name} does not implement top-k attention")

    def prepare_linear(self, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Runner:
        raise NotImplementedError(f"{self.name} does not implement linear attention")

    def __repr__(self) -> str:
        return f"<backend {self.name}>"
