"""RoPE's rotation of q and k as one Triton kernel: read once, rotate in float32, write once.

Every CUDA backend rotates inside its timed call (:func:`attnperf.backends.rotation.rotation_for`),
so the rotation must cost what its bytes cost: one read and one write of the tensor at the copy
bandwidth. inductor's kernel for the same function, compiled for symbolic sizes (a KV cache grows
every step), is several times slower than that: each element recovers its (b, h, t, d) from a flat
index by divisions by run-time sizes. Here a program owns a block of positions of one (batch,
head) and addresses rows through the tensors' strides, so the only division is the program's own
(b, h).

The output is written in either layout: ``[B, H, T, D]``, or ``[B, T, H, D]`` (flash-attn's and
xFormers' own) in the same pass. The backward is the inverse rotation by the same kernel
(``sin`` negated), from whatever layout the gradient arrives in back to ``[B, H, T, D]``.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from attnperf.backends.triton.rows import head_block

#: Positions a program rotates; with D 128 that is 16 KiB of bf16 read and written per program.
BLOCK_T = 32
#: Input dtypes the kernel takes (it computes in float32, as the eager rotation does).
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _rotate_half(
    X, COS, SIN, OUT, T, H,
    sx_b, sx_h, sx_t, so_b, so_h, so_t, s_tab,
    HALF: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, INVERSE: tl.constexpr,
):  # fmt: skip
    b, h, t, d = head_block(H, BLOCK_T, BLOCK_D)
    mask = (t[:, None] < T) & (d[None, :] < HALF)
    rows = t[:, None].to(tl.int64)
    x = X + b * sx_b + h * sx_h + rows * sx_t + d[None, :]
    x1 = tl.load(x, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x + HALF, mask=mask, other=0.0).to(tl.float32)
    # The tables repeat the angles for both halves (rope_tables): the first half is all there is.
    tab = rows * s_tab + d[None, :]
    c = tl.load(COS + tab, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(SIN + tab, mask=mask, other=0.0).to(tl.float32)
    if INVERSE:
        s = -s
    out = OUT + b * so_b + h * so_h + rows * so_t + d[None, :]
    tl.store(out, (x1 * c - x2 * s).to(OUT.dtype.element_ty), mask=mask)
    tl.store(out + HALF, (x2 * c + x1 * s).to(OUT.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor, strides: tuple[int, ...],
            *, inverse: bool) -> None:  # fmt: skip
    """Rotate ``x`` (``[B, H, T, D]``, last dim contiguous) into ``out`` addressed by ``strides``
    (its batch, head and position strides)."""
    batch, heads, length, dim = x.shape
    grid = (batch * heads, triton.cdiv(length, BLOCK_T))
    _rotate_half[grid](
        x, cos, sin, out, length, heads, x.stride(0), x.stride(1), x.stride(2), *strides, cos.stride(0),
        HALF=dim // 2, BLOCK_T=BLOCK_T, BLOCK_D=triton.next_power_of_2(dim // 2), INVERSE=inverse,
    )  # fmt: skip


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class _Rotation(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seq_major: bool) -> torch.Tensor:
        x, cos, sin = _rows_contiguous(x), cos.contiguous(), sin.contiguous()
        batch, heads, length, dim = x.shape
        if seq_major:
            out = torch.empty(batch, length, heads, dim, dtype=x.dtype, device=x.device)
            strides = (out.stride(0), out.stride(2), out.stride(1))
        else:
            out = torch.empty_like(x, memory_format=torch.contiguous_format)
            strides = (out.stride(0), out.stride(1), out.stride(2))
        _launch(x, cos, sin, out, strides, inverse=False)
        ctx.save_for_backward(cos, sin)
        ctx.seq_major = seq_major
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cos, sin = ctx.saved_tensors
        grad = _rows_contiguous(grad)
        as_bhtd = grad.transpose(1, 2) if ctx.seq_major else grad  # a view: the strides do the rest
        out = torch.empty(as_bhtd.shape, dtype=grad.dtype, device=grad.device)
        _launch(as_bhtd, cos, sin, out, (out.stride(0), out.stride(1), out.stride(2)), inverse=True)
        return out, None, None, None


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, seq_major: bool = False) -> torch.Tensor:
    """:func:`attnperf.mechanisms.positional.rotate_half_rope` of ``[B, H, T, D]`` ``x`` with the
    ``[T, D]`` tables, as ``[B, H, T, D]`` or (``seq_major``) contiguous ``[B, T, H, D]``;
    differentiable in ``x``. ``x`` in one of :data:`DTYPES`, the tables in float32."""
    if x.dtype not in DTYPES or x.shape[-1] % 2:
        raise ValueError(f"the Triton rotation takes an even head dim in {DTYPES}, got {x.dtype}, {x.shape[-1]}")
    return _Rotation.apply(x, cos, sin, seq_major)
