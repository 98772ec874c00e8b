"""The complexity table: each variant's symbolic time and space class beside fitted exponents.

The symbolic classes are written down per mechanism (the zoo of attention mechanisms prints
such a table); the exponents are fitted over n from attnperf's own analyzer — useful FLOPs
(:func:`attnperf.analysis.flops.forward_flops`) and predicted peak memory
(:meth:`attnperf.backends.Backend.predicted_peak_bytes`) — and, when asked, from measured
median times. A symbolic O(n²) beside a fitted 1.0 means the table or the analyzer is wrong;
``tests/analysis/test_complexity.py`` holds them to each other. A report, not a formula: it
resolves variant and backend names, so it sits above the backends.

Variables: n the sequence length (keys), d the head dimension, w the window, k top-k's keys
per query, s the stride (round(√n) by default: O(n·(s + n/s)) = O(n√n)), b BigBird's block,
g global and r random blocks or tokens, c the fixed pattern's summary columns per block.
Batch and heads multiply every entry and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attnperf.analysis.flops import forward_flops
from attnperf.analysis.scaling import fit_exponent
from attnperf.backends import get_backend
from attnperf.catalog import get_variant
from attnperf.mechanisms import get_mechanism


@dataclass(frozen=True)
class Complexity:
    """Big-O classes of one mechanism: time, and extra space for a fused and a materializing kernel.

    ``time_exponent`` / ``fused_space_exponent`` / ``materialized_space_exponent``: the power of
    n each class reaches at the variant's default options (``s`` = √n gives 1.5), what the
    fitted exponents should approach at long n."""

    time: str
    fused_space: str
    materialized_space: str
    time_exponent: float
    fused_space_exponent: float
    materialized_space_exponent: float


DENSE = Complexity("O(n²·d)", "O(n·d)", "O(n²)", 2.0, 1.0, 2.0)
#: Per mechanism. Space is the extra memory of one forward beyond its inputs: the output
#: O(n·d) for a fused kernel (tiled, flash), the score matrix O(n²) for a materializing one.
COMPLEXITY: dict[str, Complexity] = {
    "full": DENSE,
    "alibi": DENSE,
    "rope": DENSE,
    "window": Complexity("O(n·w·d)", "O(n·d)", "O(n²)", 1.0, 1.0, 2.0),
    "topk": Complexity("O(n²·d + n·k·d)", "O(n·k)", "O(n²)", 2.0, 1.0, 2.0),
    "strided": Complexity("O(n·(s + n/s)·d) = O(n√n·d) at s = √n", "O(n·d)", "O(n²)", 1.5, 1.0, 2.0),
    "strided_columns": Complexity("O(n·(n/s)·d) = O(n√n·d) at s = √n", "O(n·d)", "O(n²)", 1.5, 1.0, 2.0),
    "fixed": Complexity("O(n·(s + c·n/s)·d) = O(n√n·d) at s = √n", "O(n·d)", "O(n²)", 1.5, 1.0, 2.0),
    "bigbird": Complexity("O(n·b·(3 + g + r)·d + g·b·n·d)", "O(n·d)", "O(n²)", 1.0, 1.0, 2.0),
    "bigbird_tokens": Complexity("O(n·(w + g + r)·d + g·n·d)", "O(n·d)", "O(n²)", 1.0, 1.0, 2.0),
    "linear": Complexity("O(n·d²)", "O(d² + n·d)", "O(n·d²) causal (cumulative states)", 1.0, 1.0, 1.0),
    "decode": Complexity("O(n·d) per token", "O(d)", "O(n)", 1.0, 0.0, 1.0),
}


def complexity_rows(
    variants: Sequence[str],
    seq_lens: Sequence[int],
    *,
    fused_backend: str = "tiled",
    materialized_backend: str = "eager",
    heads: int = 8,
    head_dim: int = 64,
    dtype: str = "float32",
    measured_times: dict[tuple[str, str], list[tuple[int, float]]] | None = None,
) -> list[dict[str, object]]:
    """One row per variant: symbolic classes and the exponents fitted over ``seq_lens``.

    ``time p (pred.)``: useful FLOPs (what the mechanism must compute; any backend's count of
    useful work is the same). ``fused q`` / ``materialized q``: predicted peak memory of
    ``fused_backend`` and ``materialized_backend``. ``measured_times``: ``{(variant, backend):
    [(seq_len, seconds), …]}`` from a sweep; each backend's fitted time exponent joins the row.
    """
    if len(set(seq_lens)) < 2:
        raise ValueError(f"seq_lens: need at least 2 distinct lengths to fit an exponent, got {list(seq_lens)}")
    fused_kernel, materializing = get_backend(fused_backend), get_backend(materialized_backend)
    rows: list[dict[str, object]] = []
    for name in variants:
        variant = get_variant(name)
        classes = COMPLEXITY[variant.mechanism]
        cases = [variant.case(n, heads=heads, head_dim=head_dim, dtype=dtype) for n in seq_lens]
        mechanism = get_mechanism(variant.mechanism)
        flops = [forward_flops(mechanism, fused_kernel, c).useful for c in cases]
        fused = [fused_kernel.predicted_peak_bytes(mechanism, c) for c in cases]
        materialized = [materializing.predicted_peak_bytes(mechanism, c) for c in cases]
        row: dict[str, object] = {
            "variant": name,
            "mechanism": variant.mechanism,
            "time": classes.time,
            "time_p": fit_exponent(seq_lens, flops).exponent,
            "fused_space": classes.fused_space,
            "fused_q": fit_exponent(seq_lens, fused).exponent,
            "materialized_space": classes.materialized_space,
            "materialized_q": fit_exponent(seq_lens, materialized).exponent,
        }
        for (v, backend), points in sorted((measured_times or {}).items()):
            if v == name and len({n for n, _ in points}) >= 2:
                row[f"measured_p_{backend}"] = fit_exponent([n for n, _ in points], [t for _, t in points]).exponent
        rows.append(row)
    return rows
