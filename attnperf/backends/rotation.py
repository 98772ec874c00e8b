"""The rotation a backend runs for a rotating mechanism (RoPE): the fastest one for the device.

A mechanism owns the rotation's definition and its eager form (:func:`attnperf.mechanisms.positional.rotate_half_rope`,
the reference's) and imports no kernel; the backends choose the kernel here and pass it to
:meth:`~attnperf.mechanisms.base.SoftmaxMechanism.qk_transform`. Every backend rotates inside its
timed call, so the rotation must cost no more than its bytes: on CUDA attnperf's Triton kernel
(:mod:`attnperf.backends.triton.rotary`) reads q or k once and writes it rotated in the layout
asked for. Rotating in uncompiled PyTorch writes float32 copies of q and k and of their rotated
halves, a large share of a fused attention's own time and memory; inductor's kernel for symbolic
sizes (a growing KV cache) recovers each element's indices by run-time divisions and is still
several times slower than its bytes.
"""

from __future__ import annotations

import torch

from attnperf.mechanisms.base import Rotation
from attnperf.mechanisms.positional import rotate_half_rope, rotate_half_rope_seq_major


def rotation_for(device: torch.device | str, seq_major: bool) -> Rotation:
    """The rotation on ``device``, into contiguous ``[B, T, H, D]`` when ``seq_major``.

    On CUDA the Triton kernel for half and single precision; float64 (which the kernel does not
    take), a graph being exported (``torch.export`` cannot trace a Triton launch, so ONNX Runtime's
    graph holds the eager rotation) and the CPU rotate eagerly."""
    eager = rotate_half_rope_seq_major if seq_major else rotate_half_rope
    if torch.device(device).type != "cuda":
        return eager
    from attnperf.backends.triton.rotary import DTYPES, rotate  # Triton only where it runs

    def rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if x.dtype in DTYPES and not torch.compiler.is_exporting():
            return rotate(x, cos, sin, seq_major=seq_major)
        return eager(x, cos, sin)

    return rotation
