"""Shared test settings: devices to run on and a per-session random seed for fresh inputs."""

from __future__ import annotations

import os
import secrets

import pytest
import torch

#: One fresh seed per session (printed in the header; ATTNPERF_SEED=N replays a run).
SEED = int(os.environ.get("ATTNPERF_SEED", secrets.randbelow(2**31)))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_report_header(config: pytest.Config) -> str:
    return f"attnperf: input seed {SEED} (ATTNPERF_SEED={SEED} to replay); devices {DEVICES}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU visible to torch)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
