"""The roofline bound of one (mechanism, backend, case): max(FLOPs / peak, bytes / bandwidth).

A formula of objects, as :func:`attnperf.analysis.flops.forward_flops` whose executed FLOPs it bounds."""

from __future__ import annotations

from dataclasses import dataclass

from attnperf.analysis.flops import KernelFacts, forward_flops
from attnperf.analysis.hardware import Hardware
from attnperf.analysis.memory import min_bytes
from attnperf.case import Case
from attnperf.mechanisms import Mechanism


@dataclass(frozen=True)
class Roofline:
    compute_s: float
    memory_s: float

    @property
    def bound_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def limited_by(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"


def roofline(mechanism: Mechanism, backend: KernelFacts, case: Case, hardware: Hardware) -> Roofline:
    """Bound from the executed FLOPs at the dtype's peak and the minimum bytes at full bandwidth."""
    flops = forward_flops(mechanism, backend, case).executed
    peak = hardware.flops.get(case.dtype)
    if peak is None:
        raise ValueError(f"hardware {hardware.name} has no FLOP/s figure for dtype {case.dtype}")
    return Roofline(compute_s=flops / peak, memory_s=min_bytes(case) / hardware.bandwidth)
