"""``attnperf model``: a Llama-3.2-1B-shaped decoder per transformers attention implementation."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from attnperf.cli.args import choices_list, device_arg, format_table, positive_int
from attnperf.errors import EXIT_FAILURE, Failure, check_output
from attnperf.model import IMPLEMENTATIONS, SIZES, TOLERANCE


def cmd_model(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from attnperf.files import write_json
    from attnperf.machine import machine_info
    from attnperf.model import ModelRun, model_config, transformers_reason
    from attnperf.records import Status

    if args.json:
        check_output(args.json, "--json")
    values = model_config(args.size, layers=args.layers, hidden=args.hidden, vocab=args.vocab)  # input first
    if (why := transformers_reason()) is not None:
        raise Failure(why)
    run = ModelRun(values, prompt_len=args.prompt_len, new_tokens=args.new_tokens, batch=args.batch,
                   dtype=args.dtype, device=args.device, seed=args.seed)  # fmt: skip
    rows = [run.row(impl, repeat=args.repeat) for impl in tqdm(args.implementations, desc="model", unit="impl",
                                                                file=sys.stderr)]  # fmt: skip
    eager = next((r for r in rows if r.implementation == "eager" and r.status is Status.OK), None)
    table = []
    for r in rows:
        row: dict[str, Any] = {"implementation": r.implementation, "status": str(r.status), "reason": r.reason or ""}
        if r.prefill_s is not None and r.decode_s_per_token is not None:  # it ran (status ok)
            row |= {"prefill_ms": r.prefill_s * 1e3, "prefill_tps": r.prefill_tokens_per_s,
                    "decode_ms": r.decode_s_per_token * 1e3, "decode_tps": r.decode_tokens_per_s,
                    "rel_error": r.rel_error}  # fmt: skip
            for key, value in (("prefill_mib", r.prefill_peak_bytes), ("decode_mib", r.decode_peak_bytes)):
                row[key] = value / 2**20 if value is not None else None
            if eager is not None and eager.prefill_s is not None and eager.decode_s_per_token is not None:
                row |= {"prefill_x": eager.prefill_s / r.prefill_s,
                        "decode_x": eager.decode_s_per_token / r.decode_s_per_token}  # fmt: skip
        table.append(row)
    print(f"Llama-3.2-1B config: {values['num_hidden_layers']} layers, hidden {values['hidden_size']}, "
          f"{values['num_attention_heads']} heads / {values['num_key_value_heads']} KV, vocab {values['vocab_size']}; "
          f"random weights; batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"{args.dtype} on {args.device}; medians of {args.repeat}")  # fmt: skip
    print(format_table(table, [("implementation", "attn_implementation"), ("status", "status"),
                               ("prefill_ms", "prefill ms"), ("prefill_tps", "prefill tok/s"),
                               ("decode_ms", "decode ms/token"), ("decode_tps", "decode tok/s"),
                               ("prefill_x", "prefill vs eager"), ("decode_x", "decode vs eager"),
                               ("prefill_mib", "prefill peak MiB"), ("decode_mib", "decode peak MiB"),
                               ("rel_error", "logits rel. err"), ("reason", "reason")]))  # fmt: skip
    if args.json:
        write_json(args.json, {"model": "Llama-3.2-1B (config.json values, random weights)", "config": values,
                               "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                               "dtype": args.dtype, "device": args.device, "repeat": args.repeat, "seed": args.seed,
                               "machine": machine_info(), "rows": [r.to_dict() for r in rows]})  # fmt: skip
    if any(r.status is Status.WRONG for r in rows) or not any(r.status is Status.OK for r in rows):
        return EXIT_FAILURE
    return 0


def register(sub: Any) -> None:
    """Add model to the ``attnperf`` command."""
    p = sub.add_parser(
        "model", help="a Llama-3.2-1B-shaped decoder (random weights): prefill, decode, memory per attn_implementation"
    )
    p.add_argument(
        "--size", choices=list(SIZES), default="small",
        help="1b: Llama-3.2-1B's config.json; small (default): 2 layers, hidden 512, seconds on a CPU",
    )  # fmt: skip
    p.add_argument("--layers", type=positive_int, default=None, help="override the number of decoder layers")
    p.add_argument(
        "--hidden", type=positive_int, default=None,
        help="override the hidden size (a multiple of 256: heads = hidden/64, KV heads = heads/4)",
    )  # fmt: skip
    p.add_argument("--vocab", type=positive_int, default=None, help="override the vocabulary (default 128256)")
    p.add_argument(
        "--implementations", type=choices_list(list(IMPLEMENTATIONS), "implementations"),
        default=list(IMPLEMENTATIONS), help=f"comma-separated, or 'all' (default): {', '.join(IMPLEMENTATIONS)}",
    )  # fmt: skip
    p.add_argument("--prompt-len", type=positive_int, default=128, help="prompt tokens of the prefill (default 128)")
    p.add_argument("--new-tokens", type=positive_int, default=16, help="tokens decoded with the KV cache (default 16)")
    p.add_argument("--batch", type=positive_int, default=1, help="sequences per call (default 1)")
    p.add_argument("--repeat", type=positive_int, default=5, help="timed samples; the median is reported (default 5)")
    p.add_argument("--dtype", choices=list(TOLERANCE), default="float32", help="default float32")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and tokens (default 0)")
    p.add_argument("--json", help="write the rows (with samples, config and machine) to this JSON file, atomically")
    p.set_defaults(func=cmd_model)
