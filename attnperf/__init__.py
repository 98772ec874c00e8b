"""attnperf: every attention mechanism, many backends, each checked against a float64
reference, and a performance-regression suite around them.

Import cost is torch only: optional libraries (flash-attn, xFormers, fla) load lazily when a
backend that needs them is first asked whether it can run.
"""

from attnperf.backends import BACKENDS, Backend, Unsupported, get_backend
from attnperf.case import Case, make_inputs
from attnperf.catalog import VARIANTS, get_variant
from attnperf.correctness import WrongResult, check, verified_runner
from attnperf.functional import attention
from attnperf.mechanisms import MECHANISMS, Mechanism, get_mechanism
from attnperf.vml import absorb_first_call

absorb_first_call()  # before any result of attnperf's: see attnperf/vml.py

__version__ = "0.1.0"

#: Loaded on first use (``attnperf.Benchmark``): they pull in the measuring and command modules,
#: which ``import attnperf`` itself does not need.
_LAZY = {"Benchmark": "attnperf.api", "BatchSizeTuner": "attnperf.api"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnperf' has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "MECHANISMS",
    "VARIANTS",
    "Backend",
    "BatchSizeTuner",
    "Benchmark",
    "Case",
    "Mechanism",
    "Unsupported",
    "WrongResult",
    "attention",
    "check",
    "get_backend",
    "get_mechanism",
    "get_variant",
    "make_inputs",
    "verified_runner",
]
