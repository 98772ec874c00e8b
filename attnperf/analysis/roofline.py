"""The roofline bound of one (mechanism, backend, case): max(FLOPs / peak, bytes / bandwidth)."""

from __future__ import annotations

from dataclasses import dataclass

from attnperf.analysis.flops import forward_flops
from attnperf.analysis.hardware import Hardware
from attnperf.analysis.memory import min_bytes
from attnperf.case import Case


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


def roofline(mechanism: str, backend: str, case: Case, hardware: Hardware) -> Roofline:
    """Bound from the executed FLOPs at the dtype's peak and the minimum bytes at full bandwidth."""
    flops = forward_flops(mechanism, backend, case).executed
    peak = hardware.flops.get(case.dtype)
    if peak is None:
        raise ValueError(f"hardware {hardware.name} has no FLOP/s figure for dtype {case.dtype}")
    return Roofline(compute_s=flops / peak, memory_s=min_bytes(case) / hardware.bandwidth)
