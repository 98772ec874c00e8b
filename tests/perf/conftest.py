from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Time with the clock asv uses: it synchronizes CUDA before reading perf_counter."""
    if hasattr(config.option, "benchmark_timer"):
        config.option.benchmark_timer = "attnperf.measure.synchronized_clock"
