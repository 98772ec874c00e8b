"""Plots (matplotlib, Agg): from sweep result files, and from the mechanisms themselves.

From a sweep JSON (``attnperf sweep --json``):
  * ``scaling``: log-log median time against seq_len, the fitted slope in the legend — per-call
    overhead flattens the short end, the slope shows at the long end;
  * ``memory``: peak memory against seq_len;
  * ``throughput``: tokens/s per backend at each variant's longest length;
  * ``roofline``: achieved TFLOP/s against arithmetic intensity, under the ceilings.
  Scaling, memory and roofline are small multiples: one panel per variant, a colour per
  backend (the same in every panel) and a line style per batch size, so that no two lines
  share a look however many there are.
From the definitions (no results needed), at a chosen n, window, top-k and stride
(:class:`PictureOptions`; the defaults are the classic benchmarks' n 64, window 32, top-k 32):
  * ``masks``: which keys each query sees, per variant, full attention included;
    ``heatmaps``: attention weights on random inputs, axes labelled with ``tokens`` if given;
    ``positions``: the sinusoidal table and ALiBi's bias; ``heads``: per-head weights under ALiBi.
:func:`plot_layer_weights` draws the weights a layer returned (``need_weights=True``).
Every figure is written as PNG and SVG.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from attnperf.analysis import fit_exponent, forward_flops, min_bytes, tail_exponent
from attnperf.analysis.hardware import Hardware
from attnperf.backends import get_backend
from attnperf.case import Case, make_inputs
from attnperf.catalog import VARIANTS
from attnperf.layers import sinusoidal_table
from attnperf.mechanisms import get_mechanism
from attnperf.mechanisms.positional import alibi_slopes
from attnperf.records import Record
from attnperf.reports.crossover import Point, crossovers

RESULT_PLOTS = ("scaling", "memory", "throughput", "roofline")
PICTURE_PLOTS = ("masks", "heatmaps", "positions", "heads")
PICTURE_VARIANTS = (
    "full", "causal", "local", "sliding_window", "topk", "strided", "strided_columns", "fixed", "bigbird",
    "bigbird_tokens", "linear_causal", "alibi",
)  # fmt: skip
LINE_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class PictureOptions:
    """The size and options the mechanism pictures are drawn at.

    ``n`` tokens (``len(tokens)`` when tokens are given); ``window`` and ``top_k`` as the
    mechanisms define them; ``stride`` None = round(√n) as the strided mechanisms default;
    BigBird in blocks of ``block`` with one random block per row.
    """

    n: int = 64
    window: int = 32
    top_k: int = 32
    stride: int | None = None
    block: int = 8
    tokens: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("n", "window", "top_k", "block"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.tokens is not None and len(self.tokens) != self.n:
            raise ValueError(f"tokens: {len(self.tokens)} given, n is {self.n} (give n=len(tokens))")

    def case(self, variant: str) -> Case:
        """The variant's case at these options (top-k clipped to n)."""
        return VARIANTS[variant].case(
            self.n, heads=4, head_dim=16, window=self.window, top_k=min(self.top_k, self.n), stride=self.stride,
            block=self.block, num_random=1,
        )  # fmt: skip


def save(fig: Any, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def plot_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Records as the plots read them: the point's identity flat beside its figures, and the time a
    table shows (the replay where the sweep timed one) as ``median_s``."""
    return [{**r.spec.as_dict(), "mechanism": r.mechanism, **r.to_dict(), "median_s": r.shown_s} for r in records]


def _ok(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "ok"]


def _panels(records: list[dict[str, Any]]) -> tuple[Any, dict[str, Any], dict[str, Any], dict[int, str]]:
    """A figure with one panel per variant, and the colour of each backend and style of each batch."""
    ok = _ok(records)
    variants = sorted({r["variant"] for r in ok}) or ["(no results)"]
    backends = sorted({r["backend"] for r in ok})
    cmap = plt.get_cmap("tab10" if len(backends) <= 10 else "tab20")
    colours = {b: cmap(i) for i, b in enumerate(backends)}
    styles = {b: LINE_STYLES[i % len(LINE_STYLES)] for i, b in enumerate(sorted({r["batch"] for r in ok}))}
    fig, axes = _grid(len(variants), size=3.6)
    return fig, dict(zip(variants, axes, strict=False)), colours, styles


def _lines(records: list[dict[str, Any]], key: str) -> dict[tuple[str, str, int], list[tuple[int, float]]]:
    """``{(variant, backend, batch): [(seq_len, value), …]}`` of the ok records that have ``key``."""
    lines: dict[tuple[str, str, int], list[tuple[int, float]]] = defaultdict(list)
    for r in _ok(records):
        if r.get(key):
            lines[(r["variant"], r["backend"], r["batch"])].append((r["seq_len"], r[key]))
    return {k: sorted(v) for k, v in sorted(lines.items())}


def _small_multiples(records: list[dict[str, Any]], key: str, scale: float, ylabel: str, title: str,
                     slopes: bool) -> Any:  # fmt: skip
    fig, panels, colours, styles = _panels(records)
    for (variant, backend, batch), points in _lines(records, key).items():
        xs, ys = [p[0] for p in points], [p[1] * scale for p in points]
        label = backend + (f" B{batch}" if len(styles) > 1 else "")
        if slopes and len(set(xs)) >= 2:  # short lengths flatten the slope: the longer half shows the asymptote
            label += f" ({fit_exponent(xs, ys).exponent:.2f}"
            label += f", longer half {tail_exponent(xs, ys).exponent:.2f})" if len(set(xs)) >= 3 else ")"
        ax = panels[variant]
        ax.plot(xs, ys, marker="o", color=colours[backend], linestyle=styles[batch], label=label)
    for variant, ax in panels.items():
        ax.set(xscale="log", yscale="log", xlabel="seq_len", ylabel=ylabel, title=variant)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title)
    return fig


def plot_scaling(records: list[dict[str, Any]], out: Path) -> list[Path]:
    title = "Time against length, per variant: the slope (in brackets) is the empirical exponent"
    fig = _small_multiples(records, "median_s", 1e3, "median time (ms)", title, slopes=True)
    _mark_crossovers(fig, records)
    return save(fig, out, "scaling")


def _mark_crossovers(fig: Any, records: list[dict[str, Any]]) -> None:
    """One vertical line per crossover in its variant's panel (titled with the variant), in the
    backend's colour: where the variant becomes faster than its dense reference (dashed where
    extrapolated beyond the grid; none where it is always or never faster)."""
    points = [Point(r["variant"], r["backend"], r["batch"], r["seq_len"], r.get("median_s"), r.get("peak_bytes"))
              for r in _ok(records)]  # fmt: skip
    panels = {ax.get_title(): ax for ax in fig.axes}
    for c in crossovers(points):
        ax = panels.get(c.variant)
        if ax is None or c.time.length is None:
            continue
        colour = next((line.get_color() for line in ax.get_lines() if line.get_label().split()[0] == c.backend), "k")
        label = f"{c.backend} faster than {c.reference} from n ≈ {c.time.length:,.0f} ({c.time.how})"
        ax.axvline(c.time.length, color=colour, linestyle="--" if c.time.how == "extrapolated" else ":", label=label)
        ax.legend(fontsize=6)


def plot_memory(records: list[dict[str, Any]], out: Path) -> list[Path]:
    kind = next((r.get("peak_kind") for r in _ok(records) if r.get("peak_kind")), "peak")
    fig = _small_multiples(records, "peak_bytes", 2**-20, f"peak extra MiB ({kind})", "Peak memory of one forward",
                           slopes=False)  # fmt: skip
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
    fig, panels, colours, styles = _panels(records)
    dtype = next((r["case"]["dtype"] for r in _ok(records)), "float32")
    peak, bandwidth = hardware.flops.get(dtype, max(hardware.flops.values())), hardware.bandwidth
    points: dict[tuple[str, str, int], list[tuple[float, float]]] = defaultdict(list)
    for r in _ok(records):
        case = Case(**r["case"])
        flops = forward_flops(get_mechanism(r["mechanism"]), get_backend(r["backend"]), case).executed
        points[(r["variant"], r["backend"], r["batch"])].append((flops / min_bytes(case), flops / r["median_s"] / 1e12))
    for (variant, backend, batch), xy in sorted(points.items()):
        label = backend + (f" B{batch}" if len(styles) > 1 else "")
        panels[variant].plot([p[0] for p in xy], [p[1] for p in xy], marker="o", markersize=4, color=colours[backend],
                             linestyle=styles[batch], label=label)  # fmt: skip
    intensities = [p[0] for xy in points.values() for p in xy]
    for variant, ax in panels.items():
        if intensities:
            xs = [min(intensities) / 4, max(intensities) * 4]
            ridge = peak / bandwidth
            ax.plot([xs[0], ridge, xs[1]], [xs[0] * bandwidth / 1e12, peak / 1e12, peak / 1e12], "k--",
                    linewidth=0.8, label=hardware.name)  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="FLOP / minimum byte", ylabel="TFLOP/s (executed)", title=variant)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("Roofline, per variant (points along a line: increasing seq_len)")
    return save(fig, out, "roofline")


def _grid(count: int, size: float = 3.2) -> tuple[Any, list[Any]]:
    cols = min(4, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.axis("off")
    fig.set_layout_engine("constrained")
    return fig, flat


def _weights(variant: str, options: PictureOptions) -> torch.Tensor:
    case = options.case(variant)
    q, k, _ = make_inputs(case)
    return get_mechanism(VARIANTS[variant].mechanism).weights(q.double(), k.double(), case)


def _label_tokens(ax: Any, tokens: Sequence[str] | None, rows: Sequence[str] | None = None) -> None:
    """Tokens as the tick labels of a weights image (keys below, queries on the left)."""
    if tokens is None:
        ax.set(xlabel="key", ylabel="query")
        return
    rows = tokens if rows is None else rows
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
    ax.set_yticks(range(len(rows)), rows, fontsize=6)


def _subtitle(variant: str, options: PictureOptions) -> str:
    case = options.case(variant)
    mechanism = get_mechanism(VARIANTS[variant].mechanism)
    shown = [f"{name}={getattr(case, name)}" for name in ("window", "top_k", "block") if name in mechanism.options]
    if "stride" in mechanism.options:
        from attnperf.mechanisms.sparse import stride_of

        shown.append(f"s={stride_of(case)}")
    return variant + (f" ({', '.join(shown)})" if shown else "")


def plot_masks(
    out: Path, options: PictureOptions | None = None, variants: Sequence[str] = PICTURE_VARIANTS
) -> list[Path]:
    options = options or PictureOptions()
    fig, axes = _grid(len(variants))
    for ax, variant in zip(axes, variants, strict=False):
        ax.imshow((_weights(variant, options)[0, 0] > 0).float().numpy(), cmap="Greys", interpolation="nearest",
                  vmin=0, vmax=1)  # fmt: skip
        ax.set_title(_subtitle(variant, options), fontsize=8)
        _label_tokens(ax, options.tokens)
    fig.suptitle(f"Which keys each query attends to (n = {options.n}; black = attended)")
    return save(fig, out, "masks")


def plot_heatmaps(
    out: Path, options: PictureOptions | None = None, variants: Sequence[str] = PICTURE_VARIANTS
) -> list[Path]:
    options = options or PictureOptions()
    fig, axes = _grid(len(variants))
    for ax, variant in zip(axes, variants, strict=False):
        image = ax.imshow(_weights(variant, options)[0, 0].numpy(), cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_title(_subtitle(variant, options), fontsize=8)
        _label_tokens(ax, options.tokens)
    fig.suptitle(f"Attention weights on random inputs (head 0, n = {options.n})")
    return save(fig, out, "heatmaps")


def plot_layer_weights(
    weights: torch.Tensor,
    out: Path,
    *,
    tokens: Sequence[str] | None = None,
    query_tokens: Sequence[str] | None = None,
    name: str = "layer_weights",
    title: str = "Attention weights returned by the layer",
    batch_index: int = 0,
) -> list[Path]:
    """Draw the weights a layer returned: one panel per head.

    ``weights``: ``[B, H, Lq, Lk]`` (``need_weights=True`` / ``return_attention=True``),
    ``[B, Lq, Lk]`` (nn's head average) or ``[Lq, Lk]``; ``batch_index`` picks the sequence.
    ``tokens`` label the keys, ``query_tokens`` the queries (default: ``tokens``, self-attention).
    """
    w = weights.detach().to("cpu", torch.float64)
    if w.dim() == 2:
        w = w[None, None]
    elif w.dim() == 3:
        w = w[:, None]
    elif w.dim() != 4:
        raise ValueError(f"weights must be [B, H, Lq, Lk], [B, Lq, Lk] or [Lq, Lk], got shape {tuple(weights.shape)}")
    if tokens is not None and len(tokens) != w.shape[-1]:
        raise ValueError(f"tokens: {len(tokens)} given for {w.shape[-1]} keys")
    rows = (
        query_tokens
        if query_tokens is not None
        else (tokens if tokens is not None and w.shape[-2] == w.shape[-1] else None)
    )
    if rows is not None and len(rows) != w.shape[-2]:
        raise ValueError(f"query_tokens: {len(rows)} given for {w.shape[-2]} queries")
    heads = w.shape[1]
    fig, axes = _grid(heads)
    for h, ax in enumerate(axes[:heads]):
        image = ax.imshow(w[batch_index, h].numpy(), cmap="viridis", interpolation="nearest", vmin=0)
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_title(f"head {h}" if heads > 1 else "weights", fontsize=9)
        if tokens is None:
            ax.set(xlabel="key", ylabel="query")
        else:
            _label_tokens(ax, tokens, rows)
    fig.suptitle(title)
    return save(fig, out, name)


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


def plot_heads(out: Path, options: PictureOptions | None = None, heads: int = 8) -> list[Path]:
    options = options or PictureOptions()
    n = options.n
    case = Case(heads=heads, q_len=n, head_dim=16, causal=True)
    q, k, _ = make_inputs(case)
    weights = get_mechanism("alibi").weights(q.double(), k.double(), case)
    slopes = alibi_slopes(heads)
    fig, axes = _grid(heads)
    for h, ax in enumerate(axes[:heads]):
        ax.imshow(weights[0, h].numpy(), cmap="magma", interpolation="nearest")
        ax.set_title(f"head {h}: slope {float(slopes[h]):.4g}", fontsize=9)
        _label_tokens(ax, options.tokens)
    fig.suptitle(f"ALiBi per head: steep slopes keep attention local (n = {n})")
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


def plot_pictures(out: Path, kinds: list[str], options: PictureOptions | None = None) -> list[Path]:
    options = options or PictureOptions()
    paths: list[Path] = []
    for kind in kinds:
        if kind == "positions":
            paths += plot_positions(out, n=options.n)
        else:
            paths += {"masks": plot_masks, "heatmaps": plot_heatmaps, "heads": plot_heads}[kind](out, options)
    return paths
