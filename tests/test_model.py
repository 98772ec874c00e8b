"""The model-level run: Llama-3.2-1B's configuration, agreement of the attention implementations
before timing, positive figures, and the reasons when a library is missing (tiny 2-layer model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from attnperf.cli import main
from attnperf.errors import EXIT_FAILURE, EXIT_USAGE
from attnperf.model import (
    HALF_CEILING,
    HALF_FACTOR,
    LLAMA_3_2_1B,
    TOLERANCE,
    ModelRun,
    implementation_reason,
    model_config,
    transformers_reason,
)
from attnperf.records import Status

from .conftest import SEED

#: A 2-layer model small enough for seconds on a CPU: 4 query heads, 1 KV head, head_dim 64.
TINY = {"layers": 2, "hidden": 256, "vocab": 1000}
TINY_FLAGS = ["--layers", "2", "--hidden", "256", "--vocab", "1000", "--prompt-len", "9", "--new-tokens", "2"]


def test_1b_is_the_published_configuration_and_small_keeps_its_proportions() -> None:
    full = model_config("1b")
    assert (full["hidden_size"], full["num_hidden_layers"], full["num_attention_heads"]) == (2048, 16, 32)
    assert (full["num_key_value_heads"], full["head_dim"], full["intermediate_size"]) == (8, 64, 8192)
    assert (full["vocab_size"], full["rope_theta"], full["rope_scaling"]["rope_type"]) == (128256, 500000.0, "llama3")
    small = model_config("small")
    assert small["hidden_size"] // small["num_attention_heads"] == LLAMA_3_2_1B["head_dim"]
    assert small["num_attention_heads"] // small["num_key_value_heads"] == 32 // 8
    assert small["intermediate_size"] == 4 * small["hidden_size"]
    assert small["vocab_size"] == 128256


def test_bad_sizes_name_the_parameter_and_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="hidden must be a multiple of 256"):
        model_config("small", hidden=300)
    with pytest.raises(ValueError, match="size must be one of 1b, small"):
        model_config("tiny")


def test_missing_transformers_is_one_line_with_what_to_install(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    assert "pip install 'attnperf[model]'" in (transformers_reason() or "")
    assert main(["model", *TINY_FLAGS, "--json", str(tmp_path / "m.json")]) == EXIT_FAILURE
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnperf model: failed: transformers is not installed"), err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "m.json").exists()


def test_flash_attention_2_says_why_it_cannot_run_on_the_cpu() -> None:
    reason = implementation_reason("flash_attention_2", "cpu") or ""
    assert "needs CUDA" in reason
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        assert "flash-attn not installed" in reason
    assert implementation_reason("sdpa", "cpu") is None


@pytest.fixture(scope="module")
def tiny_run() -> ModelRun:
    pytest.importorskip("transformers")
    return ModelRun(model_config("small", **TINY), prompt_len=9, new_tokens=2, seed=SEED)


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex_attention"])
def test_implementations_agree_with_eager_then_report_positive_times(tiny_run: ModelRun, implementation: str) -> None:
    row = tiny_run.row(implementation, repeat=2)
    assert row.status is Status.OK, row.reason
    assert row.rel_error is not None
    assert row.rel_error <= TOLERANCE["float32"]
    assert row.prefill_s is not None
    assert row.prefill_s > 0
    assert row.decode_s_per_token is not None
    assert row.decode_s_per_token > 0
    assert row.prefill_tokens_per_s == pytest.approx(9 / row.prefill_s)
    assert row.decode_tokens_per_s == pytest.approx(1 / row.decode_s_per_token)
    assert len(row.prefill_samples_s) == 2
    assert row.peak_kind == "cpu-rss-growth"


def test_an_implementation_whose_logits_differ_is_never_timed(tiny_run: ModelRun, monkeypatch) -> None:
    tiny_run.row("eager", repeat=1)  # the reference is computed with eager before any patching
    honest = ModelRun.logits

    def off_by_a_little(self: ModelRun) -> list[torch.Tensor]:
        return [t * (1 + 1e-3) for t in honest(self)]

    monkeypatch.setattr(ModelRun, "logits", off_by_a_little)
    row = tiny_run.row("sdpa", repeat=1)
    assert row.status is Status.WRONG
    assert row.rel_error == pytest.approx(1e-3, rel=1e-2)
    assert row.prefill_s is None
    assert row.decode_s_per_token is None
    assert "not timed" in (row.reason or "")


def test_cli_runs_the_table_and_writes_json(tmp_path: Path, capsys) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "model.json"
    rc = main(["model", *TINY_FLAGS, "--repeat", "2", "--implementations", "eager,sdpa,flash_attention_2",
               "--json", str(out)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "decode ms/token" in printed
    data = json.loads(out.read_text())
    rows = {row["implementation"]: row for row in data["rows"]}
    assert [rows[i]["status"] for i in ("eager", "sdpa")] == ["ok", "ok"]
    assert rows["sdpa"]["decode_s_per_token"] > 0
    assert rows["flash_attention_2"]["status"] == "unsupported"
    assert "needs CUDA" in rows["flash_attention_2"]["reason"]
    assert data["config"]["num_hidden_layers"] == 2
    assert data["prompt_len"] == 9


def test_cli_refuses_a_bad_implementation_name(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["model", "--implementations", "vanilla"])
    assert exit_info.value.code == EXIT_USAGE
    assert "allowed: all or eager, sdpa, flex_attention, flash_attention_2" in capsys.readouterr().err


def test_half_precision_is_held_to_twice_eagers_own_error_against_float32() -> None:
    """In bf16 the reference is eager in float32 on the same weights; eager's own bf16 error sets
    the scale, and an implementation passes within twice that (or the table's floor)."""
    pytest.importorskip("transformers")
    run = ModelRun(model_config("small", **TINY), prompt_len=9, new_tokens=2, dtype="bfloat16", seed=SEED)
    eager = run.row("eager", repeat=1)
    assert eager.status is Status.OK, eager.reason
    assert run.model.dtype == torch.bfloat16, "the reference pass casts the model back"
    assert run.reference is not None
    assert run.reference[0].dtype == torch.float32
    assert 0 < run.eager_error == eager.rel_error <= HALF_CEILING
    assert run.bound("sdpa") == max(TOLERANCE["bfloat16"], HALF_FACTOR * run.eager_error)
    sdpa = run.row("sdpa", repeat=1)
    assert sdpa.status is Status.OK, sdpa.reason
    assert sdpa.rel_error is not None
    assert sdpa.rel_error <= run.bound("sdpa")


def test_a_broken_eager_sets_no_scale_for_the_others() -> None:
    """Past HALF_CEILING eager's own error is not a precision scale: the others' bound stays
    finite (an eager that overflowed, error inf, would otherwise let anything pass)."""
    pytest.importorskip("transformers")
    run = ModelRun(model_config("small", **TINY), prompt_len=9, new_tokens=1, dtype="bfloat16", seed=SEED)
    run.eager_error = float("inf")
    assert run.bound("sdpa") == HALF_FACTOR * HALF_CEILING


def test_an_allocation_failure_in_the_reference_is_an_oom_row_and_keeps_the_dtype(monkeypatch) -> None:
    pytest.importorskip("transformers")
    run = ModelRun(model_config("small", **TINY), prompt_len=9, new_tokens=1, dtype="bfloat16", seed=SEED)

    def no_memory(self: ModelRun) -> list[torch.Tensor]:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    monkeypatch.setattr(ModelRun, "logits", no_memory)
    row = run.row("sdpa", repeat=1)
    assert row.status is Status.OOM
    assert "float32 reference" in (row.reason or "")
    assert run.model.dtype == torch.bfloat16
