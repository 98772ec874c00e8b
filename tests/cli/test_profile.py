"""``attnperf profile``: a checked point's kernels (on the CPU its operators) with their time per call."""

from __future__ import annotations

import json

from attnperf.benchgrid import FORWARD, PointSpec
from attnperf.profile import profile_point
from attnperf.records import Status

from .test_cli import run


def spec(backend: str, variant: str = "causal") -> PointSpec:
    return PointSpec(backend=backend, variant=variant, seq_len=128, head_dim=16, dtype="float32", mode=FORWARD,
                     device="cpu", heads=2)  # fmt: skip


def test_a_profile_names_the_operators_that_spend_the_call() -> None:
    profile = profile_point(spec("eager"), calls=5, repeat=3)
    assert profile.status is Status.OK
    names = [k.name for k in profile.kernels]
    assert "aten::bmm" in names  # q·kᵀ and p·v
    bmm = next(k for k in profile.kernels if k.name == "aten::bmm")
    assert bmm.launches == 2
    assert profile.kernel_s == sum(k.seconds for k in profile.kernels)
    assert profile.kernel_s > 0
    assert profile.busy is None  # on the CPU the profiler's overhead makes the ratio meaningless
    assert [k.seconds for k in profile.kernels] == sorted((k.seconds for k in profile.kernels), reverse=True)


def test_an_unsupported_point_says_why_and_is_not_profiled() -> None:
    profile = profile_point(spec("flash-attn4"), calls=2)
    assert profile.status is Status.UNSUPPORTED
    assert "runs on cuda only" in profile.reason
    assert profile.kernels == []


def test_the_command_writes_json(tmp_path) -> None:
    out = tmp_path / "p.json"
    proc = run("profile", "--variants", "causal", "--backends", "eager,sdpa-math", "--seq-lens", "64", "--heads", "2",
               "--head-dim", "16", "--calls", "3", "--json", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "causal × eager @ 64:" in proc.stdout
    data = json.loads(out.read_text())
    assert [p["backend"] for p in data["profiles"]] == ["eager", "sdpa-math"]
    assert all(p["status"] == "ok" and p["kernels"] for p in data["profiles"])


def test_a_backend_that_breaks_is_a_failed_profile_not_a_crash(monkeypatch) -> None:
    from attnperf.backends import get_backend

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("no kernel")

    monkeypatch.setattr(get_backend("tiled"), "prepare", broken)
    profile = profile_point(spec("tiled"), calls=2)
    assert profile.status is Status.FAILED
    assert profile.reason == "TypeError: no kernel"
