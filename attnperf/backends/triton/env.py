"""Where the Triton kernels run: compiled for a GPU, or in Triton's CPU interpreter."""

from __future__ import annotations

import os


def interpreted() -> bool:
    """Whether Triton runs kernels in its CPU interpreter in this process (``TRITON_INTERPRET=1``,
    which Triton reads when a kernel is defined: set it before Python starts)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
