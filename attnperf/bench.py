"""Preparing one benchmark point, shared by asv suites, pytest-benchmark and the CLI.

:func:`prepare_point` checks the pair against the reference, builds the closure, warms it up
and caches it per process: asv re-runs ``setup`` before every sample, and that must cost a
dictionary lookup, not a correctness check and a compilation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnperf.backends import Unsupported
from attnperf.benchgrid import BenchGrid, active_grid
from attnperf.case import Case
from attnperf.catalog import get_variant
from attnperf.correctness import verified_runner
from attnperf.measure import warm_up

FORWARD, BACKWARD = "forward", "forward+backward"


@dataclass
class Point:
    case: Case
    mechanism: str
    backend: str
    run: Callable[[], object]


_PREPARED: dict[tuple, Point] = {}


def warmup_seconds(device: str) -> float:
    """1 s on a GPU (the clock boosts under load), 0.05 s on the CPU."""
    return 1.0 if device.startswith("cuda") else 0.05


def prepare_point(
    backend: str, variant: str, seq_len: int, head_dim: int, dtype: str, *, mode: str = FORWARD,
    grid: BenchGrid | None = None,
) -> Point:  # fmt: skip
    """A checked, warmed-up closure for one grid point; ``NotImplementedError`` when it cannot run.

    ``NotImplementedError`` is asv's "skipped" (shown as n/a), with the backend's reason.
    A wrong result raises :class:`attnperf.correctness.WrongResult`: the benchmark fails, loudly.
    """
    key = (backend, variant, seq_len, head_dim, dtype, mode)
    if key in _PREPARED:
        return _PREPARED[key]
    grid = grid or active_grid()
    mechanism = get_variant(variant).mechanism
    try:
        case = grid.case(variant, seq_len, head_dim, dtype)
        runner, _ = verified_runner(mechanism, backend, case, requires_grad=mode == BACKWARD)
    except ValueError as exc:  # the case does not fit the mechanism (e.g. top_k > kv_len)
        raise NotImplementedError(f"case does not fit: {exc}") from None
    except Unsupported as exc:  # the backend's reasons, declared or found at run time
        raise NotImplementedError(str(exc)) from None
    run = runner if mode == FORWARD else _forward_backward(runner)
    warm_up(run, case.device, warmup_seconds(case.device))
    point = _PREPARED[key] = Point(case=case, mechanism=mechanism, backend=backend, run=run)
    return point


def _forward_backward(runner: Callable[[], torch.Tensor]) -> Callable[[], None]:
    grad = runner().detach().clone().normal_()

    def step() -> None:
        runner().backward(grad)  # gradients accumulate into q/k/v.grad: one cheap add per call

    return step
