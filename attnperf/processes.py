"""Git worktrees and fresh measuring processes: what the pull-request check, the trials, the
calibration and the history use to measure a commit with that commit's own code.

Each commit is checked out (detached) into a temporary git worktree and measured by its own batch
runner (``python -m attnperf.batch``, which every commit since the runner exists has) in this
Python, with the worktree first on ``PYTHONPATH``: one environment with torch and the GPU libraries
serves every commit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from attnperf.benchgrid import PointSpec
from attnperf.errors import Failure, UsageError
from attnperf.files import read_json_file, write_atomic, write_json
from attnperf.records import ResultFile, load_records

#: A process that runs longer than this is stopped; what it wrote so far counts.
PROCESS_TIMEOUT_S = 3600
#: Host allocations below this come from glibc's heap in every measured process (see ProcessRunner).
MALLOC_MMAP_THRESHOLD = 1 << 30

#: A folder for every compilation cache the measured libraries keep (``ATTNPERF_COMPILE_CACHE``):
#: one path that a workflow restores before the check and saves after main's history run.
COMPILE_CACHE_DIRS = {
    "TRITON_CACHE_DIR": "triton",  # Triton kernels and autotuning results (fla, flex's kernels)
    "TORCHINDUCTOR_CACHE_DIR": "inductor",  # inductor's FX graph and autotune caches (compiled flex)
    "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR": "cute",  # flash-attn-4's compiled CuTe kernels
}


def compile_cache_env(environ: dict[str, str]) -> dict[str, str]:
    """The variables that keep compilations on disk, so that a commit's later processes load kernels
    instead of building them (compilation is most of a commit's first process on a GPU). Inductor's
    FX graph cache is on by default; flash-attn-4's cache and Triton's autotuning results are
    opt-in. With ``ATTNPERF_COMPILE_CACHE`` set, every cache lives under that one folder.
    Variables the caller set already win."""
    wanted = {"FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED": "1", "TRITON_CACHE_AUTOTUNING": "1"}
    root = environ.get("ATTNPERF_COMPILE_CACHE")
    if root:
        wanted |= {name: os.path.join(root, sub) for name, sub in COMPILE_CACHE_DIRS.items()}
    return {name: environ.get(name) or value for name, value in wanted.items()}


class GitError(Failure):
    """git refused (a missing commit, a shallow clone): its own message, in one line."""


def git(args: Sequence[str], *, cwd: Path) -> str:
    """git's output; its own message on failure, in one line."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise GitError(f"git is needed: {exc}") from None
    if proc.returncode != 0:
        message = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[0]
        raise GitError(f"git {' '.join(args)}: {message}")
    return proc.stdout.strip()


def resolve(repo: Path, commit: str, flag: str) -> str:
    """The full hash of ``commit`` in ``repo``; a :class:`UsageError` naming ``flag`` if it is none."""
    try:
        return git(["rev-parse", "--verify", f"{commit}^{{commit}}"], cwd=repo)
    except GitError as exc:
        raise UsageError(f"{flag} {commit!r}: not a commit of {repo} ({exc})") from None


@contextmanager
def worktrees(repo: Path, commits: dict[str, str]) -> Iterator[dict[str, Path]]:
    """Each commit checked out (detached) into a temporary git worktree; removed afterwards, also
    when the caller is interrupted."""
    root = Path(tempfile.mkdtemp(prefix="attnperf-worktrees-"))
    trees: dict[str, Path] = {}
    try:
        for name, sha in commits.items():
            path = root / name
            git(["worktree", "add", "--detach", str(path), sha], cwd=repo)
            trees[name] = path
            if not (path / "attnperf" / "batch.py").exists():
                raise Failure(f"{name} commit {sha[:10]} has no attnperf/batch.py: it predates the batch runner")
        yield trees
    finally:
        for path in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=repo, capture_output=True,
                           check=False)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def write_points(path: Path, points: Sequence[PointSpec]) -> Path:
    """The points file a batch process reads (``--points``)."""
    return write_json(path, {"points": [p.as_dict() for p in points]})


def read_points(path: Path) -> list[PointSpec]:
    """The points a batch process measures (``--points``), validated."""
    data = read_json_file(path, "--points")
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise UsageError(f"--points {path}: not a points file (no 'points' list)")
    try:
        return [PointSpec.from_dict(item) for item in data["points"]]
    except (TypeError, AttributeError) as exc:
        raise UsageError(f"--points {path}: a malformed point ({exc})") from None


@dataclass
class ProcessRunner:
    """Starts batch-runner processes of one checkout and keeps their results files."""

    workdir: Path
    repeat: int = 10

    def run(
        self, tree: Path, points_file: Path, label: str, *, verdicts: Path, inject: str | None = None
    ) -> ResultFile:
        """One fresh process of ``tree``'s batch runner; its results, with ``label``, ``exit_code``,
        ``wall_s`` (and ``error``) in their meta. A process that died keeps what it wrote."""
        out = self.workdir / f"{label}.json"
        paths = [str(tree), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        # glibc adapts its mmap threshold as a process frees memory, so one process page-faults
        # every tensor above 128 KiB and the next reuses its heap (a 17× difference for eager
        # attention at 256 tokens between two CPU processes). A fixed threshold gives every
        # process the same allocator behaviour.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MALLOC_MMAP_THRESHOLD))
        env.update(compile_cache_env(env))
        cmd = [sys.executable, "-m", "attnperf.batch", "--points", str(points_file), "--out", str(out),
               "--verdicts", str(verdicts), "--label", label, "--repeat", str(self.repeat)]  # fmt: skip
        if inject:
            cmd += ["--inject", inject]
        out.unlink(missing_ok=True)  # never read an earlier run's output as this one's
        started = time.perf_counter()
        try:
            # stdout too: libraries print there (Triton's autotuning with TRITON_PRINT_AUTOTUNING=1)
            proc = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=PROCESS_TIMEOUT_S, check=False)  # fmt: skip
            code, log = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as exc:
            code, log = -1, f"stopped after {PROCESS_TIMEOUT_S} s: {exc.stdout or ''}"
        wall = time.perf_counter() - started
        write_atomic(self.workdir / f"{label}.log", log or "")
        output = load_records(out, "batch output") if out.exists() else ResultFile(out)
        output.path = out
        output.meta.update(label=label, exit_code=code, wall_s=wall)
        if code != 0:
            tail = [line for line in (log or "").strip().splitlines() if line.strip()][-1:] or [""]
            output.meta["error"] = f"exit {code}: {tail[0]}"
        output.save()
        return output
