"""The analyzer's memory predictions held against peak memory measured on the H100.

``docs/gpu/<date>/`` keeps what ``tools/gpu-check.sh`` measured there (``torch.cuda``'s peak
allocation beyond the inputs, one forward). This test recomputes each prediction with the code
as it is now, so a change to a memory model that contradicts a real measurement fails on the
CPU, in CI, without a GPU. Same bar as the on-GPU test in test_analysis.py: within 10%.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from attnperf.analysis import predicted_peak_bytes, tail_exponent
from attnperf.case import Case
from attnperf.catalog import get_variant

RECORDS = Path(__file__).resolve().parent.parent / "docs" / "gpu" / "2026-11-28"
#: The shape every analyze-*.json there was measured at (tools/gpu-check.sh's SHAPE, --window 512);
#: rows written since carry their case themselves.
ANALYZE_SHAPE = {"heads": 16, "head_dim": 128, "dtype": "bfloat16", "device": "cuda"}


def analyze_rows() -> list[tuple[str, dict]]:
    rows = []
    for path in sorted(RECORDS.glob("analyze-*.json")):
        rows += [(path.name, row) for row in json.loads(path.read_text())["rows"] if row.get("meas_mib")]
    return rows


def sweep_records() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(RECORDS.glob("sweep16k*.json")):
        out += [(path.name, r) for r in json.loads(path.read_text())["records"] if r["status"] == "ok"]
    return out


#: ``MEMORY <variant> <backend> <case id> predicted <bytes> measured <bytes> ratio <r>``, printed by
#: test_analysis.py's on-GPU test, whose shapes are batch 2, 8 heads, head_dim 64, window 256.
MEMORY_LINE = re.compile(
    r"MEMORY (\S+) (\S+) B2_H8_(?:KV\d+_)?S(\d+)_D64_(f32|bf16|f16)_cuda\S* predicted \d+ measured (\d+)"
)
DTYPE_OF_TAG = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def memory_lines() -> list[tuple[str, str, int, str, int]]:
    text = (RECORDS / "pytest-linear.log").read_text() + (RECORDS / "pytest-memory.log").read_text()
    return [
        (m[1], m[2], int(m[3]), DTYPE_OF_TAG[m[4]], int(m[5])) for m in map(MEMORY_LINE.search, text.splitlines()) if m
    ]


def test_records_are_there() -> None:
    assert len(analyze_rows()) >= 36
    assert len(sweep_records()) >= 16
    assert len(memory_lines()) >= 110


@pytest.mark.parametrize(("variant", "backend", "n", "dtype", "measured"), memory_lines())
def test_on_gpu_test_shapes_match_h100(variant: str, backend: str, n: int, dtype: str, measured: int) -> None:
    case = get_variant(variant).case(n, batch=2, heads=8, head_dim=64, dtype=dtype, device="cuda", window=256)
    assert predicted_peak_bytes(get_variant(variant).mechanism, backend, case) == pytest.approx(measured, rel=0.10)


@pytest.mark.parametrize(("source", "row"), analyze_rows(), ids=lambda x: x if isinstance(x, str) else None)
def test_analyze_prediction_matches_h100(source: str, row: dict) -> None:
    options = {"window": 512} if row["variant"] == "sliding_window" else {}
    case = get_variant(row["variant"]).case(row["seq_len"], **ANALYZE_SHAPE, **options)
    predicted = predicted_peak_bytes(get_variant(row["variant"]).mechanism, row["backend"], case) / 2**20
    assert predicted == pytest.approx(row["meas_mib"], rel=0.10), f"{source}: {row['variant']} {row['backend']}"


@pytest.mark.parametrize(("source", "record"), sweep_records(), ids=lambda x: x if isinstance(x, str) else None)
def test_sweep_prediction_matches_h100(source: str, record: dict) -> None:
    case = Case(**record["case"])
    predicted = predicted_peak_bytes(record["mechanism"], record["backend"], case)
    assert predicted == pytest.approx(record["peak_bytes"], rel=0.10), f"{source}: {record['backend']}"


def test_window_and_linear_are_linear_at_long_lengths() -> None:
    """The recorded times show the complexity classes once fixed costs stop dominating."""
    for name, variant, backend, low, high in [
        ("analyze-fa4.json", "sliding_window", "flash-attn4", 0.8, 1.2),
        ("analyze-fla.json", "linear_causal", "fla", 0.8, 1.2),
        ("analyze-fa4.json", "causal", "flash-attn4", 1.8, 2.2),
        ("analyze-sdpa.json", "full", "sdpa-cudnn", 1.8, 2.2),
    ]:
        rows = [r for r in json.loads((RECORDS / name).read_text())["rows"] if r["variant"] == variant]
        rows = [r for r in rows if r["backend"] == backend]
        fit = tail_exponent([r["seq_len"] for r in rows], [r["ms"] for r in rows])
        assert low < fit.exponent < high, f"{variant} {backend}: {fit.exponent:.2f}"
