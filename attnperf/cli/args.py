"""The argument types and shared flags of every ``attnperf`` subcommand, and its table format."""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from attnperf.backends import BACKENDS
from attnperf.case import DTYPES
from attnperf.catalog import VARIANTS
from attnperf.errors import UsageError, check_workdir

#: Mechanism options and head layout, each a flag that overrides the variants' own.
OPTION_FLAGS = ("window", "top_k", "stride", "block", "num_global", "num_random", "kv_heads")


def csv_list(text: str) -> list[str]:
    """Comma-separated values, at least one, none twice (a point measured twice would be compared
    with itself)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one value (comma-separated)")
    twice = sorted({item for item in items if items.count(item) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{', '.join(twice)} given twice; give each value once")
    return items


def number(convert: Callable[[str], Any], allowed: str, ok: Callable[[Any], bool]) -> Callable[[str], Any]:
    """An argument type: ``convert(text)``, refused with "expected {allowed}, got …" unless ``ok``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text.strip()}")
        return value

    return parse


positive_int = number(int, "an integer >= 1", lambda v: v >= 1)
non_negative_int = number(int, "an integer >= 0", lambda v: v >= 0)
positive_float = number(float, "a finite number > 0", lambda v: 0 < v < math.inf)
fraction = number(float, "a fraction in [0, 1)", lambda v: 0 <= v < 1)


#: Tokens the mechanism pictures may have (``plot --n``, or the count of ``--tokens``): below one
#: BigBird block of 8 the sparse patterns do not show; above 512 a cell is under a pixel in the
#: figures and each of the 12 panels is a dense n × n mask (512 takes about 30 s on 2 CPU cores).
PICTURE_N = (8, 512)


#: ``plot --n``: an integer in :data:`PICTURE_N`.
picture_size = number(
    int, f"an integer from {PICTURE_N[0]} to {PICTURE_N[1]}", lambda v: PICTURE_N[0] <= v <= PICTURE_N[1]
)


def int_list(text: str) -> list[int]:
    """Comma-separated integers, each at least 1, at least one."""
    return [positive_int(item) for item in csv_list(text)]


def choices_list(allowed: Sequence[str], what: str) -> Any:
    def parse(text: str) -> list[str]:
        items = list(allowed) if text == "all" else csv_list(text)
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; allowed: all or {', '.join(allowed)}")
        return items

    return parse


def device_arg(text: str) -> str:
    """``cpu`` or ``cuda[:N]``, refused at once when no such GPU is visible."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no GPU visible to torch here (allowed: cpu)")
        if (device.index or 0) >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} GPUs")
    return text


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain fixed-width table of ``rows`` with ``(key, header)`` columns."""
    cells = [[header for _, header in columns]]
    for row in rows:
        cells.append([_cell(row.get(key)) for key, _ in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def add_shape_arguments(parser: argparse.ArgumentParser, *, seq_lens: str) -> None:
    parser.add_argument(
        "--variants",
        type=choices_list(list(VARIANTS), "variants"),
        default=list(VARIANTS),
        help=f"comma-separated, or 'all' (default): {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--backends",
        type=choices_list(list(BACKENDS), "backends"),
        default=list(BACKENDS),
        help=f"comma-separated, or 'all' (default): {', '.join(BACKENDS)}",
    )
    parser.add_argument(
        "--seq-lens", type=int_list, default=int_list(seq_lens), help=f"comma-separated (default {seq_lens})"
    )
    add_case_arguments(parser)


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    """Heads, head_dim, dtype, device and the mechanism options, shared by every command."""
    parser.add_argument("--heads", type=positive_int, default=8, help="query heads (default 8)")
    parser.add_argument("--head-dim", type=positive_int, default=64, help="head dimension (default 64)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="default float32")
    parser.add_argument("--device", type=device_arg, default="cpu", help="cpu (default) or cuda[:N]")
    for name in OPTION_FLAGS:
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=positive_int, default=None, help=f"override the variants' {name}"
        )


def add_cuda_graphs_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cuda-graphs", action="store_true",
        help="time each point's call replayed as a CUDA graph (no Python or launch overhead; the replay's output is "
        "checked against the direct call's); a call that cannot be captured is recorded unsupported, with why",
    )  # fmt: skip


def add_keep_onnx_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-onnx", metavar="DIR", default=None,
        help="keep each graph the onnxruntime backends export in DIR, as <mechanism>_<case id>_<backend>.onnx "
        "(the case id names the shape, dtype and options), for inspection",
    )  # fmt: skip


def keeping_onnx(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``command`` with ``--keep-onnx DIR`` honoured: DIR checked before any point runs (a writable
    folder, and an onnxruntime backend among ``--backends``, else it would keep nothing), then every
    exported graph kept there for the command's duration (:func:`attnperf.backends.onnxrt.keeping_graphs`)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        if args.keep_onnx is None:
            return command(args)
        from attnperf.backends.onnxrt import OnnxRuntime, keeping_graphs

        check_workdir(Path(args.keep_onnx), "--keep-onnx")
        onnx = [name for name, backend in BACKENDS.items() if isinstance(backend, OnnxRuntime)]
        if not set(onnx) & set(args.backends):
            raise UsageError(f"--keep-onnx keeps the graphs of the backends {', '.join(onnx)}; --backends has none")
        with keeping_graphs(Path(args.keep_onnx).resolve()):
            return command(args)

    return run


def require_cuda_for_graphs(args: argparse.Namespace) -> None:
    if args.cuda_graphs and not args.device.startswith("cuda"):
        raise UsageError(f"--cuda-graphs needs --device cuda (got {args.device})")


def options_of(args: argparse.Namespace) -> dict[str, int]:
    return {name: getattr(args, name) for name in OPTION_FLAGS if getattr(args, name) is not None}


def check_heads(args: argparse.Namespace) -> None:
    """``--kv-heads`` against ``--heads``, refused before any point runs (every point would be a case
    that cannot be built)."""
    kv_heads = getattr(args, "kv_heads", None)
    if kv_heads is not None and (kv_heads > args.heads or args.heads % kv_heads):
        raise UsageError(f"--kv-heads {kv_heads}: must divide --heads {args.heads} (allowed: "
                         f"{', '.join(str(n) for n in range(1, args.heads + 1) if args.heads % n == 0)})")  # fmt: skip


def grid_of(args: argparse.Namespace) -> Any:
    """The :class:`attnperf.benchgrid.Grid` the shape arguments describe (flag combinations that
    cannot build any point are refused here, before the first one runs)."""
    from attnperf.benchgrid import Grid

    check_heads(args)
    return Grid(
        variants=tuple(getattr(args, "variants", None) or [args.variant]), backends=tuple(args.backends),
        seq_lens=tuple(getattr(args, "seq_lens", None) or [args.seq_len]), head_dims=(args.head_dim,),
        dtypes=(args.dtype,), device=args.device, heads=args.heads, batches=tuple(getattr(args, "batches", (1,))),
        options=tuple(sorted(options_of(args).items())),
    )  # fmt: skip


def case_from_flags(variant: str, seq_len: int, **shape: Any) -> Any:
    """``variant``'s :class:`~attnperf.case.Case` at ``seq_len`` in the shape the flags give. Case
    raises ValueError for combinations it refuses (``--heads 9`` with gqa's heads/4 kv heads);
    from flags that is the user's input, so it becomes a UsageError naming the point."""
    try:
        return VARIANTS[variant].case(seq_len, **shape)
    except ValueError as exc:
        raise UsageError(f"{variant} at {seq_len} tokens: {exc}") from None
