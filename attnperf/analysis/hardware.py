"""Ceilings: datasheet peaks for common GPUs, and micro-benchmarks for the machine at hand.

Datasheet numbers are leads; roofline fractions use the *measured* ceilings (a large matrix
product for FLOP/s, a large device copy for bandwidth), as measured on an H100 (docs/measured-h100.md):
770–798 TFLOP/s bf16 against 989 on paper, 3.0 TB/s against 3.35.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from attnperf.errors import UsageError
from attnperf.measure import measure_time


@dataclass(frozen=True)
class Hardware:
    name: str
    #: dense peak FLOP/s by dtype name (tensor cores where the dtype has them)
    flops: dict[str, float]
    #: memory bandwidth, bytes/s
    bandwidth: float


T = 1e12
GPU_FLOPS = {"bfloat16": 989 * T, "float16": 989 * T, "float32": 67 * T, "float64": 67 * T}  # Hopper SXM
DATASHEETS: dict[str, Hardware] = {
    "h100-sxm": Hardware("NVIDIA H100 SXM", GPU_FLOPS, 3.35e12),
    "h200": Hardware("NVIDIA H200", GPU_FLOPS, 4.8e12),
    "a100-sxm": Hardware(
        "NVIDIA A100 SXM", {"bfloat16": 312 * T, "float16": 312 * T, "float32": 19.5 * T, "float64": 19.5 * T}, 2.039e12
    ),
    "l4": Hardware(
        "NVIDIA L4", {"bfloat16": 121 * T, "float16": 121 * T, "float32": 30.3 * T, "float64": 0.47 * T}, 0.3e12
    ),
}


def datasheet_for(device_name: str) -> Hardware | None:
    """The datasheet entry whose key appears in the device name (``"NVIDIA H100 80GB HBM3"``)."""
    name = device_name.lower().replace(" ", "-")
    for key, hw in DATASHEETS.items():
        if key.split("-")[0] in name:
            return hw
    return None


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
