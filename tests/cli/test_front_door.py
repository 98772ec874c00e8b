"""One front door: every command is an ``attnperf`` subcommand, and every subcommand ends bad input the
same way: one line naming the flag or file, exit 2, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from attnperf.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """One bad input per subcommand, and what its one line names."""
    a_file = tmp / "a-file"
    a_file.write_text("x")
    binary = tmp / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    noise = tmp / "noise.json"
    noise.write_text('{"machine": "m"}')
    work = ["--workdir", str(tmp / "w"), "--summary", str(tmp / "s.md")]
    return {
        "list": (["list", "--variants", "nosuch"], "unknown variants ['nosuch']"),
        "check": (["check", "--heads", "4", "--kv-heads", "3"], "--kv-heads 3: must divide --heads 4"),
        "sweep": (["sweep", "--seq-lens", "64,64"], "--seq-lens: 64 given twice"),
        "profile": (["profile", "--json", str(tmp / "no" / "p.json")], "the folder"),
        "analyze": (["analyze", "--json", str(tmp)], "is a folder; give a file name"),
        "plot": (["plot", str(binary)], "is not a text file (not UTF-8)"),
        "tune": (["tune", "--memory-limit-mib", "inf"], "expected a finite number > 0, got inf"),
        "model": (["model", "--hidden", "100"], "hidden must be a multiple of 256"),
        "regress": (["regress", "nosuchref", "HEAD", "--repo", str(ROOT), *work], "base 'nosuchref': not a commit"),
        "trials": (["trials", "--reuse", "--workdir", str(a_file)], f"--workdir {a_file} is a file; give a folder"),
        "calibrate": (["calibrate", "--runs", str(tmp / "missing.json"), "--out", str(tmp / "n.json")], "--runs"),
        "history": (["history", "record", "--commit", "HEAD", "--repo", str(ROOT), str(binary)], "run file"),
        "batch": (["batch", "--points", str(noise), "--out", str(tmp / "o.json")], "not a points file"),
        "cp": (["cp", "check", "--device", "cpu", "--heads", "4", "--kv-heads", "3"], "kv_heads"),
    }


def _names() -> set[str]:
    return {"list", "check", "sweep", "profile", "analyze", "plot", "tune", "model", "regress", "trials", "calibrate",
            "history", "batch", "cp"}  # fmt: skip


def test_every_subcommand_is_covered() -> None:
    """A new subcommand must get its bad input here too."""
    (subcommands,) = [a for a in build_parser()._actions if a.dest == "command"]
    assert set(subcommands.choices) == _names()


@pytest.mark.parametrize("command", sorted(_names()))
def test_bad_input_is_one_line_exit_2_and_nothing_written(command: str, tmp_path: Path, capsys) -> None:
    argv, message = bad_inputs(tmp_path)[command]
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 or lines[0].startswith("usage:"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing written for bad input"


@pytest.mark.parametrize("module", ["regress", "history", "batch", "cp"])
def test_the_old_python_m_entry_points_are_the_same_commands(module: str) -> None:
    proc = subprocess.run([sys.executable, "-m", f"attnperf.{module}", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: attnperf {module}")


def test_ctrl_c_is_exit_130_in_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    """Any subcommand interrupted ends with 130 and one line (a sweep says what it saved; others, like
    regress, leave no worktree behind: their context managers clean up on the way out)."""
    import attnperf.prcheck

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(attnperf.prcheck, "regress", interrupted)
    code = main(["regress", "HEAD", "HEAD", "--workdir", str(tmp_path / "w"), "--summary", str(tmp_path / "s.md")])
    assert code == 130
    assert capsys.readouterr().err.strip() == "attnperf regress: interrupted"
