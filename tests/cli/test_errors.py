"""Every expected failure of the command: one line naming the parameter or file, the documented
exit code (2 usage, 1 failure, 130 interrupted), no traceback and no partial file (CPU only)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from attnperf.analysis import min_bytes
from attnperf.backends import get_backend
from attnperf.case import Case
from attnperf.cli import main
from attnperf.errors import Failure, exclusive
from attnperf.mechanisms import get_mechanism

SMALL = ["--heads", "2", "--head-dim", "16", "--repeat", "3"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``attnperf ARGS`` in this process: (exit code, stderr)."""
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


USAGE = [
    # (arguments, what the one line says)
    (["sweep", "--seq-lens", "64,0"], "argument --seq-lens: expected an integer >= 1, got 0"),
    (["sweep", "--seq-lens", ""], "argument --seq-lens: give at least one value"),
    (["sweep", "--seq-lens", "64", "--repeat", "0"], "argument --repeat: expected an integer >= 1, got 0"),
    (["sweep", "--backends", "eager,turbo"], "unknown backends ['turbo']"),
    (["analyze", "--device", "cuda"], "argument --device: cuda: no GPU visible to torch here (allowed: cpu)"),
    (["analyze", "--device", "tpu"], "argument --device: expected cpu or cuda[:N], got 'tpu'"),
    (["tune", "--memory-limit-mib", "-5"], "argument --memory-limit-mib: expected a finite number > 0, got -5"),
    (["tune", "--memory-limit-mib", "10", "--p95-ms", "0"], "argument --p95-ms: expected a finite number > 0, got 0"),
    (["check", "--kv-heads", "0"], "argument --kv-heads: expected an integer >= 1, got 0"),
    (["plot", "--kinds", "pie"], "--kinds: unknown ['pie']"),
    (["plot", "--kinds", "scaling"], "--kinds scaling need result files"),
    (["plot", "--n", "4"], "argument --n: expected an integer from 8 to 512, got 4"),
    (["plot", "--n", "100000"], "argument --n: expected an integer from 8 to 512, got 100000"),
    (["plot", "--kinds", "masks", "--tokens", "the cat sat"], "--tokens: 3 given; the pictures take 8 to 512"),
    (["plot", "--kinds", "masks", "--stride", "0"], "argument --stride: expected an integer >= 1, got 0"),
    # a combination Case refuses, built from flags: gqa has heads // 4 = 2 kv heads, and 9 % 2 != 0
    (["analyze", "--table", "--variants", "gqa", "--heads", "9"], "gqa at 1024 tokens: heads (9) must be divisible"),
    (["analyze", "--table", "--seq-lens", "64,64", "--measure"], "argument --seq-lens: 64 given twice"),
    (["analyze", "--table", "--seq-lens", "64"], "--seq-lens: --table fits exponents"),
    (["model", "--hidden", "100"], "hidden must be a multiple of 256"),
    (["analyze", "--table", "--measure-ceilings"], "--measure-ceilings: --table draws no roofline"),
]


@pytest.mark.parametrize(("args", "message"), USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(args, capsys)
    assert code == 2
    assert message in err
    assert list(tmp_path.iterdir()) == [], "nothing written"


def records_in(path: Path) -> list[dict]:
    """A results file's records as JSON objects, with the point's identity (its spec) on top."""
    return [{**r["spec"], **r} for r in json.loads(path.read_text())["records"]]


def test_a_value_error_from_inside_the_library_keeps_its_traceback(monkeypatch) -> None:
    """Only UsageError is bad input (exit 2); a ValueError a bug raises is not passed off as the
    user's mistake: it leaves main, so Python prints its traceback and exits 1."""
    import attnperf.sweep

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a bug, not the user's input")

    monkeypatch.setattr(attnperf.sweep, "run_sweep", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["sweep", "--variants", "causal", "--backends", "eager", "--seq-lens", "32", *SMALL])


def test_output_paths_are_checked_before_the_first_point(capsys, tmp_path) -> None:
    missing = tmp_path / "no-such-folder" / "r.json"
    code, err = run_cli(["sweep", "--variants", "causal", "--backends", "eager", "--seq-lens", "64", *SMALL,
                         "--json", str(missing)], capsys)  # fmt: skip
    assert code == 2
    assert f"--json {missing}: the folder {missing.parent} does not exist" in err
    assert not missing.parent.exists(), "a missing folder is not created silently"
    code, err = run_cli(["analyze", "--variants", "causal", "--backends", "eager", "--json", str(tmp_path)], capsys)
    assert code == 2
    assert "is a folder; give a file name" in err


def test_a_point_too_large_for_memory_is_refused_and_the_sweep_goes_on(capsys, tmp_path) -> None:
    """200k tokens of eager causal attention would need terabytes: refused by the analyzer's
    prediction before it runs, with both numbers; the next point runs and the file is written."""
    out = tmp_path / "r.json"
    code, _ = run_cli(["sweep", "--variants", "causal", "--backends", "eager", "--seq-lens", "200000,64", *SMALL,
                       "--json", str(out)], capsys)  # fmt: skip
    assert code == 0
    records = {r["seq_len"]: r for r in records_in(out)}
    refused = records[200000]
    assert refused["status"] == "refused"
    assert refused["needed_bytes"] > refused["available_bytes"]
    case = Case(**refused["case"])
    predicted = get_backend("eager").predicted_peak_bytes(get_mechanism("full"), case)
    assert refused["predicted_peak_bytes"] == predicted, "the analyzer's figure"
    assert refused["needed_bytes"] == min_bytes(case) + refused["predicted_peak_bytes"]
    assert "GiB free on cpu" in records[200000]["reason"]
    assert records[64]["status"] == "ok"


def test_a_case_that_does_not_fit_is_recorded_and_the_sweep_goes_on(capsys, tmp_path) -> None:
    out = tmp_path / "r.json"
    code, _ = run_cli(["sweep", "--variants", "topk", "--backends", "eager", "--seq-lens", "16,64", "--top-k", "32",
                       *SMALL, "--json", str(out)], capsys)  # fmt: skip
    assert code == 0
    records = {r["seq_len"]: r for r in records_in(out)}
    assert records[16]["status"] == "unsupported"
    assert records[16]["reason"].startswith("case does not fit topk: top_k")
    assert records[64]["status"] == "ok"
    before = out.read_text()
    for heads, kv_heads in (("4", "3"), ("8", "16")):  # no point could be built: refused before the first
        code, err = run_cli(["sweep", "--variants", "causal", "--backends", "eager", "--seq-lens", "16", "--heads",
                             heads, "--kv-heads", kv_heads, "--json", str(out), "--force"], capsys)  # fmt: skip
        assert code == 2
        assert f"--kv-heads {kv_heads}: must divide --heads {heads} (allowed: 1, 2, 4" in err
    assert out.read_text() == before, "nothing written"


def test_flag_values_that_cannot_run_are_refused_before_the_first_point(capsys, tmp_path) -> None:
    """A value given twice, a limit that is not finite, an option a table would ignore: one line each."""
    for argv, message in (
        (["sweep", "--seq-lens", "64,64"], "argument --seq-lens: 64 given twice; give each value once"),
        (["sweep", "--backends", "eager,eager"], "argument --backends: eager given twice"),
        (["tune", "--memory-limit-mib", "inf"], "argument --memory-limit-mib: expected a finite number > 0, got inf"),
        (["tune", "--memory-limit-mib", "nan"], "expected a finite number > 0, got nan"),
        (["analyze", "--table", "--window", "64"], "--window: analyze --table uses each variant's own options"),
        (["sweep", "--json", str(tmp_path / "x"), "--csv", str(tmp_path / "x")], "--csv and --json name the same file"),
    ):
        code, err = run_cli([*argv, *SMALL], capsys)
        assert code == 2, argv
        assert message in err.strip().splitlines()[-1], (argv, err)  # after argparse's usage lines, if any


def test_an_existing_results_file_is_refused_resumed_or_overwritten(capsys, tmp_path) -> None:
    out = tmp_path / "r.json"
    argv = ["sweep", "--variants", "causal", "--backends", "eager,tiled", "--seq-lens", "32,64", *SMALL,
            "--json", str(out)]  # fmt: skip
    assert run_cli(argv, capsys)[0] == 0
    first = json.loads(out.read_text())
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert "exists; --resume continues that run, --force overwrites it" in err
    assert json.loads(out.read_text()) == first, "the earlier run is untouched"
    # An interrupted run: only its first two points were saved. --resume measures the other two.
    out.write_text(json.dumps(first | {"records": first["records"][:2]}))
    assert run_cli([*argv, "--resume"], capsys)[0] == 0
    resumed = records_in(out)
    assert len(resumed) == 4
    assert resumed[0]["samples_s"] == first["records"][0]["samples_s"], "kept, not measured again"
    assert {(r["backend"], r["seq_len"]) for r in resumed} == {(b, n) for b in ("eager", "tiled") for n in (32, 64)}
    code, err = run_cli([*argv, "--resume", "--heads", "4"], capsys)
    assert code == 2
    assert "with another shape or options (and 3 more points); --force starts over" in err
    code, err = run_cli([*argv, "--resume", "--kv-heads", "3"], capsys)  # flags that cannot build the case
    assert code == 2
    assert "--kv-heads 3: must divide --heads 2" in err
    assert run_cli([*argv, "--force"], capsys)[0] == 0


def test_a_backward_sweep_times_checked_steps_and_is_never_resumed_as_a_forward_one(capsys, tmp_path) -> None:
    """``--backward`` times forward+backward steps (gradients held to the float64 reference first),
    with their TFLOP/s; a backend without a backward says so and the sweep goes on; one file never
    holds both modes."""
    out = tmp_path / "r.json"
    argv = ["sweep", "--variants", "causal,topk", "--backends", "eager,tiled,flex", "--seq-lens", "64", "--top-k", "4",
            *SMALL, "--json", str(out)]  # fmt: skip
    assert main([*argv, "--backward"]) == 0
    assert "times are forward+backward steps (--backward)" in capsys.readouterr().out
    records = {(r["variant"], r["backend"]): r for r in records_in(out)}
    assert {r["mode"] for r in records.values()} == {"forward+backward"}
    for point in (("causal", "eager"), ("causal", "tiled"), ("topk", "eager"), ("topk", "tiled")):
        assert records[point]["status"] == "ok", records[point]
        assert records[point]["useful_tflops"] > 0, point
    assert records[("causal", "flex")]["status"] == "unsupported"
    assert "inference-only (no backward)" in records[("causal", "flex")]["reason"]
    code, err = run_cli([*argv, "--resume"], capsys)
    assert code == 2
    assert "causal × eager at 64 timed as forward+backward, this run as forward; --force starts over" in err


def test_resume_keeps_the_points_outside_the_new_grid(capsys, tmp_path) -> None:
    """Resumed with other lengths, the earlier run's points are kept (they were measured in the
    run the user asked to continue), the new ones are added, none is measured twice."""
    out = tmp_path / "r.json"
    argv = ["sweep", "--variants", "causal", "--backends", "eager", *SMALL, "--json", str(out)]
    assert run_cli([*argv, "--seq-lens", "32,64"], capsys)[0] == 0
    first = {r["seq_len"]: r for r in records_in(out)}
    assert run_cli([*argv, "--seq-lens", "64,96", "--resume"], capsys)[0] == 0
    resumed = {r["seq_len"]: r for r in records_in(out)}
    assert sorted(resumed) == [32, 64, 96]
    for n in (32, 64):
        assert resumed[n]["samples_s"] == first[n]["samples_s"], f"{n}: kept, not measured again"
    code, err = run_cli([*argv, "--seq-lens", "128", "--resume", "--head-dim", "8"], capsys)
    assert code == 2, "points outside the grid are held to its shape too"
    assert "causal × eager at 32 with another shape or options (and 2 more points)" in err


def test_resume_refuses_unbuildable_points_of_another_shape(capsys, tmp_path) -> None:
    """A point whose case does not fit records the shape it was asked for, so that a resumed run
    with other heads, head dim, dtype or batch does not keep it as its own."""
    out = tmp_path / "r.json"
    argv = ["sweep", "--variants", "topk", "--backends", "eager", "--seq-lens", "16", "--top-k", "32", *SMALL,
            "--json", str(out)]  # fmt: skip
    assert run_cli(argv, capsys)[0] == 0
    (record,) = records_in(out)
    assert (record["status"], record["case_id"]) == ("unsupported", "")
    assert record["case"] == {"batch": 1, "heads": 2, "head_dim": 16, "dtype": "float32", "device": "cpu",
                              "top_k": 32}  # fmt: skip
    assert run_cli([*argv, "--resume"], capsys)[0] == 0
    for change in (["--heads", "4"], ["--head-dim", "8"], ["--dtype", "float64"], ["--top-k", "20"]):
        code, err = run_cli([*argv, "--resume", *change], capsys)
        assert code == 2, change
        assert "topk × eager at 16 with another shape or options; --force starts over" in err
    code, err = run_cli([*argv, "--resume", "--batches", "2"], capsys)  # another batch: another point, kept
    assert code == 0
    assert [r["batch"] for r in records_in(out)] == [1, 2]
    legacy = json.loads(out.read_text())
    legacy["records"][0]["case"] = {"top_k": 32}  # as written before the shape was stored
    out.write_text(json.dumps(legacy))
    code, err = run_cli([*argv, "--resume"], capsys)
    assert code == 2
    assert "without its shape (an older attnperf's record)" in err


def test_two_sweeps_cannot_write_one_file(capsys, tmp_path) -> None:
    out = tmp_path / "r.json"
    with exclusive(out):
        code, err = run_cli(["sweep", "--variants", "causal", "--backends", "eager", "--seq-lens", "32", *SMALL,
                             "--json", str(out), "--force"], capsys)  # fmt: skip
    assert code == 1
    assert f"another run is writing {out}" in err
    assert not out.exists()


def test_a_lock_file_removed_while_it_is_being_locked_is_not_a_lock(monkeypatch, tmp_path) -> None:
    """Run A ends and removes its lock file after run B opened it; run C locks a new file at the
    same path. B's lock on the removed file must not count: B sees C's lock and fails."""
    out = tmp_path / "r.json"
    lock = tmp_path / "r.json.lock"
    real_flock, third_run = fcntl.flock, []

    def flock_after_a_and_c(fd: object, operation: int) -> None:
        if not third_run:  # between B's open and B's flock: A removes the file, C locks a new one
            lock.unlink()
            third_run.append(lock.open("w"))
            real_flock(third_run[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_and_c)
    with pytest.raises(Failure, match=f"another run is writing {out}"), exclusive(out):
        pass
    third_run[0].close()
    with exclusive(out):  # C is done: the path's lock is free again
        assert lock.exists()
    assert not lock.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ('{"machine": {}, "records": [{"variant": "causal"', "is not valid JSON (truncated?)"),
        ('{"rows": []}', "is not attnperf results (no 'records' list"),
        ('{"records": [{"variant": "causal"}]}', "records[0]: record lacks backend"),
    ],
    ids=["empty", "truncated", "wrong shape", "bad record"],
)
def test_plot_names_the_file_and_the_problem(content: str, message: str, capsys, tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    out = tmp_path / "plots"
    code, err = run_cli(["plot", str(bad), "--out", str(out)], capsys)
    assert code == 2
    assert f"results file {bad}" in err
    assert message in err
    assert not out.exists(), "no picture is drawn before the input is known to be good"


def test_plot_refuses_results_without_a_successful_point(capsys, tmp_path) -> None:
    results = tmp_path / "r.json"
    record = {"variant": "linear", "mechanism": "linear", "backend": "sdpa-math", "seq_len": 64, "batch": 1,
              "case_id": "x", "case": {}, "status": "unsupported", "reason": "no"}  # fmt: skip
    results.write_text(json.dumps({"machine": {}, "records": [record]}))
    code, err = run_cli(["plot", str(results), "--out", str(tmp_path / "plots")], capsys)
    assert code == 1
    assert "no point ran successfully, nothing to plot" in err


def test_plot_chooses_the_ceilings_before_drawing_anything(capsys, tmp_path) -> None:
    """Results from a GPU without a datasheet cannot have a roofline on this machine: refused
    before the first picture is drawn, so no partial set of pictures is left behind."""
    results = tmp_path / "r.json"
    record = {"variant": "causal", "mechanism": "full", "backend": "eager", "seq_len": 64, "batch": 1,
              "case_id": "B1_H2_S64_D16_f32_causal", "case": {"dtype": "float32"}, "status": "ok",
              "median_s": 1e-3, "useful_tflops": 0.1, "tokens_per_s": 64e3}  # fmt: skip
    results.write_text(json.dumps({"machine": {"gpu": "Imaginary GPU 9000"}, "records": [record]}))
    out = tmp_path / "plots"
    code, err = run_cli(["plot", str(results), "--out", str(out)], capsys)
    assert code == 2
    assert "no datasheet ceilings for 'Imaginary GPU 9000'" in err
    assert not out.exists(), "no picture is drawn before the ceilings are known"


def test_tune_says_which_limit_nothing_met(capsys) -> None:
    code = main(["tune", "--variant", "causal", "--backends", "eager", "--seq-len", "128", *SMALL,
                 "--memory-limit-mib", "0.25", "--max-batch", "4"])  # fmt: skip
    assert code == 1
    out = capsys.readouterr().out
    assert "batch 1 does not fit: peak" in out
    assert "> limit 0.25 MiB" in out


def test_regress_names_a_commit_it_cannot_find_with_gits_own_message(tmp_path) -> None:
    """A commit that is not there is bad input (exit 2), named with git's own words, through the
    ``python -m attnperf.regress`` shim as through ``attnperf regress``."""
    for args, cwd, message in (
        (["nosuchref", "HEAD"], Path(__file__).parents[2], "fatal: Needed a single revision"),
        (["--repo", str(tmp_path), "main", "HEAD"], tmp_path, "not a git repository"),
    ):
        paths = ["--workdir", str(tmp_path / "w"), "--summary", str(tmp_path / "s.md")]
        proc = subprocess.run([sys.executable, "-m", "attnperf.regress", *args, *paths], cwd=cwd, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
        assert proc.returncode == 2
        assert "attnperf regress: error: base" in proc.stderr
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_ctrl_c_saves_what_was_measured_and_exits_130(tmp_path) -> None:
    out = tmp_path / "r.json"
    lengths = "64,96,128,160,192,224,256,288"
    # The command gets Ctrl-C's handler as under a terminal: a test run started in the background of
    # a shell (`nox ... &`) inherits SIGINT ignored, and Python then keeps ignoring it.
    as_at_a_terminal = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                        "runpy.run_module('attnperf', run_name='__main__')")  # fmt: skip
    argv = [sys.executable, "-c", as_at_a_terminal, "sweep", "--variants", "causal", "--backends", "eager,tiled",
            "--seq-lens", lengths, "--batches", "1,2,3", *SMALL, "--json", str(out)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert out.exists(), "the first point was saved"
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    saved = len(records_in(out))
    assert 1 <= saved < 48
    assert f"interrupted; {saved} points saved to {out}" in stderr
    assert "Traceback" not in stderr
    with contextlib.suppress(FileNotFoundError):
        assert not [p for p in os.listdir(tmp_path) if p.endswith((".tmp", ".lock"))]


@pytest.mark.parametrize("outputs", [["--csv"], ["--json", "--csv"], []], ids=["csv", "json+csv", "none"])
def test_ctrl_c_names_every_file_it_wrote(outputs: list[str], monkeypatch, capsys, tmp_path) -> None:
    """The line after Ctrl-C says where the finished points are: each of --json and --csv given
    (both are rewritten after every point), or that nothing was written."""
    import attnperf.sweep
    from attnperf.records import Record

    record = Record.from_dict({"variant": "causal", "mechanism": "full", "backend": "eager", "seq_len": 32,
                               "batch": 1, "case_id": "x", "case": {}, "status": "unsupported"})  # fmt: skip

    def one_point_then_ctrl_c(grid: object, *, on_record: Any, **kwargs: object) -> None:
        on_record([record])
        raise KeyboardInterrupt

    monkeypatch.setattr(attnperf.sweep, "run_sweep", one_point_then_ctrl_c)
    paths = {"--json": tmp_path / "r.json", "--csv": tmp_path / "r.csv"}
    argv = [arg for flag in outputs for arg in (flag, str(paths[flag]))]
    code, err = run_cli(["sweep", "--variants", "causal", "--backends", "eager", "--seq-lens", "32", *SMALL, *argv],
                        capsys)  # fmt: skip
    assert code == 130
    if outputs:
        assert f"interrupted; 1 points saved to {' and '.join(str(paths[f]) for f in outputs)}" in err
        assert all(paths[flag].exists() for flag in outputs)
    else:
        assert "interrupted; 1 points measured (no --json or --csv: nothing written)" in err


def test_an_allocation_that_fails_anyway_is_recorded_as_oom(monkeypatch, capsys, tmp_path) -> None:
    """Without the refusal (as when the prediction is too low), the CPU allocator's failure is an
    ``oom`` record with its message, and the next point still runs."""
    import attnperf.point

    monkeypatch.setattr(attnperf.point, "memory_refusal", lambda spec, case: None)
    out = tmp_path / "r.json"
    code, _ = run_cli(["sweep", "--variants", "causal", "--backends", "eager", "--seq-lens", "200000,64", *SMALL,
                       "--json", str(out)], capsys)  # fmt: skip
    assert code == 0
    records = {r["seq_len"]: r for r in records_in(out)}
    assert records[200000]["status"] == "oom"
    assert "allocate" in records[200000]["reason"]
    assert records[64]["status"] == "ok"


def test_a_backend_that_breaks_is_recorded_as_failed_and_the_sweep_goes_on(monkeypatch, capsys, tmp_path) -> None:
    """A kernel that fails in an unforeseen way (flash-attn-4's CuTe compiler raised a TypeError
    from a score_mod on the H200 and took the whole sweep down with it) is a ``failed`` record
    with the error's type and first line; the other backends are still measured, and the exit
    code says something failed."""
    from attnperf.backends import get_backend

    tiled = get_backend("tiled")

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("profile of input tuples doesn't match: ((1,), 2)")

    monkeypatch.setattr(tiled, "prepare", broken)
    out = tmp_path / "r.json"
    code, _ = run_cli(["sweep", "--variants", "causal", "--backends", "tiled,eager", "--seq-lens", "32", *SMALL,
                       "--json", str(out)], capsys)  # fmt: skip
    assert code == 1
    records = {r["backend"]: r for r in records_in(out)}
    assert records["tiled"]["status"] == "failed"
    assert records["tiled"]["reason"] == "TypeError: profile of input tuples doesn't match: ((1,), 2)"
    assert records["eager"]["status"] == "ok"


def test_a_cuda_error_that_poisons_the_context_stops_the_sweep(monkeypatch) -> None:
    """An illegal memory access leaves every later CUDA call failing with it: recording it as one
    ``failed`` point after another would hide the cause, so it is raised."""
    from attnperf.backends import get_backend
    from attnperf.benchgrid import FORWARD, PointSpec
    from attnperf.point import measure_point

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(get_backend("tiled"), "prepare", crash)
    spec = PointSpec(backend="tiled", variant="causal", seq_len=32, head_dim=16, dtype="float32", mode=FORWARD,
                     device="cpu", heads=2)  # fmt: skip
    with pytest.raises(RuntimeError, match="illegal memory access"):
        measure_point(spec, repeat=3)


def test_environment_values_and_foreign_files_are_named(monkeypatch, capsys, tmp_path) -> None:
    """An ATTNPERF_* variable that is not what it holds names the variable; a results file written by
    another machine (its machine a tag, not this one's description) is refused for --resume, in one line."""
    monkeypatch.setenv("ATTNPERF_SEQ_LENS", "abc")
    code, err = run_cli(["trials", "--reuse", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "t.json")],
                        capsys)  # fmt: skip
    assert code == 2
    assert "ATTNPERF_SEQ_LENS='abc': expected comma-separated int values" in err
    monkeypatch.delenv("ATTNPERF_SEQ_LENS")
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"machine": "oops", "records": []}))
    code, err = run_cli(["sweep", "--variants", "causal", "--backends", "eager", "--seq-lens", "32", *SMALL,
                         "--json", str(out), "--resume"], capsys)  # fmt: skip
    assert code == 2
    assert "was written on another machine or software stack (oops)" in err


def test_every_checked_output_is_locked_until_the_command_ends(tmp_path) -> None:
    """check_output locks what it checks: a second run checking the same output (another analyze, tune,
    trials or calibrate) fails at once, and the lock is gone when the command ends."""
    from attnperf.errors import check_output, release_outputs

    out = tmp_path / "table.json"
    try:
        check_output(out, "--json")
        with pytest.raises(Failure, match=f"another run is writing {out}"):
            check_output(out, "--json")
    finally:
        release_outputs()
    assert not (tmp_path / "table.json.lock").exists()
    check_output(out, "--json")  # free again
    release_outputs()
