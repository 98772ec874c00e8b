"""End to end: a deliberate 3× slowdown in one backend is caught, an A/A comparison is clean,
and a backend that turns wrong fails the comparison.

A throwaway git repository is built from the project's tracked files with four commits:
base, an A/A commit that changes only documentation, a commit that makes the eager backend do
its work three times, and one that scales the tiled backend's output by 1.01. ``regress``
(what ``nox -s regress`` and perf-pr.yml call, in the ``--existing`` mode the GPU runner uses)
must flag exactly the eager benchmark for the slowdown, and exactly the tiled one as failing
on head for the wrong result (its correctness check in ``setup`` refuses to time it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from attnperf.regress import BENCHMARK_FAILED, Comparison, asv, bench_regex, main, parse_compare, regress

from .test_workflows import perf_pr_regress_args

ROOT = Path(__file__).resolve().parents[1]
BENCH = r"TimeForward\.time_forward\("
GRID = {
    "ATTNPERF_GRID": "cpu",
    "ATTNPERF_VARIANTS": "causal",
    "ATTNPERF_SEQ_LENS": "256",
    "ATTNPERF_BACKENDS": "eager,tiled",
}
SLOWDOWN = (
    "                return eager_softmax(qq, expand_kv(kk, heads), expand_kv(v, heads), case.scale, mask, bias)\n",
    "                for _ in range(2):  # deliberate 3x slowdown for the regression test\n"
    "                    eager_softmax(qq, expand_kv(kk, heads), expand_kv(v, heads), case.scale, mask, bias)\n"
    "                return eager_softmax(qq, expand_kv(kk, heads), expand_kv(v, heads), case.scale, mask, bias)\n",
)
WRONG = ("out5[:, :, :, qs:qe] = (acc / l).to(out.dtype)", "out5[:, :, :, qs:qe] = (acc / l * 1.01).to(out.dtype)")


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def throwaway(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    repo = tmp_path_factory.mktemp("regress") / "attnperf"
    repo.mkdir()
    for name in git(ROOT, "ls-files", "--cached", "--others", "--exclude-standard").splitlines():
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    (repo / "README.md").write_text((repo / "README.md").read_text() + "\nA/A: documentation only.\n")
    git(repo, "commit", "-qam", "a/a")
    eager = repo / "attnperf" / "backends" / "eager.py"
    text = eager.read_text()
    assert SLOWDOWN[0] in text, "the slowdown patch no longer applies: update SLOWDOWN"
    eager.write_text(text.replace(SLOWDOWN[0], SLOWDOWN[1]))
    git(repo, "commit", "-qam", "slow eager")
    tiled = repo / "attnperf" / "backends" / "tiled.py"
    text = tiled.read_text()
    assert WRONG[0] in text, "the wrong-result patch no longer applies: update WRONG"
    tiled.write_text(text.replace(WRONG[0], WRONG[1]))
    git(repo, "commit", "-qam", "wrong tiled")
    return repo, git(repo, "rev-list", "--reverse", "HEAD").splitlines()


@pytest.fixture
def grid_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in GRID.items():
        monkeypatch.setenv(key, value)


def regress_here(repo: Path, base: str, head: str, summary: str) -> Comparison:
    """``regress`` as the GPU runner calls it (``--existing``), on the two-point CPU selection with
    factor 1.5 (a 2-core CI machine is noisier than the runner's default 1.15 allows)."""
    return regress(base, head, repo=repo, factor=1.5, bench=BENCH, machine="regress-test", existing=True,
                   summary=repo / summary)  # fmt: skip


@pytest.mark.slow
@pytest.mark.usefixtures("grid_env")
def test_aa_comparison_reports_nothing(throwaway) -> None:
    repo, (base, aa, _slow, _wrong) = throwaway
    result = regress_here(repo, base, aa, "aa.md")
    assert result.regressions == []
    assert "no regression" in (repo / "aa.md").read_text()


@pytest.mark.slow
@pytest.mark.usefixtures("grid_env")
def test_perf_pr_command_flags_exactly_the_slowed_backend(throwaway, monkeypatch, capsys) -> None:
    """perf-pr.yml's own ``nox -s regress`` arguments, with the commits substituted. Added for
    the CPU only: the repository, a machine name, the two-point benchmark selection, and factor
    1.5 (a 2-core CI machine is noisier than the GPU runner's default 1.15 allows)."""
    repo, (_base, aa, slow, _wrong) = throwaway
    monkeypatch.chdir(repo)  # the workflow's relative --summary path lands in the repository
    args = [a.replace("$BASE_SHA", aa).replace("$HEAD_SHA", slow) for a in perf_pr_regress_args()]
    code = main([*args, "--repo", str(repo), "--machine", "regress-test", "-b", BENCH, "--factor", "1.5"])
    assert code == 1
    summary = (repo / "regress-summary.md").read_text()
    assert "**regression**" in summary
    flagged = [line for line in summary.splitlines() if line.startswith("- `")]
    assert flagged == ["- `bench_attention.TimeForward.time_forward('eager', 'causal', 256, 64, 'float32')`"]
    assert "**regression**" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.usefixtures("grid_env")
def test_a_wrong_result_on_head_fails_the_comparison(throwaway) -> None:
    repo, (_base, _aa, slow, wrong) = throwaway
    result = regress_here(repo, slow, wrong, "wrong.md")
    assert result.failures == ["bench_attention.TimeForward.time_forward('tiled', 'causal', 256, 64, 'float32')"]
    assert result.regressions == []
    summary = (repo / "wrong.md").read_text()
    assert "**regression**" in summary
    assert "### Failing on head" in summary


def test_asv_usage_errors_are_errors_even_where_exit_2_is_a_result(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="usage:"):
        asv(["run", "--no-such-option"], cwd=tmp_path, ok=(0, BENCHMARK_FAILED))


def test_parse_compare_reads_asv_tables() -> None:
    out = """
| Change   | Before [a] <main~1>   | After [b] <main>   |   Ratio | Benchmark (Parameter)            |
|----------|-----------------------|--------------------|---------|----------------------------------|
| +        | 1.53±0.3ms            | 5.26±0.4ms         |    3.45 | b.T.time_forward('eager', 256)   |
| -        | 2.0ms                 | 1.0ms              |    0.5  | b.T.time_forward('tiled', 256)   |
| ~        | 2.0ms                 | 2.6ms              |    1.3  | b.T.time_forward('flex', 256)    |
|          | 2.0ms                 | 2.1ms              |    1.05 | b.T.time_forward('sdpa', 256)    |
| !        | 2.0ms                 | failed             |     n/a | b.T.time_forward('cudnn', 256)   |
"""
    parsed = parse_compare(out)
    assert parsed.regressions == ["b.T.time_forward('eager', 256)"]
    assert parsed.improvements == ["b.T.time_forward('tiled', 256)"]
    assert parsed.failures == ["b.T.time_forward('cudnn', 256)"]
    assert bench_regex(parsed.regressions) == r"^b\.T\.time_forward\('eager',\ 256\)$"
