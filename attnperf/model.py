"""Model-level run: a whole decoder, one row per attention implementation of its model library.

Single attention calls leave out what a model adds around them (projections, RoPE, the MLP, the
KV cache's bookkeeping, the LM head), so the classic suites also time a whole Llama-3.2-1B. Here
the model is Hugging Face transformers' ``LlamaForCausalLM`` built from Llama-3.2-1B's published
configuration (:data:`LLAMA_3_2_1B`) with random weights drawn from a seed: nothing is
downloaded, and the weights do not change what is timed. ``--size small`` (or ``--layers`` /
``--hidden`` / ``--vocab``) shrinks it so that it runs on a CPU in seconds.

One model is built and its ``attn_implementation`` switched between ``eager``, ``sdpa``,
``flex_attention`` and ``flash_attention_2`` (:data:`IMPLEMENTATIONS`), so every row runs the same
weights. Before anything is timed, each implementation's logits — the prefill's and those of
``new_tokens`` cached decode steps — are compared with eager's; a row beyond the bound is
``wrong`` and never timed. Then, as ``transformers``' ``generate`` does it:

* prefill: one forward over a prompt of ``prompt_len`` tokens that fills the KV cache and
  computes the last position's logits only (``logits_to_keep=1``);
* decode: ``new_tokens`` forwards of one token each on that cache (teacher-forced with fixed
  seeded tokens, so every implementation does the same work); the cache is cropped back to the
  prompt before each sample. Reported per token.

Times are medians over ``repeat`` samples (:func:`attnperf.measure.measure_time`); peak memory of
one prefill and of one decode run is the CUDA allocator's on a GPU, RSS growth on the CPU
(:func:`attnperf.measure.measure_peak`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from attnperf.errors import UsageError
from attnperf.measure import measure_peak, measure_time
from attnperf.point import is_oom
from attnperf.records import Status

#: Llama-3.2-1B's ``config.json`` (https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json,
#: the architecture fields; cross-checked with copies of it in public repositories that load it
#: into ``LlamaConfig``).
LLAMA_3_2_1B: dict[str, Any] = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": True,
}

#: Named sizes. ``small`` keeps the 1B's head_dim (64), its 4:1 query-to-KV-head ratio, its
#: MLP width of 4 × hidden and its vocabulary, with 2 layers of hidden 512: seconds on a CPU.
SIZES: dict[str, dict[str, int]] = {
    "1b": {},
    "small": {"num_hidden_layers": 2, "hidden_size": 512},
}

#: transformers' ``attn_implementation`` values that this run compares.
IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention", "flash_attention_2")

#: Relative-error bound ‖logits − reference‖ / ‖reference‖, the reference being eager in float32
#: on the same weights. Looser than one attention call's 1e-5 in float32: every layer adds its
#: rounding and the LM head sums over the hidden size (docs/commands.md has the measured errors). In half precision each
#: layer's output is rounded to 8 (bf16) or 11 (fp16) bits before the next, so how far a whole
#: model lands from float32 grows with its depth: at Llama-3.2-1B's 16 layers, bf16 sdpa and
#: flex_attention differed from bf16 eager by 3.6e-2. There an implementation is held to
#: :data:`HALF_FACTOR` × eager's own error in the same dtype (flash-attn's tests hold its kernels
#: to twice PyTorch's error in the same dtype), never tighter than this table's floor, and eager
#: itself to :data:`HALF_CEILING`.
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 3e-2}
HALF_FACTOR = 2.0
#: Eager in half precision against float32: far above the bf16 rounding of 16 layers (a few 1e-2)
#: only when something is broken.
HALF_CEILING = 0.1

#: Query heads per KV head in Llama-3.2-1B (32 / 8); kept when ``--hidden`` changes the width.
KV_GROUP = 4


def transformers_reason() -> str | None:
    """Why the model run cannot work here (transformers missing or unusable), or None."""
    try:
        import transformers  # noqa: F401
    except Exception as exc:  # any import failure means the same to the user: install or fix it
        return f"transformers is not installed or not importable ({exc}); pip install 'attnperf[model]'"
    return None


def model_config(
    size: str = "small", *, layers: int | None = None, hidden: int | None = None, vocab: int | None = None
) -> dict[str, Any]:
    """Llama-3.2-1B's configuration reduced to ``size``, then to the explicit overrides.

    ``hidden`` keeps head_dim 64 and the 4:1 head ratio: heads = hidden / 64, KV heads = heads / 4,
    intermediate = 4 × hidden (the 1B's 8192 / 2048)."""
    if size not in SIZES:
        raise UsageError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    values = LLAMA_3_2_1B | SIZES[size]
    if layers is not None:
        values["num_hidden_layers"] = layers
    if hidden is not None:
        values["hidden_size"] = hidden
    if vocab is not None:
        values["vocab_size"] = vocab
    for key in ("num_hidden_layers", "hidden_size", "vocab_size"):
        if values[key] < 1:
            raise UsageError(f"{key} must be >= 1, got {values[key]}")
    width = values["hidden_size"]
    if width != LLAMA_3_2_1B["hidden_size"]:
        multiple = LLAMA_3_2_1B["head_dim"] * KV_GROUP
        if width % multiple:
            raise UsageError(f"hidden must be a multiple of {multiple} (head_dim 64 × 4 query heads per KV head), "
                             f"got {width}")  # fmt: skip
        heads = width // LLAMA_3_2_1B["head_dim"]
        values |= {"num_attention_heads": heads, "num_key_value_heads": heads // KV_GROUP,
                   "intermediate_size": 4 * width}  # fmt: skip
    return values


def build_model(values: dict[str, Any], dtype: str, device: str, seed: int) -> Any:
    """``LlamaForCausalLM`` from ``values`` with random weights drawn from ``seed`` (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**values, attn_implementation="eager")
    return LlamaForCausalLM(config).to(device=device, dtype=getattr(torch, dtype)).eval()


def implementation_reason(implementation: str, device: str) -> str | None:
    """Why transformers' ``implementation`` cannot run on ``device`` here, or None."""
    if implementation != "flash_attention_2":
        return None
    reasons = []
    if importlib.util.find_spec("flash_attn") is None:
        reasons.append("flash-attn not installed (pip install flash-attn)")
    if not device.startswith("cuda"):
        reasons.append("needs CUDA")
    return "; ".join(reasons) or None


@dataclass
class ModelRow:
    """One attention implementation's figures (``None`` where it did not run: see ``reason``)."""

    implementation: str
    status: Status
    reason: str | None = None
    rel_error: float | None = None  #: largest relative error of its logits against float32 eager's
    prefill_s: float | None = None  #: median seconds of one prefill
    prefill_tokens_per_s: float | None = None
    decode_s_per_token: float | None = None  #: median seconds per decoded token
    decode_tokens_per_s: float | None = None
    prefill_peak_bytes: int | None = None
    decode_peak_bytes: int | None = None
    peak_kind: str | None = None
    prefill_samples_s: list[float] = dataclasses.field(default_factory=list)
    decode_samples_s: list[float] = dataclasses.field(default_factory=list)  #: per token

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"status": self.status.value}


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")  # NaN never passes
    return float((out - ref).norm() / ref.norm())


class ModelRun:
    """One model, its prompt and decode tokens; rows per implementation (:meth:`row`)."""

    def __init__(self, values: dict[str, Any], *, prompt_len: int, new_tokens: int, batch: int = 1,
                 dtype: str = "float32", device: str = "cpu", seed: int = 0) -> None:  # fmt: skip
        if dtype not in TOLERANCE:
            raise UsageError(f"dtype must be one of {', '.join(TOLERANCE)}, got {dtype!r}")
        for name, value in (("prompt_len", prompt_len), ("new_tokens", new_tokens), ("batch", batch)):
            if value < 1:
                raise UsageError(f"{name} must be >= 1, got {value}")
        if prompt_len + new_tokens > values["max_position_embeddings"]:
            raise UsageError(f"prompt_len + new_tokens must be at most {values['max_position_embeddings']} "
                             f"(the model's positions), got {prompt_len + new_tokens}")  # fmt: skip
        self.values, self.dtype, self.device = values, dtype, device
        self.prompt_len, self.new_tokens, self.batch = prompt_len, new_tokens, batch
        self.model = build_model(values, dtype, device, seed)
        generator = torch.Generator().manual_seed(seed + 1)
        tokens = torch.randint(0, values["vocab_size"], (batch, prompt_len + new_tokens), generator=generator)
        self.prompt, self.continuation = tokens[:, :prompt_len].to(device), tokens[:, prompt_len:].to(device)
        self.reference: list[torch.Tensor] | None = None
        self.eager_error = 0.0  # eager in this dtype against the float32 reference

    def logits(self) -> list[torch.Tensor]:
        """The prefill's logits at every position, then each decode step's, as the current
        implementation computes them."""
        with torch.no_grad():
            out = self.model(self.prompt, use_cache=True)
            logits, cache = [out.logits], _cache_of(out)
            with_cache = _cache_kwarg(self.model, cache)
            for i in range(self.new_tokens):
                out = self.model(self.continuation[:, i : i + 1], **with_cache, use_cache=True)
                logits.append(out.logits)
        return logits

    def _reference(self) -> tuple[list[torch.Tensor], float]:
        """Eager's logits in float32 on the same weights (the model is cast up and back: bf16 and
        fp16 values are exact in float32), and eager's own error in this run's dtype against them."""
        self.model.set_attn_implementation("eager")
        if self.dtype == "float32":
            return self.logits(), 0.0
        dtype = self.model.dtype
        self.model.float()
        try:
            reference = self.logits()
        finally:
            self.model.to(dtype)  # in this run's dtype again, also after an allocation failure
        eager = self.logits()
        return reference, max(_relative_error(o, r) for o, r in zip(eager, reference, strict=True))

    def bound(self, implementation: str) -> float:
        """The largest relative error of ``implementation``'s logits that passes (see TOLERANCE)."""
        if self.dtype == "float32":
            return TOLERANCE["float32"]
        if implementation == "eager":
            return HALF_CEILING
        # Past the ceiling eager is itself wrong (its row says so) and sets no scale for others.
        return max(TOLERANCE[self.dtype], HALF_FACTOR * min(self.eager_error, HALF_CEILING))

    def row(self, implementation: str, *, repeat: int = 7) -> ModelRow:
        """Check ``implementation`` against float32 eager, then time its prefill and decode."""
        if implementation not in IMPLEMENTATIONS:
            raise UsageError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {implementation!r}")
        if (why := implementation_reason(implementation, self.device)) is not None:
            return ModelRow(implementation, Status.UNSUPPORTED, reason=why)
        if self.reference is None:
            try:
                self.reference, self.eager_error = self._reference()
            except Exception as exc:
                if not is_oom(exc):
                    raise
                return ModelRow(implementation, Status.OOM, reason=f"the float32 reference: {_first_line(exc)}")
        try:
            self.model.set_attn_implementation(implementation)
        except (ImportError, ValueError) as exc:  # transformers refusing the implementation here
            return ModelRow(implementation, Status.UNSUPPORTED, reason=_first_line(exc))
        if implementation == "flex_attention":
            from attnperf.compiled import guard_recompiles

            guard_recompiles()  # a recompile past the limit raises instead of running unfused
        return self._checked_and_timed(implementation, repeat)

    def _checked_and_timed(self, implementation: str, repeat: int) -> ModelRow:
        """The row of the implementation now set: wrong logits are never timed; an allocation
        failure or any other error is this row's status, and the run goes on."""
        assert self.reference is not None
        error = None
        try:
            if implementation == "eager":  # compared already when the reference was made
                error = self.eager_error
            else:
                error = max(_relative_error(o, r) for o, r in zip(self.logits(), self.reference, strict=True))
            bound = self.bound(implementation)
            if not error <= bound:
                reason = f"logits differ from float32 eager's by {error:.3g} > {bound:.3g}: not timed"
                return ModelRow(implementation, Status.WRONG, rel_error=error, reason=reason)
            return self._timed(implementation, error, repeat)
        except Exception as exc:  # one implementation failing (a compiler error, say) must not end the run
            if is_oom(exc):
                return ModelRow(implementation, Status.OOM, rel_error=error, reason=_first_line(exc))
            return ModelRow(implementation, Status.FAILED, rel_error=error,
                            reason=f"{type(exc).__name__}: {_first_line(exc)}")  # fmt: skip

    def _timed(self, implementation: str, error: float, repeat: int) -> ModelRow:
        model, prompt, continuation = self.model, self.prompt, self.continuation
        with torch.no_grad():
            cache = _cache_of(model(prompt, use_cache=True))
            with_cache = _cache_kwarg(model, cache)

            def prefill() -> torch.Tensor:
                return model(prompt, use_cache=True, logits_to_keep=1).logits

            def decode() -> torch.Tensor:
                if (extra := cache.get_seq_length() - self.prompt_len) > 0:
                    cache.crop(-extra)  # back to the prompt alone (crop counts from the end)
                for i in range(self.new_tokens):
                    logits = model(continuation[:, i : i + 1], **with_cache, use_cache=True).logits
                return logits

            prefill_time = measure_time(prefill, self.device, repeat=repeat)
            decode_time = measure_time(decode, self.device, repeat=repeat)
            prefill_peak, kind = measure_peak(prefill, self.device)
            decode_peak, _ = measure_peak(decode, self.device)
        per_token = decode_time.median / self.new_tokens
        return ModelRow(
            implementation, Status.OK, rel_error=error,
            prefill_s=prefill_time.median, prefill_tokens_per_s=self.batch * self.prompt_len / prefill_time.median,
            decode_s_per_token=per_token, decode_tokens_per_s=self.batch / per_token,
            prefill_peak_bytes=prefill_peak, decode_peak_bytes=decode_peak, peak_kind=kind,
            prefill_samples_s=list(prefill_time.samples),
            decode_samples_s=[s / self.new_tokens for s in decode_time.samples],
        )  # fmt: skip


def _cache_of(output: Any) -> Any:
    """The KV cache a forward returned: ``cache`` in transformers 5.2x, ``past_key_values`` before
    (the GPU image's 5.17)."""
    return output.cache if hasattr(output, "cache") else output.past_key_values


def _cache_kwarg(model: Any, cache: Any) -> dict[str, Any]:
    """The keyword that hands ``cache`` back to ``model``'s forward, under either name."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
