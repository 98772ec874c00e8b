"""What top-k's Triton passes cost, read from their sm_90 PTX: no GPU needed.

    python tools/topk-ptx.py [--head-dim 128] [--dtype bfloat16] [--top-k 32]

Compiles the three passes (``attnperf/backends/triton/topk.py``) for Hopper with Triton's bundled
ptxas, with the specializations the JIT gives real calls (pointers and strides divisible by 16).
For the threshold and candidates passes it counts the PTX instructions of each key loop's basic
blocks (the loop over the key blocks every row of a tile sees whole, then the masked diagonal
ones), per key block and per score a thread holds: the candidates pass's header block computes
and tests the scores, one block holds its append rounds (each round a row's best remaining key;
a block of keys runs as many as its row with the most takes) and another its prefix-sum append.
For the select pass it counts the instructions of both sorts' code. Both key passes
compute the same scores; the difference is what each does with them. The loops are bound by
instructions on the CUDA cores, not by the products or memory: on the H200 at 16k (2026-11-29)
the passes then took 4.0 and 13.7 ms, a ratio of 3.4, where these counts gave 3.6 and 13.5
instructions a key (3.8).
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
DIVISIBLE = {"q_ptr", "k_ptr", "v_ptr", "o_ptr", "t_ptr", "c_ptr", "n_ptr", "i_ptr", "w_ptr", "stride_qb",
             "stride_qh", "stride_qm", "stride_kb", "stride_kh", "stride_kn", "stride_vb", "stride_vh", "stride_vn",
             "stride_ob", "stride_oh", "stride_om", "q_len", "k_len", "head_dim"}  # fmt: skip
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


def key_loops(text: str) -> list[list[tuple[str, int]]]:
    """Each loop's basic blocks, in order, as (label and ptxas' note, instructions): the key loops.
    Blocks with branches inside a loop are paths a block of keys may or may not take."""
    blocks: list[tuple[str, str, int]] = []  # (label, note, instructions)
    for line in text.splitlines():
        if m := re.match(r"^(\$L__BB\d+_\d+):\s*(?://\s*(.*))?", line):
            blocks.append((m.group(1), m.group(2) or "", 0))
        elif blocks and INSTRUCTION.match(line):
            label, note, n = blocks[-1]
            blocks[-1] = (label, note, n + 1)
    loops: dict[str, list[tuple[str, int]]] = {}
    for label, note, n in blocks:
        if "Inner Loop Header" in note:
            loops.setdefault(label.split("_")[-1], []).insert(0, (f"{label} (loop header)", n))
        elif m := re.search(r"in Loop: Header=BB\d+_(\d+)", note):
            loops.setdefault(m.group(1), []).append((label, n))
    return [loops[key] for key in sorted(loops, key=int)]


def count(text: str) -> collections.Counter[str]:
    return collections.Counter(m.group(1) for line in text.splitlines() if (m := INSTRUCTION.match(line)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", choices=sorted(POINTER_TYPES), default="bfloat16")
    parser.add_argument("--top-k", type=int, default=32)
    args = parser.parse_args()
    dt = POINTER_TYPES[args.dtype]
    block_d = max(16, 1 << (args.head_dim - 1).bit_length())
    scoring = {"CAUSAL": True, "PRECISION": "ieee" if dt == "*fp32" else "tf32", "UPCAST": False,
               "BLOCK_M": topk.BLOCK_M, "BLOCK_D": block_d, "EVEN_D": block_d == args.head_dim}  # fmt: skip
    k_pad = 1 << (args.top_k - 1).bit_length()
    cap = topk.CAP_PER_K * k_pad
    passes = {
        "threshold": (topk._threshold, {"t_ptr": "*fp32"},
                      {"TOP_K": args.top_k, "K_PAD": k_pad, "BLOCK_N": topk.LANES, "SORT": True}),
        "candidates": (topk._candidates, {"t_ptr": "*fp32", "c_ptr": "*i64", "n_ptr": "*i32"},
                       {"CAP": cap, "BLOCK_N": topk.CANDIDATE_BLOCK_N}),
    }  # fmt: skip
    threads = 4 * 32
    for name, (fn, pointers, constexprs) in passes.items():
        loops = key_loops(ptx(fn, {"q_ptr": dt, "k_ptr": dt} | pointers, constexprs | scoring))
        keys = constexprs["BLOCK_N"]
        per_thread_scores = topk.BLOCK_M * keys // threads
        for which, blocks in zip(("whole blocks", "diagonal blocks"), loops, strict=False):
            print(f"{name}, {which} ({keys} keys, {per_thread_scores} scores a thread), instructions a thread:")
            for label, n in blocks:
                print(f"  {label}: {n} ({n / per_thread_scores:.1f} a score)")

    select = count(ptx(topk._select, {"v_ptr": dt, "o_ptr": dt, "c_ptr": "*i64", "n_ptr": "*i32", "i_ptr": "*i32",
                                      "w_ptr": "*fp32"},
                       {"TOP_K": args.top_k, "K_PAD": k_pad, "CAP": cap, "BLOCK_M": topk.SELECT_BLOCK_M,
                        "BLOCK_D": block_d, "GATHER": min(topk.GATHER, k_pad)}))  # fmt: skip
    total = sum(select.values())
    per_query = total * threads / topk.SELECT_BLOCK_M
    print(f"select: {total} instructions a thread (both sorts' code), {per_query:.0f} a query")
    print("  " + ", ".join(f"{op} {n}" for op, n in select.most_common(8)))


if __name__ == "__main__":
    main()
