"""pytest-benchmark: the asv grid's forward points as benchmarks, for quick local comparisons.

    pytest -m perf tests/perf --benchmark-only --benchmark-save=base
    pytest -m perf tests/perf --benchmark-only --benchmark-compare=0001 --benchmark-compare-fail=median:10%

The points are the same as asv's (``attnperf.benchgrid``, same ``ATTNPERF_*`` subsets), prepared
by the same :func:`attnperf.point.prepare` (checked against the reference, then warmed up);
the clock is the same CUDA-synchronizing one (``--benchmark-timer`` is set in conftest.py).
Excluded from the normal test run by the ``perf`` marker.
"""

from __future__ import annotations

import itertools

import pytest

from attnperf.benchgrid import active_grid
from attnperf.measure import warm_point
from attnperf.point import prepare

GRID = active_grid()
POINTS = list(itertools.product(GRID.backends, GRID.variants, GRID.seq_lens, GRID.head_dims, GRID.dtypes))

pytestmark = pytest.mark.perf


@pytest.mark.parametrize(("backend", "variant", "seq_len", "head_dim", "dtype"), POINTS,
                         ids=["-".join(map(str, p)) for p in POINTS])  # fmt: skip
def test_forward(benchmark, backend: str, variant: str, seq_len: int, head_dim: int, dtype: str) -> None:
    try:
        point = prepare(GRID.spec(backend, variant, seq_len, head_dim=head_dim, dtype=dtype))
    except NotImplementedError as exc:
        pytest.skip(str(exc))
    warm_point(point.call, point.case.device)
    benchmark.extra_info["case"] = point.case.id
    benchmark.pedantic(point.call, rounds=10, iterations=1, warmup_rounds=1)
