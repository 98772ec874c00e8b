"""The problem being timed or checked: one frozen, self-validating description of a shape.

Every benchmark, test, result record and plot label is keyed by a :class:`Case`, and the one
function :func:`make_inputs` builds its tensors, seeded, so that every backend sees the very same
numbers.

Layout convention for the whole package: ``q`` is ``[B, H, Lq, D]`` and ``k``/``v`` are
``[B, H_kv, Lk, D]`` (PyTorch SDPA's layout). Backends whose libraries want ``[B, T, H, D]``
transpose inside their preparation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

#: dtype names a case may carry, mapped to torch dtypes; short tags are used in case ids.
DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_DTYPE_TAGS = {"float64": "f64", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}
DEVICES = ("cpu", "cuda")


def _positive(name: str, value: Any, *, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class Case:
    """One attention problem: the shape, the dtype and device, and the mechanism options.

    ``kv_heads`` defaults to ``heads`` (multi-head); ``1`` is multi-query (MQA) and any other
    divisor of ``heads`` is grouped-query (GQA), query head ``h`` using kv head
    ``h // (heads // kv_heads)``. ``kv_len`` defaults to ``q_len``; a different value is
    cross-attention or, with ``causal``, a decode step whose queries are the last ``q_len``
    positions of the keys (bottom-right alignment, as flash-attn and KV-cache decoding).

    Mechanism options are ignored by mechanisms that do not use them; a mechanism that needs
    one checks it in its own ``validate``.
    """

    batch: int = 1
    heads: int = 4
    q_len: int = 128
    head_dim: int = 64
    kv_heads: int | None = None
    kv_len: int | None = None
    dtype: str = "float32"
    device: str = "cpu"
    causal: bool = False
    window: int | None = None
    top_k: int | None = None
    stride: int | None = None
    block: int | None = None
    num_global: int = 1
    num_random: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch", "heads", "q_len", "head_dim"):
            _positive(name, getattr(self, name))
        _positive("kv_heads", self.kv_heads, allow_none=True)
        _positive("kv_len", self.kv_len, allow_none=True)
        for name in ("window", "top_k", "stride", "block"):
            _positive(name, getattr(self, name), allow_none=True)
        _positive("num_global", self.num_global, minimum=0)
        _positive("num_random", self.num_random, minimum=0)
        _positive("seed", self.seed, minimum=0)
        if self.heads % self.n_kv_heads:
            raise ValueError(
                f"heads ({self.heads}) must be divisible by kv_heads ({self.n_kv_heads}); "
                f"allowed kv_heads: {[d for d in range(1, self.heads + 1) if self.heads % d == 0]}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.device.split(":")[0] not in DEVICES:
            raise ValueError(f"device must be one of {list(DEVICES)} (optionally 'cuda:N'), got {self.device!r}")
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be True or False, got {self.causal!r}")
        if self.causal and self.q_len > self.k_len:
            raise ValueError(
                f"causal attention needs q_len <= kv_len (queries are the last q_len positions), "
                f"got q_len={self.q_len}, kv_len={self.k_len}"
            )

    # Derived values: properties so the dataclass stays the single source of truth.
    @property
    def n_kv_heads(self) -> int:
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def k_len(self) -> int:
        return self.q_len if self.kv_len is None else self.kv_len

    @property
    def offset(self) -> int:
        """Δ = kv_len − q_len: query i sits at key position i + Δ (bottom-right alignment)."""
        return self.k_len - self.q_len

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def scale(self) -> float:
        return self.head_dim**-0.5

    @property
    def id(self) -> str:
        """Stable id used for pytest ids, asv labels, result records and plots."""
        parts = [f"B{self.batch}", f"H{self.heads}"]
        if self.n_kv_heads != self.heads:
            parts.append(f"KV{self.n_kv_heads}")
        parts.append(f"S{self.q_len}" if self.k_len == self.q_len else f"Q{self.q_len}_K{self.k_len}")
        parts += [f"D{self.head_dim}", _DTYPE_TAGS[self.dtype]]
        if self.device != "cpu":
            parts.append(self.device.replace(":", ""))
        if self.causal:
            parts.append("causal")
        for name, tag in (("window", "w"), ("top_k", "k"), ("stride", "s"), ("block", "blk")):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{tag}{value}")
        return "_".join(parts)

    def replace(self, **changes: Any) -> Case:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_inputs(
    case: Case, *, seed: int | None = None, requires_grad: bool = False, on_device: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded ``(q, k, v)`` for ``case``, drawn on the CPU so every device sees the same values.

    ``seed`` defaults to ``case.seed``; correctness checks pass fresh seeds. Standard normal
    entries: never zeros, which would hide unwritten outputs and run faster than real data.
    ``on_device`` draws them on the case's device instead (other values on a GPU than on the CPU):
    for inputs that are only timed, where drawing 3 × 16M numbers on the CPU cost 0.3 s a point.
    """
    device = case.device if on_device else "cpu"
    gen = torch.Generator(device=device).manual_seed(case.seed if seed is None else seed)
    shapes = [
        (case.batch, case.heads, case.q_len, case.head_dim),
        (case.batch, case.n_kv_heads, case.k_len, case.head_dim),
        (case.batch, case.n_kv_heads, case.k_len, case.head_dim),
    ]
    out = []
    for shape in shapes:
        t = torch.randn(shape, generator=gen, dtype=torch.float32, device=device)
        t = t.to(device=case.device, dtype=case.torch_dtype)
        out.append(t.requires_grad_(requires_grad))
    return out[0], out[1], out[2]
