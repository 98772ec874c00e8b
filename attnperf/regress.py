"""Compare two commits with asv and fail on a regression: ``nox -s regress`` and perf-pr.yml.

Two modes, one decision:

* ``virtualenv`` (default): ``asv continuous`` builds both commits into asv's environments and
  interleaves their rounds.
* ``--existing``: a prepared machine (the self-hosted GPU runner) keeps one Python with torch
  and the GPU libraries; each commit is checked out into a git worktree and benchmarked in that
  Python with the worktree first on the path (``ASV_PYTHONPATH``; asv drops ``PYTHONPATH``)
  via ``asv run -E existing --set-commit-hash``,
  base and head alternating for ``--rounds`` rounds, so drift over time hits both alike.

The verdict is asv's: a benchmark regresses when head/base exceeds ``--factor`` *and* asv's
Mann–Whitney test on the raw samples says the difference is significant (``asv compare``
marks it ``+``). A flagged benchmark is measured again (``--confirm``, appending samples) and
fails only if it is still flagged: PyTorch's dashboard likewise wants two violations in a row.
A benchmark that fails on head but not on base (``!``: a crash, an out-of-memory, or a wrong
result, which the correctness check in ``setup`` raises) is measured again the same way and
fails the comparison if it still fails (a transient out-of-memory does not).
The markdown summary (``--summary``) holds the verdict and asv's tables.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attnperf.results import write_atomic

#: Default regression factor. The same H100 showed up to 12% between processes for one kernel
#: (DESIGN §4), so 10% would raise false alarms; the A/A runs in the README calibrate it.
DEFAULT_FACTOR = 1.15
_ROW = re.compile(r"^\|\s*(?P<mark>[+\-x!~ ]?)\s*\|.*\|\s*(?P<ratio>[\d.]+|n/a|~?[\d.]+)\s*\|\s*(?P<name>\S.*?)\s*\|$")


@dataclass(frozen=True)
class Comparison:
    regressions: list[str]
    improvements: list[str]
    table: str
    failures: list[str] = field(default_factory=list)  # fail on head, not on base

    @property
    def failed(self) -> bool:
        return bool(self.regressions or self.failures)


#: ``asv run`` exits 2 when a benchmark failed: that is a result for ``asv compare`` to report.
BENCHMARK_FAILED = 2


def asv(
    args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, check: bool = True, ok: Sequence[int] = (0,)
) -> str:
    """Run ``asv`` (the one beside this Python) and return its output; ``ok``: accepted exit codes."""
    cmd = [sys.executable, "-m", "asv", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    usage_error = proc.returncode == 2 and "usage:" in proc.stderr  # argparse's exit code is 2 as well
    if check and (proc.returncode not in ok or usage_error):
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def git(args: Sequence[str], *, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def parse_compare(output: str) -> Comparison:
    """Regressions (``+``), new failures (``!``) and improvements (``-``) from ``asv compare``."""
    regressions, improvements, failures = [], [], []
    for line in output.splitlines():
        match = _ROW.match(line.strip())
        if not match or set(match["name"]) <= {"-"} or match["name"].startswith("Benchmark"):
            continue
        if match["mark"] == "+":
            regressions.append(match["name"])
        elif match["mark"] == "!":
            failures.append(match["name"])
        elif match["mark"] == "-":
            improvements.append(match["name"])
    return Comparison(regressions, improvements, output.strip(), failures)


def bench_regex(names: Sequence[str]) -> str:
    """An asv ``-b`` regex selecting exactly ``names`` (asv matches ``function(param, …)``)."""
    return "|".join(f"^{re.escape(name)}$" for name in sorted(set(names)))


class Runner:
    """Runs one or more measurement passes of base and head into asv's results."""

    def __init__(self, repo: Path, base: str, head: str, machine: str, *, existing: bool, rounds: int) -> None:
        self.repo, self.base, self.head, self.machine = repo, base, head, machine
        self.existing, self.rounds = existing, rounds
        self.worktrees: dict[str, Path] = {}

    def __enter__(self) -> Runner:
        asv(["machine", "--yes", "--machine", self.machine], cwd=self.repo)
        if self.existing:
            root = Path(tempfile.mkdtemp(prefix="attnperf-regress-"))
            for sha in {self.base, self.head}:
                path = root / sha[:12]
                git(["worktree", "add", "--detach", str(path), sha], cwd=self.repo)
                self.worktrees[sha] = path
        return self

    def __exit__(self, *exc: object) -> None:
        for path in self.worktrees.values():
            git(["worktree", "remove", "--force", str(path)], cwd=self.repo)
            shutil.rmtree(path.parent, ignore_errors=True)

    def measure(self, bench: str | None, *, append: bool) -> None:
        """One pass over base and head; ``append`` keeps the samples already recorded (the
        confirmation pass), otherwise the first round replaces them (a runner's results folder
        may hold older samples of the same commits)."""
        selection = ["-b", bench] if bench else []
        if not self.existing:
            args = ["continuous", "--machine", self.machine, "--record-samples", "--interleave-rounds", *selection]
            asv([*args, *(["--append-samples"] if append else []), self.base, self.head], cwd=self.repo, check=False)
            return
        for round_index in range(self.rounds):
            for sha in (self.base, self.head) if round_index % 2 == 0 else (self.head, self.base):
                # asv drops PYTHONPATH from benchmark processes and sets ASV_PYTHONPATH in its place.
                paths = [str(self.worktrees[sha]), os.environ.get("PYTHONPATH", "")]
                env = {**os.environ, "ASV_PYTHONPATH": os.pathsep.join(p for p in paths if p)}
                keep = ["--append-samples"] if append or round_index > 0 else ["--record-samples"]
                asv(
                    ["run", "--machine", self.machine, "--environment", f"existing:{sys.executable}",
                     "--set-commit-hash", sha, *keep, "-a", "rounds=1", *selection],
                    cwd=self.repo, env=env, ok=(0, BENCHMARK_FAILED),
                )  # fmt: skip

    def compare(self, factor: float) -> Comparison:
        out = asv(
            ["compare", "--machine", self.machine, "--factor", str(factor), "--split", self.base, self.head],
            cwd=self.repo,
        )
        return parse_compare(out)


def summary_markdown(base: str, head: str, factor: float, first: Comparison, final: Comparison) -> str:
    verdict = "**regression**" if final.failed else "no regression"
    lines = [
        f"## attnperf: {verdict} (factor {factor}, head {head[:10]} vs base {base[:10]})",
        "",
        f"- flagged on the first pass: {len(first.regressions)}; "
        f"still flagged after confirmation: {len(final.regressions)}",
        f"- failing on head only (crash, out of memory or wrong result): {len(final.failures)}",
        f"- improvements: {len(final.improvements)}",
    ]
    if final.regressions:
        lines += ["", "### Regressions", "", *[f"- `{name}`" for name in final.regressions]]
    if final.failures:
        lines += ["", "### Failing on head", "", *[f"- `{name}`" for name in final.failures]]
    lines += ["", "### asv compare", "", "```", final.table, "```", ""]
    return "\n".join(lines)


def regress(
    base: str, head: str, *, repo: Path = Path("."), factor: float = DEFAULT_FACTOR, bench: str | None = None,
    machine: str | None = None, existing: bool = False, rounds: int = 2, confirm: int = 1,
    summary: Path | None = None,
) -> Comparison:  # fmt: skip
    """Measure base and head, compare, confirm flagged benchmarks; return the final comparison."""
    from attnperf.machine import machine_tag

    repo = repo.resolve()
    base_sha, head_sha = git(["rev-parse", base], cwd=repo), git(["rev-parse", head], cwd=repo)
    with Runner(repo, base_sha, head_sha, machine or machine_tag(), existing=existing, rounds=rounds) as runner:
        runner.measure(bench, append=False)
        first = final = runner.compare(factor)
        for _ in range(confirm):
            if not final.failed:
                break
            runner.measure(bench_regex(final.regressions + final.failures), append=True)
            final = runner.compare(factor)
    if summary is not None:
        write_atomic(summary, summary_markdown(base_sha, head_sha, factor, first, final))
    return final


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m attnperf.regress", description=__doc__.splitlines()[0])
    parser.add_argument("base", help="base commit (e.g. origin/main)")
    parser.add_argument("head", help="head commit (e.g. HEAD)")
    parser.add_argument(
        "--factor", type=float, default=DEFAULT_FACTOR, help=f"slowdown ratio that counts (default {DEFAULT_FACTOR})"
    )
    parser.add_argument("--bench", "-b", help="asv benchmark regex (default: all)")
    parser.add_argument("--machine", help="asv machine name (default: attnperf.machine.machine_tag())")
    parser.add_argument(
        "--existing", action="store_true", help="benchmark in this Python via git worktrees (GPU runner)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating base/head passes in --existing mode (default 2)"
    )
    parser.add_argument(
        "--confirm", type=int, default=1, help="re-measure flagged benchmarks this many times (default 1)"
    )
    parser.add_argument("--summary", type=Path, default=Path("regress-summary.md"), help="markdown summary path")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the git repository with asv.conf.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``nox -s regress -- …``: exit 1 on a confirmed regression or a new failure, 0 otherwise."""
    args = build_parser().parse_args(argv)
    result = regress(
        args.base, args.head, repo=args.repo, factor=args.factor, bench=args.bench, machine=args.machine,
        existing=args.existing, rounds=args.rounds, confirm=args.confirm, summary=args.summary,
    )  # fmt: skip
    print(Path(args.summary).read_text(encoding="utf-8"))
    return 1 if result.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
