"""Every backend, by name. To add one: a module here with a :class:`Backend` subclass, then a line
in :data:`BACKENDS`; the correctness suite, the benchmarks and ``attnperf list`` pick it up."""

from __future__ import annotations

from attnperf.backends.base import Backend, Runner, Unsupported
from attnperf.backends.context_parallel import ContextParallel
from attnperf.backends.eager import Eager
from attnperf.backends.fla import Fla
from attnperf.backends.flash_attn import FlashAttn3, FlashAttn4
from attnperf.backends.flex import Flex
from attnperf.backends.onnxrt import OnnxRuntime, OnnxRuntimeCuda, OnnxRuntimeTensorRT
from attnperf.backends.sdpa import SdpaAuto, SdpaCudnn, SdpaEfficient, SdpaFlash, SdpaMath
from attnperf.backends.tiled import Tiled
from attnperf.backends.triton import Triton
from attnperf.backends.xformers import XFormers

BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Eager(),
        SdpaAuto(),
        SdpaMath(),
        SdpaFlash(),
        SdpaEfficient(),
        SdpaCudnn(),
        Flex(),
        Tiled(),
        Triton(),
        FlashAttn4(),
        FlashAttn3(),
        XFormers(),
        Fla(),
        OnnxRuntime(),
        OnnxRuntimeCuda(),
        OnnxRuntimeTensorRT(),
        ContextParallel(),
    )
}


def get_backend(name: str | Backend) -> Backend:
    """The backend called ``name``; a ``ValueError`` lists the names when it is unknown."""
    if isinstance(name, Backend):
        return name
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {name!r}") from None


__all__ = ["BACKENDS", "Backend", "Runner", "Unsupported", "get_backend"]
