"""The ceilings a roofline is drawn against: a GPU's datasheet, or this machine's measured ones.

Measured ceilings come from micro-benchmarks timed the way every point is (:mod:`attnperf.measure`):
a large matrix product for FLOP/s and a large device copy for bandwidth. They sit above the
measuring module, apart from the analyzer's formulas (:mod:`attnperf.analysis.hardware` holds
the datasheets as data).
"""

from __future__ import annotations

import functools

import torch

from attnperf.analysis.hardware import DATASHEETS, Hardware, datasheet_for
from attnperf.errors import UsageError
from attnperf.measure import measure_time


def measure_matmul_flops(device: str, dtype: torch.dtype, n: int | None = None) -> float:
    """FLOP/s of an n × n × n product on random data (8192 on a GPU, 1024 on the CPU)."""
    n = n or (8192 if device.startswith("cuda") else 1024)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    timing = measure_time(lambda: a @ b, device, repeat=5)
    return 2 * n**3 / timing.median


def measure_copy_bandwidth(device: str, nbytes: int | None = None) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read plus bytes written."""
    nbytes = nbytes or (2**30 if device.startswith("cuda") else 2**27)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    timing = measure_time(lambda: dst.copy_(src), device, repeat=5)
    return 2 * nbytes / timing.median


@functools.cache
def measured(device: str, dtype: str) -> Hardware:
    """This machine's measured ceilings for ``dtype`` (cached per process)."""
    torch_dtype = getattr(torch, dtype)
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
    return Hardware(
        f"{name} (measured)", {dtype: measure_matmul_flops(device, torch_dtype)}, measure_copy_bandwidth(device)
    )


def ceilings(device: str, dtype: str, *, gpu_name: str | None = None, measure: bool = False) -> Hardware:
    """The ceilings a roofline is drawn against, chosen here only: a GPU's datasheet (the GPU
    ``gpu_name`` that results were measured on, else ``device``'s), or this machine's measured
    ones (the CPU, ``measure=True``, or a GPU without a datasheet entry). Results from a GPU
    without a datasheet entry, read on another machine, are a :class:`UsageError`: their
    ceilings cannot be had here."""
    on_gpu = device.startswith("cuda")
    if gpu_name is None and on_gpu:
        gpu_name = torch.cuda.get_device_name(torch.device(device))
    if gpu_name is not None and not measure:
        sheet = datasheet_for(gpu_name)
        if sheet is not None:
            return sheet
    if gpu_name is not None and not on_gpu:
        raise UsageError(f"no datasheet ceilings for {gpu_name!r} (known: {', '.join(DATASHEETS)}), and a GPU's "
                         "ceilings cannot be measured on this machine")  # fmt: skip
    return measured(device, dtype)
