"""torch.compile as attnperf uses it: never a silent fallback to the uncompiled path.

dynamo recompiles a function for every new shape and, past its limit (default 8), quietly runs
it uncompiled: a sweep would then time a different program from the one it names. Every compiled
function of attnperf that is timed (flex_attention and its masks) goes through
:func:`compiled`, which raises the limits and makes hitting them an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: Distinct compiled shapes per process before dynamo gives up (default 8 is far too few for a
#: sweep; past this a call raises instead of falling back).
RECOMPILE_LIMIT = 256


def guard_recompiles() -> None:
    """Raise dynamo's recompile limits and make hitting them an error (also used by the model
    run, where transformers compiles flex itself)."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
    dynamo_config.fail_on_recompile_limit_hit = True


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled whole, for static shapes (one compilation per shape), with the fallback
    turned into errors."""
    guard_recompiles()
    return torch.compile(fn, dynamic=False, fullgraph=True)  # the default (None) goes symbolic at a second shape
