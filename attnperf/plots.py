"""Plots (matplotlib, Agg): from sweep result files, and from the mechanisms themselves.

From a sweep JSON (``attnperf sweep --json``):
  * ``scaling``: log-log median time against seq_len, the fitted slope in the legend — per-call
    overhead flattens the short end, the slope shows at the long end;
  * ``memory``: peak memory against seq_len;
  * ``throughput``: tokens/s per backend at each variant's longest length;
  * ``roofline``: achieved TFLOP/s against arithmetic intensity, under the ceilings.
  Scaling, memory and roofline are small multiples: one panel per variant, a colour per
  backend (the same in every panel) and a line style per batch size, so that no two lines
  share a look however many there are. Their length axes are ticked at the measured lengths
  (256, 1k, 4k), and their legends sit below each panel, never over the data.
From the definitions (no results needed), at a chosen n, window, top-k, stride and seed
(:class:`PictureOptions`; the defaults are the classic benchmarks' n 64, window 32, top-k 32):
  * ``masks``: which keys each query sees, per variant, full attention included;
    ``heatmaps``: attention weights on seeded random inputs, axes labelled with ``tokens`` if given;
    ``positions``: the sinusoidal table, RoPE's rotation angles and how q·k of a rotated vector
    depends on the distance only, and ALiBi's bias matrix per head with its slope;
    ``heads``: per-head weights under ALiBi;
  * ``text``: the weights of real tokens (``PictureOptions.text``) through a seeded
    :class:`~attnperf.layers.MultiHeadAttention` (:func:`text_weights`).
  Every weights heatmap draws the entries the mechanism's own definition masks (:func:`attended`)
  in grey, apart from small weights, and has a colour bar.
:func:`plot_layer_weights` draws the weights a layer returned (``need_weights=True``).
Every figure is written as PNG and SVG.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import LogNorm, Normalize
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from attnperf.analysis import fit_exponent, forward_flops, min_bytes, tail_exponent
from attnperf.analysis.hardware import Hardware
from attnperf.backends import get_backend
from attnperf.case import Case, make_inputs
from attnperf.catalog import VARIANTS
from attnperf.layers import MultiHeadAttention, sinusoidal_table
from attnperf.mechanisms import get_mechanism
from attnperf.mechanisms.base import Mechanism, SoftmaxMechanism, dense_causal
from attnperf.mechanisms.linear import Linear
from attnperf.mechanisms.positional import alibi_slopes, rope_tables, rotate_half_rope
from attnperf.mechanisms.sparse import TopK, topk_keep
from attnperf.records import Record
from attnperf.reports.crossover import Point, crossovers

RESULT_PLOTS = ("scaling", "memory", "throughput", "roofline")
PICTURE_PLOTS = ("masks", "heatmaps", "positions", "heads", "text")
#: Pictures drawn when no kinds are asked (``text`` only when there is a text).
DEFAULT_PICTURES = ("masks", "heatmaps", "positions", "heads")
PICTURE_VARIANTS = (
    "full", "causal", "local", "sliding_window", "topk", "strided", "strided_columns", "fixed", "bigbird",
    "bigbird_tokens", "linear_causal", "alibi",
)  # fmt: skip
LINE_STYLES = ("-", "--", ":", "-.")
WEIGHT_SCALES = ("linear", "log")
#: Drawn where the mechanism masks a pair, so that a masked entry never looks like a small weight.
MASKED_COLOUR = "#d0d0d0"
MASKED_NOTE = "grey: masked by the mechanism"
#: Tokens a text picture takes: one labelled row and column each, still readable at 64.
TEXT_TOKENS = (2, 64)
#: The seeded layer a text goes through: width and heads of :func:`text_weights`.
TEXT_WIDTH, TEXT_HEADS = 64, 4
#: Words (letters, digits, underscores) and single punctuation marks; no subwords, no model vocabulary.
TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class PictureOptions:
    """The size and options the mechanism pictures are drawn at.

    ``n`` tokens (``len(tokens)`` when tokens are given); ``window`` and ``top_k`` as the
    mechanisms define them; ``stride`` None = round(√n) as the strided mechanisms default;
    BigBird in blocks of ``block`` with one random block per row. ``seed`` draws the random
    inputs (and BigBird's random blocks) and the text picture's layer; ``weight_scale`` is the
    heatmaps' colour scale (``log`` where weights span decades); ``text`` is what the ``text``
    picture tokenizes (:func:`text_tokens`).
    """

    n: int = 64
    window: int = 32
    top_k: int = 32
    stride: int | None = None
    block: int = 8
    tokens: tuple[str, ...] | None = None
    seed: int = 0
    weight_scale: str = "linear"
    text: str | None = None

    def __post_init__(self) -> None:
        for name in ("n", "window", "top_k", "block"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.weight_scale not in WEIGHT_SCALES:
            raise ValueError(f"weight_scale must be one of {list(WEIGHT_SCALES)}, got {self.weight_scale!r}")
        if self.tokens is not None and len(self.tokens) != self.n:
            raise ValueError(f"tokens: {len(self.tokens)} given, n is {self.n} (give n=len(tokens))")
        if self.text is not None:
            text_tokens(self.text)

    def case(self, variant: str) -> Case:
        """The variant's case at these options (top-k clipped to n)."""
        return VARIANTS[variant].case(
            self.n, heads=4, head_dim=16, window=self.window, top_k=min(self.top_k, self.n), stride=self.stride,
            block=self.block, num_random=1, seed=self.seed,
        )  # fmt: skip


def save(fig: Any, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for path in paths:
        fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None} if path.suffix == ".png" else None)
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


def length_label(n: int) -> str:
    """A measured length as a tick label: 256, 1k, 1.5k, 16k (k = 1024, as the lengths are powers of two)."""
    return f"{n / 1024:g}k" if n >= 1024 and n % 256 == 0 else str(n)


def _plain_number(value: float, _position: Any = None) -> str:
    return f"{value:g}"


def _log_axes(ax: Any, lengths: Sequence[int] | None) -> None:
    """Log axes that read: the x ticks at the measured ``lengths`` (when given) with plain labels; y
    labelled at 1, 2 and 5 of each decade (only at the decades where the data spans more than 2.5);
    no minor tick labels (the log formatter's minor labels collide with the majors, as in
    ``3×10⁴×10²``). Call it once the data is drawn: the y ticks follow its span."""
    ax.set(xscale="log", yscale="log")
    if lengths:
        ax.set_xticks(lengths, [length_label(n) for n in lengths])
        ax.tick_params(axis="x", labelsize=7, rotation=45 if len(lengths) > 5 else 0)
    ax.xaxis.set_minor_formatter(NullFormatter())
    low, high = ax.get_ylim()
    decades = math.log10(high / low) if low > 0 and high > low else 0.0
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)))
    ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)


def _legend_below(ax: Any) -> None:
    """The panel's legend under its axes, outside the data (the constrained layout makes room)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=1, frameon=False)


def _small_multiples(records: list[dict[str, Any]], key: str, scale: float, ylabel: str, title: str,
                     slopes: bool) -> Any:  # fmt: skip
    fig, panels, colours, styles = _panels(records)
    lengths: dict[str, set[int]] = defaultdict(set)
    for (variant, backend, batch), points in _lines(records, key).items():
        xs, ys = [p[0] for p in points], [p[1] * scale for p in points]
        lengths[variant].update(xs)
        label = backend + (f" B{batch}" if len(styles) > 1 else "")
        if slopes and len(set(xs)) >= 2:  # short lengths flatten the slope: the longer half shows the asymptote
            label += f" ({fit_exponent(xs, ys).exponent:.2f}"
            label += f", longer half {tail_exponent(xs, ys).exponent:.2f})" if len(set(xs)) >= 3 else ")"
        ax = panels[variant]
        ax.plot(xs, ys, marker="o", color=colours[backend], linestyle=styles[batch], label=label)
    for variant, ax in panels.items():
        _log_axes(ax, sorted(lengths[variant]))
        ax.set(xlabel="seq_len", ylabel=ylabel, title=variant)
        _legend_below(ax)
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
    batches = len({p.batch for p in points}) > 1
    marked = set()
    for c in crossovers(points):
        ax = panels.get(c.variant)
        if ax is None or c.time.length is None:
            continue
        colour = next((line.get_color() for line in ax.get_lines() if line.get_label().split()[0] == c.backend), "k")
        who = c.backend + (f" B{c.batch}" if batches else "")
        label = f"{who} faster than {c.reference} from n ≈ {c.time.length:,.0f} ({c.time.how})"
        ax.axvline(c.time.length, color=colour, linestyle="--" if c.time.how == "extrapolated" else ":", label=label)
        marked.add(ax)
    for ax in marked:  # the legend again, with the marks, where the panel's legend is: below it
        _legend_below(ax)


def plot_memory(records: list[dict[str, Any]], out: Path) -> list[Path]:
    kind = next((r.get("peak_kind") for r in _ok(records) if r.get("peak_kind")), "peak")
    fig = _small_multiples(records, "peak_bytes", 2**-20, f"peak extra MiB ({kind})", "Peak memory of one forward",
                           slopes=False)  # fmt: skip
    return save(fig, out, "memory")


def plot_throughput(records: list[dict[str, Any]], out: Path) -> list[Path]:
    ok = _ok(records)
    variants = sorted({r["variant"] for r in ok})
    backends = sorted({r["backend"] for r in ok})
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(variants)), 5), layout="constrained")
    width = 0.8 / max(1, len(backends))
    lengths = set()
    for i, backend in enumerate(backends):
        heights = []
        for variant in variants:
            rows = [r for r in ok if r["variant"] == variant and r["backend"] == backend]
            longest = max(rows, key=lambda r: (r["seq_len"], r["batch"]), default=None)
            heights.append(longest["tokens_per_s"] if longest else 0.0)
            lengths.update([longest["seq_len"]] if longest else [])
        ax.bar([j + i * width for j in range(len(variants))], heights, width, label=backend)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(variants))], variants, rotation=20)
    at = ", ".join(length_label(n) for n in sorted(lengths))
    ax.set(ylabel="tokens/s at the longest length", title=f"Throughput at each variant's longest length ({at})")
    ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
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
        _log_axes(ax, None)
        ax.xaxis.set_major_formatter(FuncFormatter(_plain_number))
        ax.set(xlabel="FLOP / minimum byte", ylabel="TFLOP/s (executed)", title=variant)
        _legend_below(ax)
    fig.suptitle("Roofline, per variant (points along a line: increasing seq_len)")
    return save(fig, out, "roofline")


def _grid(count: int, size: float = 3.2, cols: int = 4) -> tuple[Any, list[Any]]:
    cols = min(cols, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.axis("off")
    fig.set_layout_engine("constrained")
    return fig, flat


def attended(mechanism: Mechanism, q: torch.Tensor, k: torch.Tensor, case: Case) -> torch.Tensor:
    """``[B, H, Lq, Lk]`` booleans, True where the mechanism's own definition lets query i see key j.

    From the definition, not from the weights: a weight that underflows to 0 is a small weight, not
    a masked one. Positional patterns (windows, strides, BigBird, causal) from the mask the backends
    reproduce; top-k from its own selection on these scores (ties: the lower key); linear attention
    masks only causally.
    """
    shape = (q.shape[0], case.heads, case.q_len, case.k_len)
    if isinstance(mechanism, SoftmaxMechanism):
        mask = mechanism.dense_mask(case, q.device)
        return torch.ones(shape, dtype=torch.bool) if mask is None else mask.expand(shape)
    if isinstance(mechanism, TopK):
        scores = mechanism.scores(q, k, case, None)
        return topk_keep(scores, min(case.top_k or case.k_len, case.k_len)) & scores.isfinite()
    if isinstance(mechanism, Linear):
        return dense_causal(case, q.device).expand(shape) if case.causal else torch.ones(shape, dtype=torch.bool)
    raise TypeError(f"no mask definition for the {mechanism.name} mechanism's pictures")


def _weights(variant: str, options: PictureOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Head 0's weights on the case's seeded random inputs, and what the mechanism lets through."""
    case = options.case(variant)
    q, k, _ = make_inputs(case)
    mechanism = get_mechanism(VARIANTS[variant].mechanism)
    q, k = q.double(), k.double()
    return mechanism.weights(q, k, case)[0, 0], attended(mechanism, q, k, case)[0, 0]


def draw_weights(fig: Any, ax: Any, weights: torch.Tensor, allowed: torch.Tensor | None, scale: str = "linear",
                 cmap: str = "viridis", label: str = "weight", norm: Normalize | None = None) -> Any:  # fmt: skip
    """A heatmap of ``weights`` ``[Lq, Lk]``; entries where ``allowed`` is False are masked and drawn in
    :data:`MASKED_COLOUR`, apart from any weight. ``scale="log"`` spreads weights that span decades (its
    floor: the smallest positive weight shown). With ``norm`` (shared by the figure's panels) no colour
    bar is drawn here: the caller draws one for the figure; otherwise the panel gets its own."""
    values = weights.detach().to("cpu", torch.float64).numpy()
    hidden = np.zeros(values.shape, dtype=bool) if allowed is None else ~allowed.cpu().numpy()
    data = np.ma.masked_array(values, mask=hidden)
    colours = plt.get_cmap(cmap).with_extremes(bad=MASKED_COLOUR)
    shown = data.compressed()
    if norm is None and scale == "log":
        positive = shown[shown > 0]
        floor = float(positive.min()) if positive.size else 1e-12
        norm = LogNorm(vmin=floor, vmax=max(float(shown.max()), floor * 10))
        data = np.ma.masked_array(np.clip(values, floor, None), mask=hidden)
        own_bar = True
    elif norm is None:
        low = min(0.0, float(shown.min())) if shown.size else 0.0
        high = float(shown.max()) if shown.size else 1.0
        norm = Normalize(vmin=low, vmax=high if high > low else low + 1.0)
        own_bar = True
    else:
        own_bar = False
    image = ax.imshow(data, cmap=colours, norm=norm, interpolation="nearest")
    if own_bar:
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        bar.set_label(label, fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return image


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


def masks_figure(options: PictureOptions | None = None, variants: Sequence[str] = PICTURE_VARIANTS) -> Any:
    """Which keys each query sees, from each mechanism's own mask (top-k's on the seeded inputs)."""
    options = options or PictureOptions()
    fig, axes = _grid(len(variants))
    for ax, variant in zip(axes, variants, strict=False):
        ax.imshow(_weights(variant, options)[1].float().numpy(), cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(_subtitle(variant, options), fontsize=8)
        _label_tokens(ax, options.tokens)
    fig.suptitle(f"Which keys each query attends to (n = {options.n}; black = attended; top-k and BigBird's random "
                 f"blocks from seed {options.seed})")  # fmt: skip
    return fig


def plot_masks(
    out: Path, options: PictureOptions | None = None, variants: Sequence[str] = PICTURE_VARIANTS
) -> list[Path]:
    return save(masks_figure(options, variants), out, "masks")


def heatmaps_figure(options: PictureOptions | None = None, variants: Sequence[str] = PICTURE_VARIANTS) -> Any:
    """Head 0's weights per variant on seeded random inputs; masked entries grey, a colour bar per panel."""
    options = options or PictureOptions()
    fig, axes = _grid(len(variants))
    for ax, variant in zip(axes, variants, strict=False):
        weights, allowed = _weights(variant, options)
        draw_weights(fig, ax, weights, allowed, options.weight_scale)
        ax.set_title(_subtitle(variant, options), fontsize=8)
        _label_tokens(ax, options.tokens)
    labels = " (tokens label the axes only)" if options.tokens else ""
    fig.suptitle(f"Attention weights on random inputs{labels}: seed {options.seed}, head 0, n = {options.n}, "
                 f"{options.weight_scale} colour scale; {MASKED_NOTE}")  # fmt: skip
    return fig


def plot_heatmaps(
    out: Path, options: PictureOptions | None = None, variants: Sequence[str] = PICTURE_VARIANTS
) -> list[Path]:
    return save(heatmaps_figure(options, variants), out, "heatmaps")


def layer_weights_figure(
    weights: torch.Tensor,
    *,
    tokens: Sequence[str] | None = None,
    query_tokens: Sequence[str] | None = None,
    title: str = "Attention weights returned by the layer",
    batch_index: int = 0,
    allowed: torch.Tensor | None = None,
    scale: str = "linear",
) -> Any:
    """The figure of :func:`plot_layer_weights`; ``allowed`` (``[Lq, Lk]`` booleans, False = masked) greys
    out the pairs the layer's mechanism masks."""
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
    if allowed is not None and tuple(allowed.shape) != tuple(w.shape[-2:]):
        raise ValueError(f"allowed: shape {tuple(allowed.shape)} given for weights of {tuple(w.shape[-2:])}")
    heads = w.shape[1]
    labelled = tokens is not None and len(tokens) > 12  # room for a readable label per row and column
    fig, axes = _grid(heads, size=4.8 if labelled else 3.2, cols=2 if labelled and heads == 4 else 4)
    for h, ax in enumerate(axes[:heads]):
        draw_weights(fig, ax, w[batch_index, h], allowed, scale)
        ax.set_title(f"head {h}" if heads > 1 else "weights", fontsize=9)
        _label_tokens(ax, tokens, rows)
    fig.suptitle(title + (f"; {MASKED_NOTE}" if allowed is not None and not bool(allowed.all()) else ""))
    return fig


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
    fig = layer_weights_figure(weights, tokens=tokens, query_tokens=query_tokens, title=title,
                               batch_index=batch_index)  # fmt: skip
    return save(fig, out, name)


def text_tokens(text: str) -> list[str]:
    """The words and punctuation marks of ``text`` (:data:`TOKEN_PATTERN`), checked to fit a picture:
    a ``ValueError`` when there are fewer or more than :data:`TEXT_TOKENS` allows."""
    tokens = TOKEN_PATTERN.findall(text)
    low, high = TEXT_TOKENS
    if not tokens:
        raise ValueError("the text has no tokens (words or punctuation)")
    if not low <= len(tokens) <= high:
        raise ValueError(f"the text has {len(tokens)} tokens; a picture takes {low} to {high}")
    return tokens


def token_vector(token: str, seed: int, width: int = TEXT_WIDTH) -> torch.Tensor:
    """The embedding of ``token`` under ``seed``: standard normal, drawn from a hash of the seed and the
    case-folded token, so that a repeated word gets the same vector wherever it stands and on every
    machine (no model vocabulary: the pictures need no download)."""
    digest = hashlib.blake2b(f"{seed}\0{token.casefold()}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
    return torch.randn(width, generator=generator)


def text_weights(text: str, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """The tokens of ``text`` and the ``[1, H, n, n]`` weights a causal
    :class:`~attnperf.layers.MultiHeadAttention` (width :data:`TEXT_WIDTH`, :data:`TEXT_HEADS` heads,
    sinusoidal positions, PyTorch's default init drawn from ``seed``) gives their :func:`token_vector`
    embeddings. Untrained: the picture shows what the layer does with these vectors (repeated words
    get equal keys, positions shift them), not what a trained model attends to."""
    tokens = text_tokens(text)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = MultiHeadAttention(TEXT_WIDTH, TEXT_HEADS, positions="sinusoidal", causal=True, max_len=TEXT_TOKENS[1])
    x = torch.stack([token_vector(t, seed) for t in tokens])[None]
    with torch.no_grad():
        _, weights = layer(x, need_weights=True)
    return tokens, weights


def text_figure(text: str, seed: int = 0, scale: str = "linear") -> Any:
    """Every head's weights over the text's tokens (:func:`text_weights`), the masked future grey."""
    tokens, weights = text_weights(text, seed)
    n = len(tokens)
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    title = (f"Weights of the text's {n} tokens through a causal MultiHeadAttention, width {TEXT_WIDTH}, "
             f"{TEXT_HEADS} heads, untrained, seed {seed}\ntokens: words and punctuation; embeddings: normal vectors "
             "hashed from the seed and the word, plus sinusoidal positions")  # fmt: skip
    return layer_weights_figure(weights, tokens=tokens, title=title, allowed=allowed, scale=scale)


def plot_text(out: Path, options: PictureOptions) -> list[Path]:
    if options.text is None:
        raise ValueError("text: the text picture needs a text")
    return save(text_figure(options.text, options.seed, options.weight_scale), out, "text")


def _rope_panels(fig: Any, angle_ax: Any, distance_ax: Any, n: int, dim: int, seed: int) -> None:
    """RoPE from the project's tables and rotation: the angle each (position, pair) turns by, and
    q·k of rotated copies of one vector against their distance, at two absolute positions."""
    cos, sin = rope_tables(torch.arange(n), dim, torch.float64)
    angles = torch.atan2(sin, cos)[:, : dim // 2]
    image = angle_ax.imshow(angles.T.numpy(), aspect="auto", cmap="twilight", interpolation="nearest",
                            vmin=-math.pi, vmax=math.pi)  # fmt: skip
    fig.colorbar(image, ax=angle_ax, label="angle (rad), wrapped to (−π, π]")
    angle_ax.set(title=f"RoPE: angle θ_m·p (half rotation, base 10000, D = {dim})", xlabel="position p",
                 ylabel="frequency pair m")  # fmt: skip
    x = torch.randn(1, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    distances = torch.arange(n)
    for start, style in ((n - 1, "-"), (8 * n, "--")):
        q_cos, q_sin = rope_tables(torch.tensor([start]), dim, torch.float64)
        k_cos, k_sin = rope_tables(start - distances, dim, torch.float64)
        dots = rotate_half_rope(x, k_cos, k_sin) @ rotate_half_rope(x, q_cos, q_sin)[0]
        distance_ax.plot(distances.numpy(), (dots / dim).numpy(), style, label=f"query at position {start}")
    distance_ax.set(title=f"RoPE: q·k / D of rotated copies of one vector (seed {seed})",
                    xlabel="distance (query position − key position)", ylabel="q·k / D")  # fmt: skip
    distance_ax.legend(fontsize=7, title="the same curve: only the distance counts", title_fontsize=7)
    distance_ax.grid(True, alpha=0.3)


def positions_figure(n: int = 64, dim: int = 64, heads: int = 8, seed: int = 0) -> Any:
    """The position encodings: the sinusoidal table, RoPE's angles and its relative q·k, and ALiBi's bias
    matrix per head (causal, the paper's setting) with each head's slope from :func:`alibi_slopes`."""
    fig = plt.figure(figsize=(16, 11), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(1, 1.55))
    table_ax, angle_ax, distance_ax = top.subplots(1, 3)
    image = table_ax.imshow(sinusoidal_table(n, dim).T.numpy(), aspect="auto", cmap="RdBu", interpolation="nearest")
    top.colorbar(image, ax=table_ax, label="value")
    table_ax.set(title="Sinusoidal positions (Vaswani et al.)", xlabel="position", ylabel="dimension")
    _rope_panels(top, angle_ax, distance_ax, n, dim, seed)
    case = Case(heads=heads, q_len=n, causal=True)
    mechanism = get_mechanism("alibi")
    bias = mechanism.dense_bias(case, "cpu", torch.float64)  # type: ignore[attr-defined]
    allowed = mechanism.dense_mask(case, "cpu")  # type: ignore[attr-defined]
    slopes = alibi_slopes(heads)
    cols = min(4, heads)
    axes = list(bottom.subplots(math.ceil(heads / cols), cols, squeeze=False).flat)
    shared = Normalize(vmin=float(bias[allowed.expand_as(bias)].min()), vmax=0.0)  # one scale: slopes compare
    for h, ax in enumerate(axes):
        if h >= heads:
            ax.axis("off")
            continue
        image = draw_weights(bottom, ax, bias[h], allowed, cmap="magma", norm=shared)
        ax.set_title(f"head {h}: slope {float(slopes[h]):.4g}", fontsize=9)
        ax.set(xlabel="key", ylabel="query")
    bottom.colorbar(image, ax=axes, shrink=0.8, label="bias added to the score (one scale for every head)")
    bottom.suptitle(f"ALiBi bias −slope·(i − j) per head (n = {n}, causal; {MASKED_NOTE}): steep slopes keep "
                    "attention local")  # fmt: skip
    return fig


def plot_positions(out: Path, n: int = 64, dim: int = 64, heads: int = 8) -> list[Path]:
    return save(positions_figure(n, dim, heads), out, "positions")


def heads_figure(options: PictureOptions | None = None, heads: int = 8) -> Any:
    """ALiBi's weights per head on seeded random inputs: the causal future grey, a colour bar each."""
    options = options or PictureOptions()
    n = options.n
    case = Case(heads=heads, q_len=n, head_dim=16, causal=True, seed=options.seed)
    q, k, _ = make_inputs(case)
    mechanism = get_mechanism("alibi")
    q, k = q.double(), k.double()
    weights, allowed = mechanism.weights(q, k, case), attended(mechanism, q, k, case)
    slopes = alibi_slopes(heads)
    fig, axes = _grid(heads)
    for h, ax in enumerate(axes[:heads]):
        draw_weights(fig, ax, weights[0, h], allowed[0, h], options.weight_scale, cmap="magma")
        ax.set_title(f"head {h}: slope {float(slopes[h]):.4g}", fontsize=9)
        _label_tokens(ax, options.tokens)
    fig.suptitle(f"ALiBi weights per head on random inputs (seed {options.seed}, n = {n}, "
                 f"{options.weight_scale} colour scale; {MASKED_NOTE}): steep slopes keep attention local")  # fmt: skip
    return fig


def plot_heads(out: Path, options: PictureOptions | None = None, heads: int = 8) -> list[Path]:
    return save(heads_figure(options, heads), out, "heads")


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
            paths += save(positions_figure(n=options.n, seed=options.seed), out, "positions")
        else:
            draw = {"masks": plot_masks, "heatmaps": plot_heatmaps, "heads": plot_heads, "text": plot_text}[kind]
            paths += draw(out, options)
    return paths
