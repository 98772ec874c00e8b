"""What a result was measured on: enough to keep histories from different machines apart."""

from __future__ import annotations

import functools
import platform
import re
import subprocess
from typing import Any

import torch


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


@functools.cache
def machine_info() -> dict[str, Any]:
    """CPU, torch, and (when present) GPU name, driver, CUDA and cuDNN versions."""
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info.update(
            gpu=torch.cuda.get_device_name(0),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            driver=_driver_version(),
        )
    return info


def machine_tag() -> str:
    """A short name that differs whenever the hardware or stack does, e.g.
    ``h100-80gb-hbm3-drv580-cu130-torch2.11`` or ``cpu-x86_64-torch2.13``."""
    info = machine_info()
    torch_version = info["torch"].split("+")[0].rsplit(".", 1)[0]
    if "gpu" not in info:
        return f"cpu-{platform.machine()}-torch{torch_version}"
    gpu = re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower().replace("nvidia", "")).strip("-")
    driver = (info.get("driver") or "unknown").split(".")[0]
    cuda = (info.get("cuda") or "").replace(".", "")
    return f"{gpu}-drv{driver}-cu{cuda}-torch{torch_version}"
