"""What top-k's Triton passes cost per score, read from their sm_90 PTX: no GPU needed.

    python tools/topk-ptx.py [--head-dim 128] [--dtype bfloat16] [--top-k 32]

Compiles the threshold and candidates passes (``attnperf/backends/triton/topk.py``) for Hopper with
Triton's bundled ptxas, with the specializations the JIT gives real calls (pointers and strides
divisible by 16), and counts the PTX instructions of each pass's key loop, per key block and per
score a thread holds. Both passes compute the same scores; the difference is what each does with
them. On the H200 at 16k (2026-11-29) pass 1 took 4.0 ms and pass 2 13.7 ms, a ratio of 3.4, where
these counts give 3.6 and 13.5 instructions a key (3.8): the loops are bound by instructions on
the CUDA cores, not by the products or memory.
"""

from __future__ import annotations

import argparse
import collections
import re

from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile

from attnperf.backends.triton import topk

#: The arguments a real call specializes as multiples of 16 (Triton's JIT does it for every integer
#: and pointer argument divisible by 16: contiguous head_dim-128 tensors at 16k).
DIVISIBLE = {"q_ptr", "k_ptr", "t_ptr", "c_ptr", "n_ptr", "stride_qb", "stride_qh", "stride_qm", "stride_kb",
             "stride_kh", "stride_kn", "q_len", "k_len", "head_dim"}  # fmt: skip
POINTER_TYPES = {"bfloat16": "*bf16", "float16": "*fp16", "float32": "*fp32"}
INSTRUCTION = re.compile(r"^\s+(?:@%?!?p\d+\s+)?([a-z][\w.]+)")


def ptx(fn: object, pointers: dict[str, str], constexprs: dict[str, object], num_warps: int = 4) -> str:
    names = fn.arg_names  # type: ignore[attr-defined]
    signature = {
        n: "constexpr" if n in constexprs else pointers.get(n, "fp32" if n == "scale" else "i32") for n in names
    }
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n in DIVISIBLE}
    kernel = compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                     options={"num_warps": num_warps})  # fmt: skip
    return kernel.asm["ptx"]


def key_loop(text: str) -> collections.Counter[str]:
    """Instructions from the first loop header to the branch back to it (the key loop)."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if "Loop Header" in line)
    label = lines[head].split(":")[0]
    back = max(i for i, line in enumerate(lines) if re.search(rf"\bbra(\.uni)?\s+{re.escape(label)};", line))
    return collections.Counter(m.group(1) for line in lines[head : back + 1] if (m := INSTRUCTION.match(line)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", choices=sorted(POINTER_TYPES), default="bfloat16")
    parser.add_argument("--top-k", type=int, default=32)
    args = parser.parse_args()
    dt = POINTER_TYPES[args.dtype]
    scoring = {"CAUSAL": True, "PRECISION": "ieee" if dt == "*fp32" else "tf32", "UPCAST": False,
               "BLOCK_M": topk.BLOCK_M, "BLOCK_D": max(16, 1 << (args.head_dim - 1).bit_length())}  # fmt: skip
    cap = topk.CAP_PER_K * (1 << (args.top_k - 1).bit_length())
    passes = {
        "threshold": (topk._threshold, {"t_ptr": "*fp32"}, {"TOP_K": args.top_k, "BLOCK_N": topk.LANES}),
        "candidates": (topk._candidates, {"t_ptr": "*fp32", "c_ptr": "*i64", "n_ptr": "*i32"},
                       {"CAP": cap, "BLOCK_N": topk.BLOCK_N}),
    }  # fmt: skip
    threads = 4 * 32
    for name, (fn, pointers, constexprs) in passes.items():
        ops = key_loop(ptx(fn, {"q_ptr": dt, "k_ptr": dt} | pointers, constexprs | scoring))
        total, keys = sum(ops.values()), constexprs["BLOCK_N"]
        per_thread_scores = topk.BLOCK_M * keys // threads
        print(f"{name}: {keys}-key blocks, {total} instructions a block and thread: {total / keys:.1f} a key, "
              f"{total / per_thread_scores:.1f} a score")  # fmt: skip
        print("  " + ", ".join(f"{op} {n}" for op, n in ops.most_common(10)))


if __name__ == "__main__":
    main()
