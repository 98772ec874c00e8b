"""Preparing one benchmark point, shared by the asv suites, the batch runner and pytest-benchmark.

:func:`build_point` turns a :class:`~attnperf.benchgrid.PointSpec` into a checked closure: the
pair is compared with the float64 reference first (forward, and gradients for a
forward+backward point), so a wrong result is never timed. :func:`prepare_point` adds the
warm-up and a per-process cache for asv, which re-runs ``setup`` before every sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnperf.backends import Unsupported
from attnperf.benchgrid import BACKWARD, DECODE, FORWARD, PointSpec, active_grid
from attnperf.case import Case
from attnperf.catalog import get_variant
from attnperf.correctness import CheckResult, verified_runner
from attnperf.measure import warm_up

__all__ = ["BACKWARD", "DECODE", "FORWARD", "Point", "build_point", "prepare_point", "warmup_seconds"]


@dataclass
class Point:
    spec: PointSpec
    case: Case
    mechanism: str
    backend: str
    run: Callable[[], object]
    checked: CheckResult


_PREPARED: dict[PointSpec, Point] = {}


def warmup_seconds(device: str) -> float:
    """1 s on a GPU (the clock boosts under load), 0.05 s on the CPU."""
    return 1.0 if device.startswith("cuda") else 0.05


def build_point(spec: PointSpec, *, checked: CheckResult | None = None) -> Point:
    """A checked closure for ``spec`` (``checked``: a cached verdict of this same code).

    Raises ``NotImplementedError`` with the reason when the point cannot run here (asv's
    "skipped"): the backend's reasons, or a case that does not fit the mechanism.
    A wrong result raises :class:`attnperf.correctness.WrongResult`.
    """
    mechanism = get_variant("decode" if spec.mode == DECODE else spec.variant).mechanism
    try:
        case = spec.case()
        runner, result = verified_runner(mechanism, spec.backend, case, requires_grad=spec.mode == BACKWARD,
                                         checked=checked)  # fmt: skip
    except ValueError as exc:  # the case does not fit the mechanism (e.g. top_k > kv_len)
        raise NotImplementedError(f"case does not fit: {exc}") from None
    except Unsupported as exc:  # the backend's reasons, declared or found at run time
        raise NotImplementedError(str(exc)) from None
    run = _forward_backward(runner) if spec.mode == BACKWARD else runner
    return Point(spec=spec, case=case, mechanism=mechanism, backend=spec.backend, run=run, checked=result)


def prepare_point(backend: str, variant: str, seq_len: int, head_dim: int, dtype: str, *, mode: str = FORWARD) -> Point:
    """:func:`build_point` for a point of the active grid, warmed up and cached per process."""
    grid = active_grid()
    spec = PointSpec(backend, variant, seq_len, head_dim, dtype, mode, device=grid.device, heads=grid.heads,
                     batch=grid.batch)  # fmt: skip
    if spec not in _PREPARED:
        point = build_point(spec)
        warm_up(point.run, point.case.device, warmup_seconds(point.case.device))
        _PREPARED[spec] = point
    return _PREPARED[spec]


def _forward_backward(runner: Callable[[], torch.Tensor]) -> Callable[[], None]:
    grad = runner().detach().clone().normal_()

    def step() -> None:
        runner().backward(grad)  # gradients accumulate into q/k/v.grad: one cheap add per call

    return step
