"""Plots (matplotlib, Agg): from sweep result files, and from the mechanisms themselves.

From a sweep JSON (``attnperf sweep --json``):
  * ``scaling``: log-log median time against seq_len per (variant, backend), the fitted slope
    in the legend — per-call overhead flattens the short end, the slope shows at the long end;
  * ``memory``: peak memory against seq_len;
  * ``throughput``: tokens/s per backend at each variant's longest length;
  * ``roofline``: achieved TFLOP/s against arithmetic intensity, under the ceilings.
From the definitions (no results needed):
  * ``masks``: which keys each query sees, per variant; ``heatmaps``: attention weights on
    random inputs; ``positions``: the sinusoidal table and ALiBi's bias; ``heads``: per-head
    weights under ALiBi (each head a different slope).
Every figure is written as PNG and SVG.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from attnperf.analysis import fit_exponent, forward_flops, min_bytes, tail_exponent
from attnperf.analysis.hardware import Hardware
from attnperf.case import Case, make_inputs
from attnperf.catalog import VARIANTS
from attnperf.layers import sinusoidal_table
from attnperf.mechanisms import get_mechanism
from attnperf.mechanisms.positional import alibi_slopes

RESULT_PLOTS = ("scaling", "memory", "throughput", "roofline")
PICTURE_PLOTS = ("masks", "heatmaps", "positions", "heads")
PICTURE_VARIANTS = ("causal", "local", "sliding_window", "strided", "bigbird", "topk", "linear_causal", "alibi")


def save(fig: Any, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def _ok(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "ok"]


def _series(records: list[dict[str, Any]], key: str) -> dict[str, list[tuple[int, float]]]:
    """``{label: [(seq_len, value), …]}``, one line per variant, backend and batch size."""
    batches = {r["batch"] for r in _ok(records)}
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in _ok(records):
        if r.get(key):
            label = f"{r['variant']} · {r['backend']}" + (f" · B{r['batch']}" if len(batches) > 1 else "")
            series[label].append((r["seq_len"], r[key]))
    return {k: sorted(v) for k, v in sorted(series.items())}


def plot_scaling(records: list[dict[str, Any]], out: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(9, 6))
    for name, points in _series(records, "median_s").items():
        xs, ys = [p[0] for p in points], [p[1] * 1e3 for p in points]
        slopes = [f"slope {fit_exponent(xs, ys).exponent:.2f}"] if len(set(xs)) >= 2 else []
        if len(set(xs)) >= 3:  # short lengths flatten the slope: the longer half shows the asymptote
            slopes.append(f"longer half {tail_exponent(xs, ys).exponent:.2f}")
        ax.plot(xs, ys, marker="o", label=name + (f" ({', '.join(slopes)})" if slopes else ""))
    ax.set(xscale="log", yscale="log", xlabel="seq_len", ylabel="median time (ms)",
           title="Time against length: the slope is the empirical exponent")  # fmt: skip
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return save(fig, out, "scaling")


def plot_memory(records: list[dict[str, Any]], out: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for label, points in _series(records, "peak_bytes").items():
        ax.plot([p[0] for p in points], [p[1] / 2**20 for p in points], marker="o", label=label)
    kind = next((r.get("peak_kind") for r in _ok(records) if r.get("peak_kind")), "peak")
    ax.set(xscale="log", yscale="log", xlabel="seq_len", ylabel=f"peak extra memory (MiB, {kind})",
           title="Peak memory of one forward")  # fmt: skip
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return save(fig, out, "memory")


def plot_throughput(records: list[dict[str, Any]], out: Path) -> list[Path]:
    ok = _ok(records)
    variants = sorted({r["variant"] for r in ok})
    backends = sorted({r["backend"] for r in ok})
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(variants)), 5))
    width = 0.8 / max(1, len(backends))
    for i, backend in enumerate(backends):
        heights = []
        for variant in variants:
            rows = [r for r in ok if r["variant"] == variant and r["backend"] == backend]
            longest = max(rows, key=lambda r: (r["seq_len"], r["batch"]), default=None)
            heights.append(longest["tokens_per_s"] if longest else 0.0)
        ax.bar([j + i * width for j in range(len(variants))], heights, width, label=backend)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(variants))], variants, rotation=20)
    ax.set(ylabel="tokens/s at the longest length", title="Throughput")
    ax.legend(fontsize=7)
    return save(fig, out, "throughput")


def plot_roofline(records: list[dict[str, Any]], out: Path, hardware: Hardware) -> list[Path]:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    dtype = next((r["case"]["dtype"] for r in _ok(records)), "float32")
    peak, bandwidth = hardware.flops.get(dtype, max(hardware.flops.values())), hardware.bandwidth
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in _ok(records):
        case = Case(**r["case"])
        flops = forward_flops(r["mechanism"], r["backend"], case).executed
        points[f"{r['variant']} · {r['backend']}"].append((flops / min_bytes(case), flops / r["median_s"] / 1e12))
    for label, xy in sorted(points.items()):  # one color per (variant, backend), every length
        ax.scatter([p[0] for p in xy], [p[1] for p in xy], s=18, label=label)
    intensities = [p[0] for xy in points.values() for p in xy]
    if intensities:
        xs = [min(intensities) / 4, max(intensities) * 4]
        ridge = peak / bandwidth
        ax.plot([xs[0], ridge, xs[1]], [xs[0] * bandwidth / 1e12, peak / 1e12, peak / 1e12], "k--", label=hardware.name)
    ax.legend(fontsize=6)
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (executed FLOP / minimum byte)",
           ylabel="achieved TFLOP/s (executed)", title="Roofline")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    return save(fig, out, "roofline")


def _picture_case(variant: str, n: int) -> Case:
    return VARIANTS[variant].case(n, heads=4, head_dim=16, window=9, top_k=6, stride=8, block=8, num_random=1)


def _grid(count: int) -> tuple[Any, list[Any]]:
    cols = min(4, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows))
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax in flat[count:]:
        ax.axis("off")
    fig.set_layout_engine("constrained")
    return fig, flat


def _weights(variant: str, n: int) -> torch.Tensor:
    case = _picture_case(variant, n)
    q, k, _ = make_inputs(case)
    return get_mechanism(VARIANTS[variant].mechanism).weights(q.double(), k.double(), case)


def plot_masks(out: Path, n: int = 48) -> list[Path]:
    fig, axes = _grid(len(PICTURE_VARIANTS))
    for ax, variant in zip(axes, PICTURE_VARIANTS, strict=False):
        ax.imshow((_weights(variant, n)[0, 0] > 0).float().numpy(), cmap="Greys", interpolation="nearest")
        ax.set_title(variant, fontsize=9)
        ax.set(xlabel="key", ylabel="query")
    fig.suptitle(f"Which keys each query attends to (n = {n}; black = attended)")
    return save(fig, out, "masks")


def plot_heatmaps(out: Path, n: int = 48) -> list[Path]:
    fig, axes = _grid(len(PICTURE_VARIANTS))
    for ax, variant in zip(axes, PICTURE_VARIANTS, strict=False):
        image = ax.imshow(_weights(variant, n)[0, 0].numpy(), cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_title(variant, fontsize=9)
    fig.suptitle(f"Attention weights on random inputs (head 0, n = {n})")
    return save(fig, out, "heatmaps")


def plot_positions(out: Path, n: int = 64, dim: int = 64, heads: int = 8) -> list[Path]:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    image = left.imshow(sinusoidal_table(n, dim).T.numpy(), aspect="auto", cmap="RdBu", interpolation="nearest")
    fig.colorbar(image, ax=left)
    left.set(title="Sinusoidal positions (Vaswani et al.)", xlabel="position", ylabel="dimension")
    mech = get_mechanism("alibi")
    case = Case(heads=heads, q_len=n, causal=True)
    bias = mech.dense_bias(case, "cpu", torch.float64)  # type: ignore[attr-defined]
    for h in range(heads):
        right.plot(bias[h, n - 1].numpy(), label=f"head {h}")
    right.set(title="ALiBi bias of the last query, per head", xlabel="key position", ylabel="bias")
    right.legend(fontsize=7)
    return save(fig, out, "positions")


def plot_heads(out: Path, n: int = 48, heads: int = 8) -> list[Path]:
    case = Case(heads=heads, q_len=n, head_dim=16, causal=True)
    q, k, _ = make_inputs(case)
    weights = get_mechanism("alibi").weights(q.double(), k.double(), case)
    slopes = alibi_slopes(heads)
    fig, axes = _grid(heads)
    for h, ax in enumerate(axes[:heads]):
        ax.imshow(weights[0, h].numpy(), cmap="magma", interpolation="nearest")
        ax.set_title(f"head {h}: slope {float(slopes[h]):.4g}", fontsize=9)
    fig.suptitle("ALiBi per head: steep slopes keep attention local")
    return save(fig, out, "heads")


def plot_results(records: list[dict[str, Any]], out: Path, kinds: list[str], hardware: Hardware | None) -> list[Path]:
    paths: list[Path] = []
    for kind in kinds:
        if kind == "roofline":
            if hardware is None:
                raise ValueError("roofline needs hardware ceilings")
            paths += plot_roofline(records, out, hardware)
        else:
            paths += {"scaling": plot_scaling, "memory": plot_memory, "throughput": plot_throughput}[kind](records, out)
    return paths


def plot_pictures(out: Path, kinds: list[str]) -> list[Path]:
    makers = {"masks": plot_masks, "heatmaps": plot_heatmaps, "positions": plot_positions, "heads": plot_heads}
    return [path for kind in kinds for path in makers[kind](out)]
