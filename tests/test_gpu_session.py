"""tools/gpu-session.sh, the background runner of GPU-check phases on a CUDA host, with a stub in place of
tools/gpu-check.sh: phases after a "+" run as a second lane on the second GPU, with a copy, work
folders and an archive of their own; without a "+" there is one lane, as before lanes existed. And the
GPU scripts' attnperf calls against today's command line, which CI can check without a GPU."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from attnperf.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent

#: Writes what its lane was given into its archive, as gpu-check.sh writes raw/ into gpu-check.tgz.
STUB = """set -u
mkdir -p "$OUT/raw"
echo "lane=$GPU_LANE gpus=${CUDA_VISIBLE_DEVICES:-all} work=${WORK_ROOT:-/tmp} phases=$* deadline=$DEADLINE_UNIX" \\
  > "$OUT/raw/seen.txt"
grep Cpus_allowed_list /proc/self/status | cut -f2 > "$OUT/raw/cpus.txt"
tar czf "$OUT/gpu-check.tgz" -C "$OUT/raw" .
"""


def seen(archive: Path, name: str = "seen.txt") -> str:
    with tarfile.open(archive) as tar:
        member = tar.extractfile(f"./{name}")
        assert member is not None
        return member.read().decode().strip()


def all_cpus() -> str:
    return Path("/proc/self/status").read_text().split("Cpus_allowed_list:")[1].split()[0]


def cpu_set(listed: str) -> set[int]:
    """``0-3,8`` → {0, 1, 2, 3, 8}."""
    cpus: set[int] = set()
    for part in listed.split(","):
        low, _, high = part.partition("-")
        cpus |= set(range(int(low), int(high or low) + 1))
    return cpus


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    if shutil.which("bash") is None or shutil.which("setsid") is None:
        pytest.skip("needs bash and setsid (util-linux), as a GPU host running the check has")
    tree = tmp_path / "tree"
    (tree / "tools").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "gpu-session.sh", tree / "tools")
    (tree / "tools" / "gpu-check.sh").write_text(STUB)
    return tree


def start(tree: Path, root: Path, *phases: str) -> tuple[Path, str]:
    out = root / "out"
    out.mkdir(parents=True)
    env = {"PATH": "/usr/bin:/bin", "OUT": str(out), "WAIT_S": "30", "GPU_SESSION_ROOT": str(root)}
    command = ["bash", "tools/gpu-session.sh", "start", "100", *phases]
    proc = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "phases done" in proc.stdout, proc.stdout
    return out, proc.stdout


def test_two_lanes(tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "session"
    out, said = start(tree, root, "trials", "+", "mechanisms-quick", "prcheck-pr")
    first, second = seen(out / "gpu-check.tgz"), seen(out / "gpu-check-lane1.tgz")
    assert first.startswith("lane=0 gpus=0 work=/tmp phases=trials deadline="), "lane 0 sees GPU 0 only"
    assert second.startswith(f"lane=1 gpus=1 work={root}/lane1 phases=mechanisms-quick prcheck-pr deadline=")
    assert first.split("deadline=")[1] == second.split("deadline=")[1], "both lanes end by one deadline"
    assert (root / "copy-lane1" / "tools" / "gpu-check.sh").is_file(), "the second lane runs a copy of its own"
    cpus = [cpu_set(seen(out / name, "cpus.txt")) for name in ("gpu-check.tgz", "gpu-check-lane1.tgz")]
    if "unpinned" in said:  # fewer than two physical cores here (or no taskset): said so, and nothing pinned
        assert cpus[0] == cpus[1] == cpu_set(all_cpus())
    else:  # each lane half of the allowed cores, none shared
        assert cpus[0], cpus
        assert cpus[1], cpus
        assert not cpus[0] & cpus[1], cpus
        assert cpus[0] | cpus[1] == cpu_set(all_cpus())


def test_one_lane(tree: Path, tmp_path: Path) -> None:
    out, _ = start(tree, tmp_path / "session", "tests", "libs")
    assert seen(out / "gpu-check.tgz").startswith("lane=0 gpus=all work=/tmp phases=tests libs deadline=")
    assert not (out / "gpu-check-lane1.tgz").exists()
    assert seen(out / "gpu-check.tgz", "cpus.txt") == all_cpus(), "one lane is not pinned"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def attnperf_calls(script: Path) -> list[tuple[int, str, list[str]]]:
    """Each ``-m attnperf SUB ARGS`` of a script (continuation lines joined; cp-two-gpus.sh's ``run SECONDS``
    is its ``torchrun … -m attnperf cp``), as (line, SUB, the words up to a redirection or pipe)."""
    text = script.read_text().replace("\\\n", " ")
    calls = []
    for number, written in enumerate(text.splitlines(), 1):
        line = re.sub(r"^run \d+ ", "-m attnperf cp ", written) if script.name == "cp-two-gpus.sh" else written
        for match in re.finditer(r"-m attnperf ([a-z]+)(.*)", line):
            words = re.split(r"\s(?:>|\||2>|&&|;)", match.group(2))[0].split()
            calls.append((number, match.group(1), words))
    return calls


@pytest.mark.parametrize("script", ["gpu-check.sh", "gpu-trials.sh", "cp-two-gpus.sh"])
def test_tools_call_todays_subcommands_and_flags(script: str) -> None:
    """The GPU scripts run where CI cannot: a renamed subcommand or a dropped flag would only show on a rented
    GPU. Every attnperf call they make names a subcommand and flags that today's parser has."""
    commands = subcommands(build_parser())
    shims = re.findall(r"-m attnperf\.\w+", (ROOT / "tools" / script).read_text())
    assert not shims, f"{script} calls the python -m shims {shims}: use the subcommands (-m attnperf SUB)"
    calls = attnperf_calls(ROOT / "tools" / script)
    assert calls, f"no attnperf call found in {script}"
    for line, name, words in calls:
        assert name in commands, f"{script}:{line}: attnperf {name} is no subcommand ({sorted(commands)})"
        parser = commands[name]
        nested = subcommands(parser)
        if nested and words and words[0] in nested:
            parser = nested[words[0]]
        known = {option for action in parser._actions for option in action.option_strings}
        for word in words:
            flag = word.split("=")[0].strip("\"'")
            if flag.startswith("--") and flag != "--":
                assert flag in known, f"{script}:{line}: attnperf {name} has no {flag}"


def test_gpu_check_lists_its_phases_and_handles_each() -> None:
    """Without a phase it prints its header and exits 2; every phase the header lists has a branch."""
    script = ROOT / "tools" / "gpu-check.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    listed = re.findall(r"^#   ([a-z0-9-]+)  ", proc.stdout, flags=re.MULTILINE)
    branches = set(re.findall(r"^  ([a-z0-9-]+)\)", script.read_text(), flags=re.MULTILINE))
    assert listed, proc.stdout
    assert set(listed) == branches, (sorted(set(listed) - branches), sorted(branches - set(listed)))
