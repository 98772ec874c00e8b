"""A workaround for the first MKL VML call of a process.

On the CPU, PyTorch runs ``exp``, ``cos``, ``sin``, ``log`` and a few other functions of
contiguous float32 and float64 tensors through MKL's vector math library (VML). The first such
call of a process sometimes returns VML's enhanced-performance accuracy instead of the high
accuracy PyTorch asks for; the later calls are exact. Measured here with torch 2.13 (MKL 2024.2,
2 threads), each in fresh processes: a first float32 ``exp`` off by up to 1.5e-4 relative in 1
of 200, a first float64 ``cos`` off by 6.8e-9 (instead of 1e-16) in 3 of 250, and in none of 250
that imported attnperf first. Either error is enough to fail a check: the float32 bound is 1e-5,
and RoPE's float64 tables enter the float64 check, whose bound is 1e-10.

:func:`absorb_first_call` makes that first call on throwaway numbers, on every thread of the
intra-op pool, when attnperf is imported.
"""

from __future__ import annotations

import torch

#: ATen splits an elementwise operation over threads in chunks of at least this many elements
#: (``at::internal::GRAIN_SIZE``).
GRAIN_SIZE = 32768


def absorb_first_call() -> None:
    """Call VML's ``exp`` once in float32 and float64, large enough to reach every intra-op
    thread, so that no result of attnperf's is a process's first VML call."""
    numel = GRAIN_SIZE * max(1, torch.get_num_threads())
    for dtype in (torch.float32, torch.float64):
        torch.exp(torch.zeros(numel, dtype=dtype))
