"""The GitHub workflows call nox sessions that exist, with the safety rules the README states."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def run_lines(workflow: Path) -> list[str]:
    data = yaml.safe_load(workflow.read_text())
    return [step["run"] for job in data["jobs"].values() for step in job.get("steps", []) if "run" in step]


def nox_sessions() -> set[str]:
    text = (ROOT / "noxfile.py").read_text()
    return set(re.findall(r"@nox\.session\([^)]*\)\ndef (\w+)\(", text))


def test_there_are_the_three_workflows() -> None:
    assert [w.name for w in WORKFLOWS] == ["ci.yml", "perf-pr.yml", "publish.yml"]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_every_nox_session_a_workflow_calls_exists(workflow: Path) -> None:
    called = {m for line in run_lines(workflow) for m in re.findall(r"\bnox\s+-s\s+(\w+)", line)}
    assert called, f"{workflow.name} calls no nox session"
    assert called <= nox_sessions(), f"{workflow.name} calls unknown sessions {called - nox_sessions()}"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.name)
def test_workflows_read_only_by_default_and_never_pull_request_target(workflow: Path) -> None:
    data = yaml.safe_load(workflow.read_text())
    triggers = data[True] if True in data else data["on"]  # YAML 1.1 reads the key `on` as True
    assert "pull_request_target" not in triggers
    assert data["permissions"] == {"contents": "read"}
    for name, job in data["jobs"].items():
        assert "timeout-minutes" in job, f"{workflow.name}:{name} has no timeout"


def test_perf_pr_gates_the_gpu_job_and_keeps_secrets_out() -> None:
    data = yaml.safe_load((ROOT / ".github/workflows/perf-pr.yml").read_text())
    bench = data["jobs"]["benchmark"]
    assert "self-hosted" in bench["runs-on"]
    assert "gpu" in bench["runs-on"]
    assert "head.repo.full_name == github.repository" in bench["if"]
    assert "run-gpu-benchmarks" in bench["if"]
    assert "permissions" not in bench, "the benchmark job must keep the read-only default"
    assert "secrets." not in (ROOT / ".github/workflows/perf-pr.yml").read_text()
    assert data["concurrency"]["group"].startswith("perf-pr-")


def perf_pr_regress_args() -> list[str]:
    """The arguments perf-pr.yml gives ``nox -s regress`` (after ``--``)."""
    (line,) = [x for x in run_lines(ROOT / ".github/workflows/perf-pr.yml") if "nox -s regress" in x]
    tokens = shlex.split(line)
    return tokens[tokens.index("--") + 1 :]


def test_perf_pr_regress_command_parses() -> None:
    from attnperf.regress import build_parser

    args = build_parser().parse_args(
        [a.replace("$BASE_SHA", "b").replace("$HEAD_SHA", "h") for a in perf_pr_regress_args()]
    )
    assert args.existing
    assert (args.base, args.head) == ("b", "h")
