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


def test_heatmaps_grey_out_what_the_mechanism_masks_not_small_weights() -> None:
    """The drawn array's mask is the mechanism's own (top-k keeps k keys a row, the window its band), every
    panel has a colour bar, and a weight that underflows where ALiBi attends is drawn, not masked."""
    import matplotlib.pyplot as plt

    from attnperf.plots import PictureOptions, heads_figure, heatmaps_figure

    options = PictureOptions(n=16, window=4, top_k=3)
    variants = ("topk", "sliding_window", "linear_causal", "full")
    fig = heatmaps_figure(options, variants)
    images = [ax.images[0] for ax in fig.axes if ax.images and ax.get_title()]
    assert len(images) == len(variants)
    assert all(image.colorbar is not None for image in images)
    masks = {variant: image.get_array().mask for variant, image in zip(variants, images, strict=True)}
    assert (~masks["topk"]).sum(axis=1).tolist() == [3] * 16  # top-k = 3 kept per row, the rest grey
    band = [[not (i - 3 <= j <= i) for j in range(16)] for i in range(16)]  # Mistral: the last 4 keys, itself too
    assert masks["sliding_window"].tolist() == band
    assert masks["linear_causal"].tolist() == [[j > i for j in range(16)] for i in range(16)]
    assert not masks["full"].any()
    plt.close(fig)

    fig = heads_figure(PictureOptions(n=64), heads=8)  # head 0: slope 1/2, so the first key of the last row gets e^-31
    image = fig.axes[0].images[0]
    drawn, masked = image.get_array().data, image.get_array().mask
    assert ((drawn < 1e-9) & ~masked).any(), "a far key under a steep slope is a tiny weight, drawn, not grey"
    assert masked.tolist() == [[j > i for j in range(64)] for i in range(64)]
    assert image.colorbar is not None
    plt.close(fig)


def test_scaling_axes_are_ticked_at_the_measured_lengths(results) -> None:
    import matplotlib.pyplot as plt

    from attnperf.plots import _small_multiples, length_label, plot_rows
    from attnperf.records import load_records

    assert [length_label(n) for n in (256, 1024, 1536, 4096, 16384, 1000)] == ["256", "1k", "1.5k", "4k", "16k", "1000"]
    fig = _small_multiples(plot_rows(load_records(results).records), "median_s", 1e3, "ms", "t", slopes=True)
    fig.canvas.draw()
    for ax in (ax for ax in fig.axes if ax.get_title()):
        assert list(ax.get_xticks()) == [64, 128, 256]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["64", "128", "256"]
        assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))  # no 3×10⁴×10² collisions
        assert not any(t.get_text() for t in ax.get_yticklabels(minor=True))
        legend, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.y1 <= axes_box.y0, "the legend sits below the panel, not over the data"
    plt.close(fig)


TEXT = "The cat sat on the mat, and the cat slept."


def test_text_picture_draws_the_tokens_weights_from_the_seed(tmp_path) -> None:
    import matplotlib.pyplot as plt

    from attnperf.plots import text_figure, text_weights, token_vector

    tokens, weights = text_weights(TEXT, seed=3)
    assert tokens == ["The", "cat", "sat", "on", "the", "mat", ",", "and", "the", "cat", "slept", "."]
    assert weights.shape == (1, 4, 12, 12)
    assert torch.equal(weights, text_weights(TEXT, seed=3)[1])  # the same seed draws the same picture
    assert not torch.equal(weights, text_weights(TEXT, seed=4)[1])
    assert torch.equal(token_vector("cat", 3), token_vector("Cat", 3))  # a repeated word: the same vector
    assert torch.allclose(weights.sum(-1), torch.ones(1, 4, 12), atol=1e-6)
    assert (weights[0].triu(1) == 0).all()  # causal
    fig = text_figure(TEXT, seed=3)
    panels = [ax for ax in fig.axes if ax.get_title().startswith("head")]
    assert len(panels) == 4
    for ax in panels:
        assert [t.get_text() for t in ax.get_xticklabels()] == tokens
        assert [t.get_text() for t in ax.get_yticklabels()] == tokens
        assert ax.images[0].colorbar is not None
    assert "seed 3" in fig.get_suptitle()
    plt.close(fig)
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    assert main(["plot", "--kinds", "text", "--text-file", str(path), "--seed", "3", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "text.png").stat().st_size > 5000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--text", "  \n "], "--text: the text has no tokens"),
        (["--text", " ".join(["w"] * 65)], "--text: the text has 65 tokens; a picture takes 2 to 64"),
        (["--text", "a b", "--tokens", "a b c d e f g h"], "--tokens: --text gives the tokens"),
        (["--text", "a b", "--text-file", "x.txt"], "--text-file: give the text once"),
        (["--text-file", "/nonexistent/t.txt"], "--text-file /nonexistent/t.txt: cannot read it"),
        (["--kinds", "text"], "--kinds text: the text picture needs --text TEXT or --text-file PATH"),
        (["--kinds", "heatmaps", "--weight-scale", "cubic"], "--weight-scale: 'cubic'; allowed: linear, log"),
    ],
)
def test_text_and_scale_flags_refuse_bad_input(argv, message, tmp_path, capsys) -> None:
    assert main(["plot", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir()), "nothing drawn"


def test_positions_draw_alibi_per_head_and_rope_from_the_definitions() -> None:
    import matplotlib.pyplot as plt

    from attnperf.mechanisms.positional import alibi_slopes
    from attnperf.plots import positions_figure

    fig = positions_figure(n=32, dim=16, heads=6)
    titles = [ax.get_title() for ax in fig.axes]
    assert [t for t in titles if t.startswith("head")] == [f"head {h}: slope {float(s):.4g}"
                                                         for h, s in enumerate(alibi_slopes(6))]  # fmt: skip
    (distance_ax,) = [ax for ax in fig.axes if ax.get_title().startswith("RoPE: q·k")]
    near, far = (line.get_ydata() for line in distance_ax.get_lines())
    assert torch.allclose(torch.as_tensor(near), torch.as_tensor(far), atol=1e-9)  # relative: only distance counts
    plt.close(fig)
