"""The analyzer's memory predictions held against peak memory measured on the H100.

``tests/data/h100-2026-11-28/`` keeps, of what ``tools/gpu-check.sh`` measured there, the fields these
tests read (``torch.cuda``'s peak allocation beyond the inputs, one forward; tests/data/README.md says
where each file comes from). This test recomputes each prediction with the code
as it is now, so a change to a memory model that contradicts a real measurement fails on the
CPU, in CI, without a GPU. Same bar as the on-GPU test in test_analysis.py: within 10%.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from attnperf.analysis import tail_exponent
from attnperf.backends import get_backend
from attnperf.case import Case
from attnperf.catalog import get_variant
from attnperf.mechanisms import get_mechanism

RECORDS = Path(__file__).resolve().parent / "data" / "h100-2026-11-28"
#: The shape every analyze-*.json there was measured at (tools/gpu-check.sh's SHAPE, --window 512);
#: rows written since carry their case themselves.
ANALYZE_SHAPE = {"heads": 16, "head_dim": 128, "dtype": "bfloat16", "device": "cuda"}


def analyze_rows() -> list:
    rows = []
    for path in sorted(RECORDS.glob("analyze-*.json")):
        rows += [
            pytest.param(path.name, row, id=f"{path.stem}-{row['variant']}-{row['backend']}-{row['seq_len']}")
            for row in json.loads(path.read_text())["rows"]
            if row.get("meas_mib")
        ]
    return rows


def sweep_records() -> list:
    out = []
    for path in sorted(RECORDS.glob("sweep16k*.json")):
        out += [
            pytest.param(path.name, r, id=f"{path.stem}-{r['backend']}-{r['case_id']}")
            for r in json.loads(path.read_text())["records"]
            if r["status"] == "ok"
        ]
    return out


#: ``MEMORY <variant> <backend> <case id> predicted <bytes> measured <bytes> ratio <r>``, printed by
#: test_analysis.py's on-GPU test, whose shapes are batch 2, 8 heads, head_dim 64, window 256.
MEMORY_LINE = re.compile(
    r"MEMORY (\S+) (\S+) (B2_H8_(?:KV\d+_)?S(\d+)_D64_(f32|bf16|f16)_cuda\S*) predicted \d+ measured (\d+)"
)
DTYPE_OF_TAG = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def memory_lines() -> list:
    """One parameter set per MEMORY line, named by variant, backend, case id and the file's line."""
    lines = []
    for name in ("pytest-linear.txt", "pytest-memory.txt"):
        for number, line in enumerate((RECORDS / name).read_text().splitlines(), 1):
            if m := MEMORY_LINE.search(line):
                values = (m[1], m[2], m[3], int(m[4]), DTYPE_OF_TAG[m[5]], int(m[6]))
                lines.append(pytest.param(*values, id=f"{m[1]}-{m[2]}-{m[3]}-{name}:{number}"))
    return lines


def test_records_are_there() -> None:
    assert len(analyze_rows()) >= 36
    assert len(sweep_records()) >= 16
    assert len(memory_lines()) >= 110


@pytest.mark.parametrize(("variant", "backend", "case_id", "n", "dtype", "measured"), memory_lines())
def test_on_gpu_test_shapes_match_h100(
    variant: str, backend: str, case_id: str, n: int, dtype: str, measured: int
) -> None:
    case = get_variant(variant).case(n, batch=2, heads=8, head_dim=64, dtype=dtype, device="cuda", window=256)
    assert case.id == case_id, "the catalog's variant no longer builds the case that was measured"
    predicted = get_backend(backend).predicted_peak_bytes(get_mechanism(get_variant(variant).mechanism), case)
    assert predicted == pytest.approx(measured, rel=0.10)


@pytest.mark.parametrize(("source", "row"), analyze_rows())
def test_analyze_prediction_matches_h100(source: str, row: dict) -> None:
    if "case" in row:
        case = Case(**row["case"])
    else:
        options = {"window": 512} if row["variant"] == "sliding_window" else {}
        case = get_variant(row["variant"]).case(row["seq_len"], **ANALYZE_SHAPE, **options)
    mechanism = get_mechanism(get_variant(row["variant"]).mechanism)
    predicted = get_backend(row["backend"]).predicted_peak_bytes(mechanism, case) / 2**20
    assert predicted == pytest.approx(row["meas_mib"], rel=0.10), f"{source}: {row['variant']} {row['backend']}"


@pytest.mark.parametrize(("source", "record"), sweep_records())
def test_sweep_prediction_matches_h100(source: str, record: dict) -> None:
    case = Case(**record["case"])
    predicted = get_backend(record["backend"]).predicted_peak_bytes(get_mechanism(record["mechanism"]), case)
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
