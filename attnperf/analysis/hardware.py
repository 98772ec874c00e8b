"""Hardware ceilings as data: peak FLOP/s per dtype and memory bandwidth, from datasheets.

Datasheet peaks are upper leads: a large matrix product or device copy reaches less than the
paper figure (docs/measured-h100.md), so a roofline drawn against a datasheet flatters no kernel.
Measuring the machine at hand is :mod:`attnperf.ceilings`' work, which also chooses between the two.
"""

from __future__ import annotations

from dataclasses import dataclass


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
