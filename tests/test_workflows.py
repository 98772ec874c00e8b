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


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github/workflows" / name).read_text())


def test_perf_pr_gates_the_gpu_job_and_keeps_secrets_out() -> None:
    data = load("perf-pr.yml")
    bench = data["jobs"]["benchmark"]
    assert "self-hosted" in bench["runs-on"]
    assert "gpu-pr" in bench["runs-on"], "pull-request code runs on the ephemeral gpu-pr runners only"
    assert "permissions" not in bench, "the benchmark job must keep the read-only default"
    assert "secrets." not in (ROOT / ".github/workflows/perf-pr.yml").read_text()
    assert "concurrency" not in data, "a workflow-wide group lets a skipped event cancel a running check"
    assert bench["concurrency"]["group"].startswith("perf-pr-")


def test_the_check_is_judged_by_the_base_commits_code() -> None:
    """The comparison runs from a worktree of the base; head's code runs only in its processes."""
    steps = load("perf-pr.yml")["jobs"]["benchmark"]["steps"]
    (judge,) = [s for s in steps if "worktree add" in s.get("run", "")]
    assert '"$BASE_SHA"' in judge["run"]
    (compare,) = [s for s in steps if "nox -s regress" in s.get("run", "")]
    assert compare["working-directory"] == "${{ runner.temp }}/judge"
    assert '--repo "$GITHUB_WORKSPACE"' in compare["run"]


def test_the_judge_reads_the_runners_calibration_and_a_label_allows_measurement_changes() -> None:
    """The calibration comes from the runner, never the head; only a maintainer's label lets a head that
    changes the measuring code pass."""
    bench = load("perf-pr.yml")["jobs"]["benchmark"]
    assert bench["env"]["ATTNPERF_NOISE"].startswith("/")
    assert "--noise" not in " ".join(perf_pr_regress_args())
    allow = bench["env"]["ALLOW_MEASUREMENT_CHANGE"]
    assert "'perf-measurement-change'" in allow
    assert "'--allow-measurement-change'" in allow


def test_a_fork_runs_only_on_the_label_event_and_on_the_labelled_commit() -> None:
    """A fork's push (``synchronize``) never runs: only the ``labeled`` event of the review label,
    and then the very head commit the event names (issue: each push of a fork reviewed)."""
    bench = load("perf-pr.yml")["jobs"]["benchmark"]
    condition = " ".join(bench["if"].split())
    same_repo, fork = condition.split(") ||")
    assert "head.repo.full_name == github.repository" in same_repo
    assert "github.event.action != 'labeled'" in same_repo
    assert "head.repo.full_name != github.repository" in fork
    assert "github.event.action == 'labeled'" in fork
    assert "github.event.label.name == 'run-gpu-benchmarks'" in fork
    assert "synchronize" not in fork
    (checkout,) = [s for s in bench["steps"] if str(s.get("uses", "")).startswith("actions/checkout")]
    assert checkout["with"]["ref"] == "${{ github.event.pull_request.head.sha }}"
    assert checkout["with"]["persist-credentials"] is False
    assert bench["env"]["HEAD_SHA"] == "${{ github.event.pull_request.head.sha }}"


def test_the_pull_request_workflow_cannot_write_the_history() -> None:
    text = (ROOT / ".github/workflows/perf-pr.yml").read_text()
    data = load("perf-pr.yml")
    for name, job in data["jobs"].items():
        assert job.get("permissions", {}).get("contents", "read") == "read", f"perf-pr {name} writes contents"
    assert "benchmark-history" not in text
    assert "HISTORY_BRANCH" not in text
    assert "/var/lib/attnperf" not in text
    assert "git push" not in text
    comment = data["jobs"]["comment"]
    assert comment["runs-on"] == "ubuntu-latest"
    assert not any("checkout" in str(step.get("uses", "")) for step in comment["steps"]), "comment runs no PR code"


def test_only_the_store_job_writes_the_history_and_it_runs_no_gpu_or_pr_code() -> None:
    data = load("publish.yml")
    assert set(data[True] if True in data else data["on"]) == {"push", "workflow_dispatch"}
    writers = {name for name, job in data["jobs"].items() if job.get("permissions", {}).get("contents") == "write"}
    assert writers == {"store"}
    store = data["jobs"]["store"]
    assert store["runs-on"] == "ubuntu-latest"
    assert store["permissions"] == {"contents": "write"}
    pushes = [name for name, job in data["jobs"].items() for step in job.get("steps", [])
              if "git push" in step.get("run", "")]  # fmt: skip
    assert pushes == ["store"]
    measure = data["jobs"]["measure"]
    assert "gpu-trusted" in measure["runs-on"]
    assert "gpu-pr" not in measure["runs-on"]
    assert "permissions" not in measure
    for job in data["jobs"].values():
        for step in job.get("steps", []):
            if str(step.get("uses", "")).startswith("actions/checkout"):
                assert step["with"]["persist-credentials"] is False


def perf_pr_regress_args(workspace: str = "workspace") -> list[str]:
    """The arguments perf-pr.yml gives ``nox -s regress`` (after ``--``), the workspace's path in."""
    (line,) = [x for x in run_lines(ROOT / ".github/workflows/perf-pr.yml") if "nox -s regress" in x]
    # the label's flag, where the label is set (an empty variable leaves no argument)
    line = line.replace('${ALLOW_MEASUREMENT_CHANGE:+"$ALLOW_MEASUREMENT_CHANGE"}', "")
    tokens = shlex.split(line.replace("$GITHUB_WORKSPACE", workspace))
    return tokens[tokens.index("--") + 1 :]


def test_perf_pr_regress_command_parses() -> None:
    from attnperf.cli import build_parser

    args = build_parser().parse_args(
        ["regress", *[a.replace("$BASE_SHA", "b").replace("$HEAD_SHA", "h") for a in perf_pr_regress_args()]]
    )
    assert args.grid == "pr-gpu"
    assert (args.base, args.head) == ("b", "h")


def test_the_two_gpu_job_runs_trusted_code_read_only_with_multicast_off() -> None:
    job = load("publish.yml")["jobs"]["context-parallel"]
    assert {"self-hosted", "gpu-trusted", "h200x2"} <= set(job["runs-on"])
    assert "gpu-pr" not in job["runs-on"]
    assert "permissions" not in job
    labels = yaml.safe_load((ROOT / ".github/actionlint.yaml").read_text())["self-hosted-runner"]["labels"]
    assert "h200x2" in labels
    from attnperf.cpbench import MULTICAST_OFF

    assert {name: job["env"][name] for name in MULTICAST_OFF} == MULTICAST_OFF


def test_compiled_kernels_are_saved_by_main_and_only_restored_by_pull_requests() -> None:
    """The first process of a check would compile for minutes; main's history run saves each
    shard's compilations and the pull-request check restores all of them, never saving."""
    pr_steps = load("perf-pr.yml")["jobs"]["benchmark"]["steps"]
    uses = [step.get("uses", "") for step in pr_steps]
    assert not any(u.startswith(("actions/cache@", "actions/cache/save@")) for u in uses), "a PR must not save"
    restored = [
        step["with"]["restore-keys"] for step in pr_steps if step.get("uses", "").startswith("actions/cache/restore@")
    ]
    measure = load("publish.yml")["jobs"]["measure"]
    shards = measure["strategy"]["matrix"]["shard"]
    saves = [step for step in measure["steps"] if step.get("uses", "").startswith("actions/cache/save@")]
    assert len(saves) == 1
    assert "${{ matrix.shard }}" in saves[0]["with"]["key"]
    for shard in shards:
        prefix = saves[0]["with"]["key"].replace("${{ matrix.shard }}", str(shard)).split("${{ github.sha }}")[0]
        assert prefix in restored, f"shard {shard}'s cache is never restored"
    publish_runs = " ".join(step.get("run", "") for step in measure["steps"])
    assert 'rm -rf "$HOME/.cache/attnperf-compile"' in publish_runs, "a persistent runner saves only this push's"
    for steps in (pr_steps, measure["steps"]):
        runs = " ".join(step.get("run", "") for step in steps)
        assert "ATTNPERF_COMPILE_CACHE=$HOME/.cache/attnperf-compile" in runs
        assert all(
            s["with"]["path"] == "~/.cache/attnperf-compile" for s in steps if "actions/cache" in s.get("uses", "")
        )
