"""attnperf plot and attnperf tune on the CPU, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnperf.benchgrid import Grid
from attnperf.cli import main
from attnperf.records import Record, Status
from attnperf.tune import Trial, tune_backend


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("sweep") / "sweep.json"
    argv = ["sweep", "--variants", "causal,linear_causal", "--backends", "eager,tiled", "--seq-lens", "64,128,256",
            "--heads", "2", "--head-dim", "16", "--repeat", "3", "--json", str(path)]  # fmt: skip
    assert main(argv) == 0
    return path


def test_plot_writes_every_figure_as_png_and_svg(results, tmp_path, capsys) -> None:
    assert main(["plot", str(results), "--out", str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    names = {p.split("/")[-1] for p in written}
    for kind in ("scaling", "memory", "throughput", "roofline", "masks", "heatmaps", "positions", "heads"):
        assert {f"{kind}.png", f"{kind}.svg"} <= names
        assert (tmp_path / f"{kind}.png").stat().st_size > 5000
        assert (tmp_path / f"{kind}.svg").read_text().lstrip().startswith("<?xml")


def test_plot_rejects_unknown_kinds_and_missing_results(tmp_path, capsys) -> None:
    assert main(["plot", "--kinds", "pie", "--out", str(tmp_path)]) == 2
    assert "--kinds: unknown ['pie']" in capsys.readouterr().err
    assert main(["plot", "--kinds", "scaling", "--out", str(tmp_path)]) == 2


def test_tune_never_runs_a_known_failure_again(monkeypatch) -> None:
    """A fake trial where everything above 40 runs out of memory: doubling finds 64 bad, the
    bisection settles on 40, and no batch at or above a failure is tried twice or at all."""
    import attnperf.tune as tune_module

    calls: list[int] = []

    def fake_trial(grid, variant, backend, batch, *, memory_limit, p95_ms, repeat):
        calls.append(batch)
        spec = grid.spec(backend, variant, 8, batch=batch)
        if batch > 40:
            return Trial(Record(spec, Status.OOM), False, "oom")
        return Trial(Record(spec, Status.OK, median_s=1e-3, samples_s=(1e-3,), tokens_per_s=float(batch),
                            peak_bytes=batch), True)  # fmt: skip

    monkeypatch.setattr(tune_module, "trial", fake_trial)
    grid = Grid(backends=("eager",), variants=("causal",), seq_lens=(8,))
    result = tune_backend(grid, "causal", "eager", memory_limit=10**9, max_batch=256)
    assert result.best_batch == 40
    assert calls == [1, 2, 4, 8, 16, 32, 64, 48, 40, 44, 42, 41]
    assert len(calls) == len(set(calls))
    assert max(c for c in calls if c > 40) == 64, "nothing above the first OOM was tried"


def test_tune_respects_memory_and_latency(tmp_path, capsys) -> None:
    out = tmp_path / "tune.json"
    argv = ["tune", "--variant", "causal", "--backends", "eager", "--seq-len", "128", "--heads", "2", "--head-dim",
            "16", "--memory-limit-mib", "2", "--max-batch", "64", "--repeat", "3", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out.read_text())
    (result,) = data["results"]
    fitting = [t for t in result["trials"] if t["fits"]]
    assert all(t["peak_bytes"] <= 2 * 2**20 for t in fitting)
    assert result["best_batch"] in {t["spec"]["batch"] for t in fitting}
    assert "best batch" in capsys.readouterr().out


def test_pictures_take_the_seeds_parameters_and_tokens(tmp_path, capsys) -> None:
    tokens = "a b c d e f g h i j k l"
    assert main(["plot", "--kinds", "masks,heatmaps", "--tokens", tokens, "--window", "4", "--top-k", "3",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    assert (tmp_path / "masks.png").stat().st_size > 5000
    svg = (tmp_path / "masks.svg").read_text()
    assert "n = 12" in svg  # n follows the tokens
    assert "window=4" in svg
    assert "top_k=3" in svg
    assert "full" in svg
    assert main(["plot", "--kinds", "masks", "--n", "128", "--out", str(tmp_path)]) == 0
    assert "n = 128" in (tmp_path / "masks.svg").read_text()
    assert "s=11" in (tmp_path / "masks.svg").read_text()  # the stride defaults to round(√128)


def test_picture_options_and_layer_weights_validate() -> None:
    from attnperf.plots import PictureOptions, plot_layer_weights

    with pytest.raises(ValueError, match=r"tokens: 2 given, n is 64"):
        PictureOptions(tokens=("a", "b"))
    with pytest.raises(ValueError, match=r"window must be an integer >= 1, got 0"):
        PictureOptions(window=0)
    with pytest.raises(ValueError, match=r"weights must be \[B, H, Lq, Lk\]"):
        plot_layer_weights(torch.zeros(5), Path("unused"))
    with pytest.raises(ValueError, match=r"tokens: 2 given for 3 keys"):
        plot_layer_weights(torch.zeros(3, 3), Path("unused"), tokens=["a", "b"])


def test_layer_weights_one_panel_per_head(tmp_path) -> None:
    from attnperf.layers import MultiheadAttention
    from attnperf.plots import plot_layer_weights

    layer = MultiheadAttention(16, 4, batch_first=True, backend="sdpa")
    x = torch.randn(1, 5, 16)
    _, weights = layer(x, x, x, average_attn_weights=False)
    plot_layer_weights(weights, tmp_path, tokens=list("abcde"))
    svg = (tmp_path / "layer_weights.svg").read_text()
    assert all(f"head {h}" in svg for h in range(4))
    assert "head 4" not in svg


def test_result_plots_are_small_multiples(results, tmp_path) -> None:
    import matplotlib.pyplot as plt

    from attnperf.plots import _small_multiples, plot_rows
    from attnperf.records import load_records

    records = plot_rows(load_records(results).records)
    fig = _small_multiples(records, "median_s", 1e3, "ms", "t", slopes=True)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert sorted(ax.get_title() for ax in panels) == ["causal", "linear_causal"]  # one panel per variant
    for ax in panels:
        colours = {line.get_label().split()[0]: line.get_color() for line in ax.get_lines()}
        assert len(set(colours.values())) == len(colours)  # a colour per backend
    same = [line.get_color() for ax in panels for line in ax.get_lines() if line.get_label().startswith("eager")]
    assert len(set(same)) == 1  # the same colour for one backend in every panel
    plt.close(fig)
