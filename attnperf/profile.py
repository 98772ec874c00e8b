"""Where one call's time goes: the kernels a checked point launches, from ``torch.profiler``.

    attnperf profile --device cuda --dtype bfloat16 --heads 16 --head-dim 128 \\
        --variants topk --backends triton --seq-lens 16384

A sweep says how long a call takes; when that is far from what the hardware allows, the next
question is which kernel spends it, or whether the device idles between launches. For each point
(checked against the float64 reference first, like every timing) this reports the median call
time, the kernels' summed device time per call (busy share = device time ÷ call time: well below
1 means the host or launches bound the call), and per kernel its launches and time per call. On
the CPU the rows are operators and their self CPU time, inflated by the profiler's own cost (no
busy share there).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from attnperf.benchgrid import PointSpec
from attnperf.correctness import WrongResult
from attnperf.measure import synchronize
from attnperf.point import DIRECT, failure, measure, prepare
from attnperf.records import Status


@dataclass(frozen=True)
class Kernel:
    """One kernel (on the CPU: one operator) of a call."""

    name: str
    launches: float  #: per call
    seconds: float  #: per call: device time of a kernel, self CPU time of an operator


@dataclass(frozen=True)
class Profile:
    """One point's call: its time and the kernels that spend it."""

    variant: str
    backend: str
    seq_len: int
    status: Status
    device: str = "cpu"
    reason: str | None = None
    median_s: float | None = None
    #: Summed time of every kernel (operator) per call.
    kernel_s: float | None = None
    kernels: list[Kernel] = field(default_factory=list)

    @property
    def busy(self) -> float | None:
        """On a GPU, kernel time ÷ call time: the share of the call the device computes. None on the
        CPU, where the profiler's own cost per operator inflates their times (a 5-call profile of a
        0.8 ms call summed to 13 ms once) and so the ratio means nothing."""
        if self.device != "cuda" or not self.median_s or self.kernel_s is None:
            return None
        return self.kernel_s / self.median_s

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "backend": self.backend, "seq_len": self.seq_len, "status": self.status.value,
                "device": self.device, "reason": self.reason, "median_s": self.median_s, "kernel_s": self.kernel_s,
                "busy": self.busy,
                "kernels": [vars(k) for k in self.kernels]}  # fmt: skip


def kernels_of(prof: torch.profiler.profile, calls: int, device: torch.device) -> list[Kernel]:
    """Per name, launches and seconds per call, longest first: CUDA kernels (device time of
    each launch) on a GPU, operators' self CPU time on the CPU."""
    launches: dict[str, int] = defaultdict(int)
    micros: dict[str, float] = defaultdict(float)
    if device.type == "cuda":
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                launches[event.name] += 1
                micros[event.name] += event.time_range.elapsed_us()
    else:
        for avg in prof.key_averages():
            if avg.self_cpu_time_total > 0:
                launches[avg.key] += avg.count
                micros[avg.key] += avg.self_cpu_time_total
    rows = [Kernel(name, launches[name] / calls, micros[name] / calls / 1e6) for name in micros]
    return sorted(rows, key=lambda k: -k.seconds)


def profile_point(spec: PointSpec, *, calls: int = 20, repeat: int = 5) -> Profile:
    """Check ``spec``, time its direct call (:func:`attnperf.point.measure`), then profile ``calls`` calls."""
    head = {"variant": spec.variant, "backend": spec.backend, "seq_len": spec.seq_len,
            "device": torch.device(spec.device).type}  # fmt: skip
    device = torch.device(spec.device)
    try:
        point = prepare(spec)
    except NotImplementedError as exc:
        return Profile(**head, status=Status.UNSUPPORTED, reason=str(exc))
    except WrongResult as exc:
        return Profile(**head, status=Status.WRONG, reason=str(exc))
    except Exception as exc:  # a backend that breaks while it is checked: the others still run
        status, reason = failure(exc, spec.device)
        return Profile(**head, status=status, reason=reason)
    try:
        median = measure(point, repeat=repeat, timings=(DIRECT,), memory=False).direct.median  # type: ignore[union-attr]
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.no_grad(), torch.profiler.profile(activities=activities) as prof:
            for _ in range(calls):
                point.call()
            synchronize(device)
    except Exception as exc:  # a backend that breaks (a kernel that fails to compile): the others still run
        status, reason = failure(exc, spec.device)
        return Profile(**head, status=status, reason=reason)
    kernels = kernels_of(prof, calls, device)
    return Profile(**head, status=Status.OK, median_s=median, kernel_s=sum(k.seconds for k in kernels),
                   kernels=kernels)  # fmt: skip
