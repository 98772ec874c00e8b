"""flex_attention's compiled path: block sparsity for real, and no silent unfused fallback."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.config as dynamo_config
from torch._dynamo.exc import FailOnRecompileLimitHit

from attnperf.backends.flex import block_mask_for, compiled_flex
from attnperf.case import Case
from attnperf.mechanisms import get_mechanism


def test_window_block_mask_skips_blocks() -> None:
    case = Case(q_len=2048, window=256, causal=True)
    block_mask = block_mask_for(get_mechanism("window"), case, torch.device("cpu"))
    # 16 × 16 blocks of 128; a causal window of 256 touches at most 3 per row: > 80% skipped.
    assert block_mask.sparsity() > 80.0


def test_unmasked_cases_take_no_block_mask() -> None:
    assert block_mask_for(get_mechanism("full"), Case(q_len=300), torch.device("cpu")) is None


def test_recompile_limit_raises_instead_of_falling_back_to_unfused() -> None:
    flex = compiled_flex()
    assert dynamo_config.fail_on_recompile_limit_hit
    assert dynamo_config.recompile_limit >= 256
    with dynamo_config.patch(recompile_limit=1), pytest.raises(FailOnRecompileLimitHit):  # noqa: PT012
        for length in (19, 23):  # two new shapes against a limit of one compiled entry
            q = torch.randn(1, 2, length, 16)
            flex(q, q, q)


def test_compiled_functions_stay_static_over_new_shapes() -> None:
    """A timed compiled function gets one kernel per shape: torch.compile's default (dynamic=None)
    turns symbolic at a second shape, whose kernels index by run-time sizes (RoPE's symbolic
    rotation took ten times its bytes on the H200)."""
    import torch._dynamo.utils as dynamo_utils

    from attnperf.compiled import compiled

    double = compiled(lambda x: x * 2)
    before = dynamo_utils.counters["stats"]["unique_graphs"]
    for length in (5, 6, 7):
        double(torch.randn(length))
    assert dynamo_utils.counters["stats"]["unique_graphs"] - before == 3  # one static graph a shape
