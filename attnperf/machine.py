"""What a result was measured on: enough to keep histories from different machines apart."""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
from pathlib import Path
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


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def available_bytes(device: str) -> int | None:
    """Bytes a new allocation can take now on ``device``: the GPU's free memory, or on the CPU the
    kernel's ``MemAvailable`` (Linux); None where it cannot be known."""
    if torch.device(device).type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        text = Path("/proc/meminfo").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@functools.cache
def host_description() -> dict[str, str]:
    """The measuring host in asv's ``machine.json`` terms (os, arch, cpu, num_cpu, ram).

    Measurements are recorded into asv's results on another machine than the one that took them
    (publish.yml's store job runs on GitHub's runner), so the host travels with the measurements
    and is never read from the machine that records them."""
    info = machine_info()
    cpu = _cpu_model() + (f"; GPU {info['gpu']}" if "gpu" in info else "")
    ram = _ram_bytes()
    return {"os": f"{platform.system()} {platform.release()}", "arch": platform.machine(), "cpu": cpu,
            "num_cpu": str(os.cpu_count() or ""), "ram": str(ram) if ram else ""}  # fmt: skip


#: The GPU kernel libraries whose versions change what a benchmark measures, and their short names
#: in the machine tag: a calibration or a history of one stack never judges another's.
KERNEL_LIBRARIES = {"triton": "triton", "flash-attn-4": "fa4", "fa3-fwd": "fa3", "xformers": "xf", "fla-core": "fla"}


def kernel_versions() -> str:
    """``-cudnn91002-triton3.6.0-fa44.0.0b36…``: cuDNN's and each installed kernel library's version."""
    from importlib import metadata

    parts = []
    cudnn = machine_info().get("cudnn")
    if cudnn:
        parts.append(f"cudnn{cudnn}")
    for package, short in KERNEL_LIBRARIES.items():
        try:
            parts.append(f"{short}{metadata.version(package).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return "".join(f"-{p}" for p in parts)


def machine_tag() -> str:
    """A name that differs whenever the hardware or stack does, e.g. ``cpu-x86_64-torch2.13`` or
    ``h200-drv580-cu130-torch2.11-cudnn91002-triton3.6.0-fa44.0.0b36-xf0.0.35`` (on a GPU the kernel
    libraries' versions too, so that a calibration or a history never spans two stacks)."""
    info = machine_info()
    torch_version = info["torch"].split("+")[0].rsplit(".", 1)[0]
    if "gpu" not in info:
        return f"cpu-{platform.machine()}-torch{torch_version}"
    gpu = re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower().replace("nvidia", "")).strip("-")
    driver = (info.get("driver") or "unknown").split(".")[0]
    cuda = (info.get("cuda") or "").replace(".", "")
    return f"{gpu}-drv{driver}-cu{cuda}-torch{torch_version}{kernel_versions()}"
