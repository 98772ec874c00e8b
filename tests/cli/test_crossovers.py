"""Crossover lines in attnperf analyze, analyze --table and sweep on the CPU, their JSON, and the
scaling plot's marks. Small shapes and one sample per point keep them fast: the measured lines'
lengths vary from run to run, so those tests hold the lines' form and pairing, not the figures."""

from __future__ import annotations

import json
import re

import pytest

from attnperf.cli import main
from attnperf.reports.crossover import HOWS

SMALL = ["--heads", "2", "--head-dim", "16", "--window", "32"]
PAIRS = [("sliding_window", "causal"), ("topk", "full"), ("linear", "full")]
#: One phrase per crossing: "faster from n ≈ …", "faster at every length compared …", "never faster …",
#: "faster: unknown (…)"; the same for "less memory".
PHRASE = r"(?:{what} from n ≈ [\d,]+ \((?:measured|predicted|extrapolated)|{what} at every length|never {what}|{what}: unknown)"  # noqa: E501


def crossover_line(out: str, variant: str, reference: str, backend: str) -> str:
    found = [line for line in out.splitlines() if line.startswith(f"crossover {variant} vs {reference} ({backend})")]
    assert len(found) == 1, out
    return found[0]


def test_analyze_measure_prints_a_crossover_per_efficient_variant_and_writes_them(tmp_path, capsys) -> None:
    out_json = tmp_path / "a.json"
    argv = ["analyze", "--measure", "--variants", "full,causal,sliding_window,topk,linear", "--backends", "eager,tiled",
            "--seq-lens", "64,128,256", "--repeat", "1", *SMALL, "--json", str(out_json)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "crossovers against dense attention of the same causality" in out
    for variant, reference in PAIRS:
        for backend in ("eager", "tiled"):
            line = crossover_line(out, variant, reference, backend)
            head, _, rest = line.partition(": ")
            assert "predicted" not in head, "measured points give measured crossovers"
            faster, less_memory = rest.split("; ")
            assert re.match(PHRASE.format(what="faster"), faster), line
            assert re.match(PHRASE.format(what="less memory"), less_memory), line
    assert not re.search(r"^crossover (full|causal) ", out, re.MULTILINE), "the references are not compared"
    data = json.loads(out_json.read_text())
    found = {(c["variant"], c["backend"]): c for c in data["crossovers"]}
    assert set(found) == {(v, b) for v, _ in PAIRS for b in ("eager", "tiled")}
    for c in found.values():
        assert c["source"] == "measured"
        assert c["reference"] == dict(PAIRS)[c["variant"]]
        assert c["time"]["how"] in HOWS
        assert c["memory"]["how"] in HOWS


def test_analyze_without_measure_predicts_the_crossover(capsys) -> None:
    """Tiled skips whole 128-key blocks outside the window: with a window of 32 it computes as many
    blocks as causal up to 256 tokens (3 of 4) and fewer from 512 (7 of 10)."""
    argv = ["analyze", "--variants", "causal,sliding_window", "--backends", "eager,tiled", "--seq-lens",
            "128,256,512,1024", *SMALL]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    tiled = crossover_line(out, "sliding_window", "causal", "tiled")
    match = re.search(r"predicted: faster from n ≈ ([\d,]+) \(predicted, between (\d+) and (\d+)\)", tiled)
    assert match, tiled
    length, low, high = (int(g.replace(",", "")) for g in match.groups())
    assert (low, high) == (256, 512)
    assert low <= length <= high
    eager = crossover_line(out, "sliding_window", "causal", "eager")
    assert "never faster: the same as the reference at every length (128–1024)" in eager, (
        "eager computes every score: the window saves it nothing"
    )


def test_analyze_table_gains_the_crossover_lines(capsys, tmp_path) -> None:
    out_json = tmp_path / "t.json"
    argv = ["analyze", "--table", "--variants", "full,topk,linear", "--backends", "tiled", "--seq-lens",
            "256,512,1024", "--heads", "1", "--json", str(out_json)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert crossover_line(out, "topk", "full", "tiled").startswith("crossover topk vs full (tiled), predicted: ")
    assert crossover_line(out, "linear", "full", "tiled")
    data = json.loads(out_json.read_text())
    assert {c["variant"] for c in data["crossovers"]} == {"topk", "linear"}


def test_sweep_prints_the_lines_with_two_lengths_and_keeps_them_in_its_file(tmp_path, capsys) -> None:
    path = tmp_path / "s.json"
    argv = ["sweep", "--variants", "causal,sliding_window", "--backends", "tiled", "--seq-lens", "64,128",
            "--repeat", "1", *SMALL, "--json", str(path)]  # fmt: skip
    assert main(argv) == 0
    assert crossover_line(capsys.readouterr().out, "sliding_window", "causal", "tiled")
    data = json.loads(path.read_text())
    (c,) = data["crossovers"]
    assert (c["variant"], c["reference"], c["backend"], c["reference_backend"]) == (
        "sliding_window", "causal", "tiled", "tiled",
    )  # fmt: skip
    from attnperf.records import load_records

    assert len(load_records(path).records) == 4, "the file stays a results file"
    one_length = [a if a != "64,128" else "64" for a in argv[:-2]]  # no --json
    assert main(one_length) == 0
    assert "crossover" not in capsys.readouterr().out, "one length: nothing to compare"


@pytest.mark.parametrize(("window_time", "how", "style"), [(600.0, "measured", ":"), (5000.0, "extrapolated", "--")])
def test_the_scaling_plot_marks_the_crossover_in_the_variants_panel(window_time, how, style) -> None:
    import matplotlib.pyplot as plt

    from attnperf.plots import _mark_crossovers, _small_multiples

    def row(variant: str, seq_len: int, seconds: float) -> dict:
        return {"status": "ok", "variant": variant, "backend": "tiled", "batch": 1, "seq_len": seq_len,
                "median_s": seconds, "peak_bytes": 1000 * seq_len}  # fmt: skip

    lengths = (256, 512, 1024, 2048)
    records = [row("causal", n, n * n / 2) for n in lengths] + [
        row("sliding_window", n, window_time * n) for n in lengths
    ]
    fig = _small_multiples(records, "median_s", 1e3, "ms", "t", slopes=True)
    _mark_crossovers(fig, records)
    panels = {ax.get_title(): ax for ax in fig.axes}
    marks = [line for line in panels["sliding_window"].get_lines() if "faster than causal" in line.get_label()]
    assert len(marks) == 1
    (mark,) = marks
    assert list(mark.get_xdata()) == pytest.approx([2 * window_time] * 2)  # c·n against n²/2 cross at n = 2c
    assert mark.get_linestyle() == style
    assert f"({how})" in mark.get_label()
    assert not any("faster than" in line.get_label() for line in panels["causal"].get_lines())
    legend = panels["sliding_window"].get_legend()  # the mark is in the panel's legend, which stays below the data
    assert any("faster than causal" in text.get_text() for text in legend.get_texts())
    assert legend.get_bbox_to_anchor().transformed(panels["sliding_window"].transAxes.inverted()).y1 < 0
    plt.close(fig)
