"""The attnperf command, run as a user would (python -m attnperf)."""

from __future__ import annotations

import json
import subprocess
import sys

from attnperf.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "attnperf", *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_list_prints_the_matrix_with_reasons() -> None:
    proc = run("list", "--seq-len", "64")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("variant"))
    assert "eager" in header
    assert "flash-attn4" in header
    sliding = next(line for line in lines if line.startswith("sliding_window"))
    assert sliding.split()[1] == "yes"
    assert "topk × sdpa-math: sdpa-math does not implement topk" in proc.stdout
    assert "sliding_window × xformers: runs on cuda only, case is on cpu" in proc.stdout


def test_check_reports_ok_and_exit_zero(capsys) -> None:
    assert main(["check", "--variants", "sliding_window,topk", "--backends", "eager,tiled", "--seq-lens", "17,33"]) == 0
    out = capsys.readouterr().out
    assert "8 ok, 0 wrong" in out


def test_bad_arguments_name_the_allowed_values() -> None:
    proc = run("sweep", "--backends", "eager,turbo")
    assert proc.returncode == 2
    assert "unknown backends ['turbo']; allowed: all or eager, sdpa, sdpa-math" in proc.stderr
    proc = run("check", "--variants", "sliding_window", "--window", "0")
    assert proc.returncode == 2
    assert "argument --window: expected an integer >= 1, got 0" in proc.stderr


def test_sweep_writes_json_and_csv_and_ratios(tmp_path) -> None:
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    proc = run(
        "sweep",
        "--variants",
        "causal,linear",
        "--backends",
        "eager,tiled,sdpa-math",
        "--seq-lens",
        "64",
        "--heads",
        "2",
        "--head-dim",
        "16",
        "--repeat",
        "3",
        "--json",
        str(out_json),
        "--csv",
        str(out_csv),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr  # stdout lists a wrong row with its error and seed
    data = json.loads(out_json.read_text())
    assert data["schema"] == 2
    records = {(r["spec"]["variant"], r["spec"]["backend"]): r for r in data["records"]}
    assert records[("causal", "eager")]["speedup"] == 1.0
    assert records[("causal", "tiled")]["status"] == "ok"
    assert records[("causal", "tiled")]["median_s"] > 0
    assert len(records[("causal", "tiled")]["samples_s"]) == 3
    assert records[("linear", "sdpa-math")]["status"] == "unsupported"
    assert "torch" in data["machine"]
    assert out_csv.read_text().startswith("variant,")
    assert "speedup vs eager" in proc.stdout
    assert not list(tmp_path.glob(".*.tmp")), "no temporary files left behind"


def test_keep_onnx_keeps_each_exported_graph_and_is_checked_first(tmp_path, capsys) -> None:
    """``--keep-onnx DIR``: every graph the onnxruntime backends export, one file per mechanism, case
    and backend, loadable by ONNX Runtime and giving the output the check accepted; the flag refused
    before any point runs when DIR is a file or no onnxruntime backend is asked for."""
    import os

    import numpy as np
    import onnxruntime
    import torch

    from attnperf.backends.onnxrt import KEEP_ONNX_ENV
    from attnperf.case import Case
    from attnperf.mechanisms import get_mechanism

    folder = tmp_path / "graphs" / "deep"  # created when the first graph is kept
    shape = ["--seq-lens", "17", "--heads", "2", "--head-dim", "8", "--keep-onnx", str(folder)]
    assert main(["check", "--variants", "causal,linear_causal", "--backends", "eager,onnxruntime", *shape]) == 0
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["full_B1_H2_S17_D8_f32_causal_onnxruntime.onnx", "linear_B1_H2_S17_D8_f32_causal_onnxruntime.onnx"]
    assert KEEP_ONNX_ENV not in os.environ  # the folder is the command's only
    case = Case(heads=2, q_len=17, head_dim=8, causal=True)
    q, k, v = (torch.randn(1, 2, 17, 8) for _ in range(3))
    session = onnxruntime.InferenceSession(str(folder / names[0]), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})
    ref = get_mechanism("full").reference(q.double(), k.double(), v.double(), case)
    np.testing.assert_allclose(out, ref.float().numpy(), rtol=1e-4, atol=1e-5)

    capsys.readouterr()
    graph = str(folder / names[0])
    assert main(["sweep", "--variants", "causal", "--backends", "onnxruntime", "--keep-onnx", graph]) == 2
    assert f"attnperf sweep: error: --keep-onnx {graph} is a file; give a folder" in capsys.readouterr().err
    assert main(["check", "--backends", "eager,sdpa", "--keep-onnx", str(tmp_path)]) == 2
    assert "--keep-onnx keeps the graphs of the backends onnxruntime, onnxruntime-cuda, onnxruntime-trt; " \
        "--backends has none" in capsys.readouterr().err  # fmt: skip
