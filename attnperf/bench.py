"""Preparing one benchmark point, shared by the asv suites, the batch runner and pytest-benchmark.

:func:`build_point` turns a :class:`~attnperf.benchgrid.PointSpec` into a checked closure: the
pair is compared with the float64 reference first (forward, and gradients for a
forward+backward point), so a wrong result is never timed. :func:`prepare_point` adds the
warm-up and a per-process cache for asv, which re-runs ``setup`` before every sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from attnperf.backends import Unsupported, get_backend
from attnperf.benchgrid import BACKWARD, DECODE, FORWARD, PointSpec, active_grid
from attnperf.case import Case
from attnperf.correctness import CheckResult, verified_runner
from attnperf.graphs import replay_or_direct
from attnperf.measure import warm_point
from attnperf.registry import fit

__all__ = ["BACKWARD", "DECODE", "FORWARD", "Point", "build_point", "prepare_point"]


@dataclass
class Point:
    spec: PointSpec
    case: Case
    mechanism: str
    backend: str
    #: The direct call (a forward, or the forward+backward step), verified; peak memory is measured on it.
    call: Callable[[], object]
    checked: CheckResult
    _timed: tuple[Callable[[], object], str | None] | None = field(default=None, repr=False)

    def _timing(self) -> tuple[Callable[[], object], str | None]:
        """(what is timed, why a CUDA forward or decode call is timed as called), captured at the
        first request, so that a point measured for its peak memory alone never holds a graph's
        memory pool beside the call."""
        if self._timed is None:
            if self.spec.mode == BACKWARD:
                self._timed = (self.call, None)
            else:
                backend = get_backend(self.backend)
                self._timed = replay_or_direct(self.call, self.case.device,
                                               self.checked.bound or backend.bound(self.case.dtype),
                                               own_stream=backend.own_cuda_stream)  # fmt: skip
        return self._timed

    @property
    def run(self) -> Callable[[], object]:
        """What is timed: on CUDA a forward or decode call's graph replay where it can be captured
        (:func:`attnperf.graphs.replay_or_direct`), else the call; forward+backward steps direct."""
        return self._timing()[0]

    @property
    def cuda_graph(self) -> bool:
        return self.run is not self.call

    @property
    def graph_reason(self) -> str | None:
        """Why a CUDA forward or decode point is timed call by call (None: replayed, or not on CUDA)."""
        return self._timing()[1]


_PREPARED: dict[PointSpec, Point] = {}


def build_point(spec: PointSpec, *, checked: CheckResult | None = None) -> Point:
    """A checked closure for ``spec`` (``checked``: a cached verdict of this same code).

    Raises ``NotImplementedError`` with the reason when the point cannot run here (asv's
    "skipped"): the backend's reasons, or a case that does not fit the mechanism.
    A wrong result raises :class:`attnperf.correctness.WrongResult`.
    """
    case, reason = fit(spec)
    if case is None:
        raise NotImplementedError(reason)
    try:
        runner, result = verified_runner(spec.mechanism, spec.backend, case, requires_grad=spec.mode == BACKWARD,
                                         checked=checked)  # fmt: skip
    except Unsupported as exc:  # found only at run time (e.g. "No available kernel")
        raise NotImplementedError(str(exc)) from None
    call = _forward_backward(runner) if spec.mode == BACKWARD else runner
    return Point(spec=spec, case=case, mechanism=spec.mechanism, backend=spec.backend, call=call, checked=result)


def prepare_point(
    backend: str, variant: str, seq_len: int, head_dim: int, dtype: str, *, mode: str = FORWARD, timed: bool = True
) -> Point:
    """:func:`build_point` for a point of the active grid, warmed up and cached per process;
    ``timed``: what is timed is warmed (a CUDA graph captured first), else the direct call, as a
    suite that measures peak memory wants."""
    spec = active_grid().spec(backend, variant, seq_len, mode=mode, head_dim=head_dim, dtype=dtype)
    if spec not in _PREPARED:
        point = build_point(spec)
        warm_point(point.run if timed else point.call, point.case.device)
        _PREPARED[spec] = point
    return _PREPARED[spec]


def _forward_backward(runner: Callable[[], torch.Tensor]) -> Callable[[], None]:
    grad = runner().detach().clone().normal_()

    def step() -> None:
        runner().backward(grad)  # gradients accumulate into q/k/v.grad: one cheap add per call

    return step
