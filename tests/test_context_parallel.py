"""Context parallelism on two gloo ranks on the CPU, launched by torchrun in a subprocess.

What this covers (docs/context-parallel.md): PyTorch's sharding with the head-tail layout, the
ring (``_templated_ring_attention``: rotation over gloo, the causal schedule, the log-sum-exp
merge) with the CPU's flash kernel as its op, ``context_parallel_unshard`` and the launcher's
check and bench. The DTensor dispatch into the GPU kernels and NCCL run only on GPUs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from attnperf.backends import BACKENDS
from attnperf.case import Case
from attnperf.cli import main as attnperf_main
from attnperf.cpbench import MULTICAST_OFF, keep_multicast_off
from attnperf.mechanisms import MECHANISMS

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    # two ranks on a small machine: no oversubscription; this checkout's attnperf in every rank
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), "-m", "attnperf", "cp", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False, cwd=ROOT)


def test_two_gloo_ranks_match_the_float64_reference(tmp_path: Path) -> None:
    """Full and causal (load-balanced), MHA in float32 and GQA in bfloat16; an odd length is refused
    with its reason and the run goes on."""
    out32, out16 = tmp_path / "f32.json", tmp_path / "bf16.json"
    run = torchrun("check", "--device", "cpu", "--seq-lens", "64,96,70", "--heads", "4", "--head-dim", "16",
                   "--json", str(out32))  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    run = torchrun("check", "--device", "cpu", "--dtype", "bfloat16", "--seq-lens", "128", "--heads", "4",
                   "--kv-heads", "2", "--head-dim", "16", "--json", str(out16))  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(out32.read_text())["results"] + json.loads(out16.read_text())["results"]
    by_id = {r["case_id"]: r for r in results}
    ok = [r for r in results if r["status"] == "ok"]
    assert {r["case_id"] for r in ok} == {
        "B1_H4_S64_D16_f32", "B1_H4_S96_D16_f32", "B1_H4_S70_D16_f32", "B1_H4_S64_D16_f32_causal",
        "B1_H4_S96_D16_f32_causal", "B1_H4_KV2_S128_D16_bf16", "B1_H4_KV2_S128_D16_bf16_causal",
    }  # fmt: skip
    for r in ok:
        assert 0 < r["error"] <= r["bound"], r
    refused = by_id["B1_H4_S70_D16_f32_causal"]
    assert refused["status"] == "unsupported"
    assert "divisible by 4" in refused["reason"]
    assert json.loads(out32.read_text())["machine"].endswith("-x2")


def test_bench_writes_the_table_with_both_configurations(tmp_path: Path) -> None:
    run = torchrun("bench", "--device", "cpu", "--variants", "causal", "--seq-lens", "256", "--max-seq-len", "512",
                   "--heads", "2", "--head-dim", "16", "--repeat", "3", "--out", str(tmp_path))  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    (report,) = tmp_path.glob("cp-*-x2.json")
    rows = json.loads(report.read_text())["rows"]
    assert [(r["seq_len"], r["timed"]) for r in rows] == [(256, True), (512, False)]
    first = rows[0]
    assert first["check"]["status"] == "ok"
    assert first["best_single"]["spec"]["backend"] in ("eager", "sdpa-flash")
    assert first["ring"]["status"] == "ok"
    assert len(first["ring"]["per_rank"]) == 2
    assert first["speedup"] == pytest.approx(first["best_single"]["median_s"] / first["ring"]["median_s"])
    assert first["efficiency"] == pytest.approx(first["speedup"] / 2)
    assert "| causal | 256 |" in report.with_suffix(".md").read_text()


def test_outside_torchrun_the_backend_says_why_and_the_launcher_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    reason = BACKENDS["context-parallel"].supports(MECHANISMS["full"], Case(q_len=64, causal=True))
    assert reason == "needs torchrun with WORLD_SIZE >= 2; run `torchrun --nproc-per-node N -m attnperf cp ...`"
    assert main(["check", "--device", "cpu"]) == 2
    assert "needs torchrun with WORLD_SIZE >= 2" in capsys.readouterr().err


def main(argv: list[str]) -> int:
    return attnperf_main(["cp", *argv])


def test_bad_arguments_name_the_parameter_and_the_allowed_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--out", "x", "--variants", "window"])
    assert "unknown variants ['window']; allowed: all or full, causal" in capsys.readouterr().err
    assert main(["check", "--device", "cpu", "--heads", "4", "--kv-heads", "3"]) == 2
    assert "kv_heads" in capsys.readouterr().err


def test_repeat_and_baselines_are_refused_on_stderr_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in (
        (["--repeat", "0"], "argument --repeat: expected an integer >= 1, got 0"),
        (["--baselines", "eager,turbo"], "argument --baselines: unknown baselines ['turbo']; allowed: all or eager"),
        (["--baselines", "context-parallel"], "unknown baselines ['context-parallel']"),  # not its own baseline
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["bench", "--device", "cpu", "--out", "x", *args])
        assert exit_info.value.code == 2
        out, err = capsys.readouterr()
        assert message in err
        assert out == ""


@pytest.fixture
def one_gloo_rank() -> Iterator[None]:
    """A process group of this process alone (gloo), for what time_ring does around the ring."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_the_cpu_allocators_failure_in_the_ring_is_oom(monkeypatch, one_gloo_rank) -> None:
    """time_ring classifies allocation failures as every runner does (point.is_oom): the CPU
    allocator raises a plain RuntimeError, not torch.OutOfMemoryError."""
    import attnperf.cpbench

    message = "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: 1 TB"

    def no_memory(*args: object) -> None:
        raise RuntimeError(message)

    monkeypatch.setattr(attnperf.cpbench, "shards", no_memory)
    ring = attnperf.cpbench.time_ring(Case(q_len=64, head_dim=16), seed=0, repeat=3, variant="full")
    assert ring == {"status": "oom", "reason": message}

    def a_bug(*args: object) -> None:
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(attnperf.cpbench, "shards", a_bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # anything else is not an oom
        attnperf.cpbench.time_ring(Case(q_len=64, head_dim=16), seed=0, repeat=3, variant="full")


def test_multicast_stays_off_unless_the_environment_says_otherwise() -> None:
    env = {"NCCL_NVLS_ENABLE": "1"}
    keep_multicast_off(env)
    assert env == {**MULTICAST_OFF, "NCCL_NVLS_ENABLE": "1"}
