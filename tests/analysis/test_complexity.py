"""The complexity table: the symbolic classes agree with the analyzer's exponents, and the CLI prints them."""

from __future__ import annotations

import json

import pytest

from attnperf.cli import main
from attnperf.mechanisms import MECHANISMS
from attnperf.reports.complexity import COMPLEXITY, complexity_rows

#: Variants whose options scale with n as the class assumes (strided fixes s = 64, so its class
#: at the default s = √n does not apply; strided_sqrt is that variant at s = √n).
VARIANTS = ["full", "sliding_window", "topk", "strided_sqrt", "strided_columns", "fixed", "bigbird_tokens", "linear"]


def test_every_mechanism_has_a_class() -> None:
    assert set(COMPLEXITY) == set(MECHANISMS)


def test_fitted_exponents_match_the_symbolic_classes() -> None:
    rows = complexity_rows(VARIANTS, [1024, 2048, 4096], heads=1, head_dim=16)
    for row in rows:
        classes = COMPLEXITY[str(row["mechanism"])]
        # 0.1: at n of a few thousand, lower-order terms (the window's edges, a stride rounded
        # to an integer) still bend the log-log slope by a few hundredths.
        assert row["time_p"] == pytest.approx(classes.time_exponent, abs=0.1), row
        assert row["materialized_q"] == pytest.approx(classes.materialized_space_exponent, abs=0.1), row
        # A fused kernel's tile buffers are a constant: its fitted q approaches the class from below.
        assert row["fused_q"] <= classes.fused_space_exponent + 0.05, row


def test_fixed_stride_is_not_n_sqrt_n() -> None:
    (row,) = complexity_rows(["strided"], [1024, 2048, 4096], heads=1, head_dim=16)
    assert 1.1 < row["time_p"] < 1.5  # O(n·(64 + n/64)): on its way from n to n²


def test_table_needs_two_lengths_and_the_cli_prints_it(capsys) -> None:
    with pytest.raises(ValueError, match=r"seq_lens: need at least 2 distinct lengths"):
        complexity_rows(["full"], [1024])
    assert main(["analyze", "--table", "--variants", "full,linear", "--seq-lens", "256,512", "--heads", "1"]) == 0
    out = capsys.readouterr().out
    assert "O(n²·d)" in out
    assert "O(n·d²)" in out
    assert "p (useful FLOPs)" in out


def test_table_writes_its_rows_with_json(capsys, tmp_path) -> None:
    """--json is honoured with --table (it was silently ignored): the rows the table prints."""
    out = tmp_path / "table.json"
    assert main(["analyze", "--table", "--variants", "full", "--seq-lens", "256,512", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["seq_lens"] == [256, 512]
    (row,) = data["rows"]
    assert (row["variant"], row["time"]) == ("full", "O(n²·d)")
    assert "O(n²·d)" in capsys.readouterr().out
