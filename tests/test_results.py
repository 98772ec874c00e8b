"""Result files: atomic replacement, no debris after a failed write, ordinary permissions; sweep
records read back as written, older files included."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from attnperf.errors import Failure
from attnperf.files import read_json, write_atomic, write_csv, write_json
from attnperf.records import Record, Status, load_records, save_records


def test_json_round_trip_replaces_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.json"
    write_json(path, {"a": 1})
    write_json(path, {"b": [1.5, "x"]})
    assert read_json(path) == {"b": [1.5, "x"]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_json(tmp_path / "r.json", {"kept": True})

    class Unserializable:
        def __str__(self) -> str:
            raise RuntimeError("crash while serializing")

    with pytest.raises(RuntimeError, match="crash while serializing"):
        write_json(path, {"bad": Unserializable()})

    def crash(*args: object) -> None:
        raise OSError("disk full at the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(Failure, match=r"^cannot write .*r\.json: disk full at the rename"):  # names the file
        write_json(path, {"new": True})
    assert read_json(path) == {"kept": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_written_files_follow_the_umask_not_mkstemps_private_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "r.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_csv_takes_the_union_of_the_columns_in_first_seen_order(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", [{"a": 1, "b": 2}, {"b": 3, "c": 4}])
    assert path.read_text().splitlines() == ["a,b,c", "1,2,", ",3,4"]


REFUSED = {"variant": "causal", "mechanism": "full", "backend": "eager", "seq_len": 200000, "batch": 1,
           "case_id": "B1_H2_S200000_D16_f32_causal", "case": {}, "status": "refused", "reason": "too big",
           "available_bytes": 10}  # fmt: skip


def test_refused_records_keep_needed_and_predicted_peak_apart(tmp_path: Path) -> None:
    """``predicted_peak_bytes`` is the backend's predicted peak in every record; a refused one's
    inputs + output + peak is ``needed_bytes``. Files written when a refused record stored that sum
    under ``predicted_peak_bytes`` are read with it where it belongs."""
    path = tmp_path / "r.json"
    record = Record.from_dict(REFUSED | {"needed_bytes": 30, "predicted_peak_bytes": 20})
    save_records(path, [record], machine={})
    (back,) = load_records(path).records
    assert (back.status, back.needed_bytes, back.predicted_peak_bytes) == (Status.REFUSED, 30, 20)
    older = Record.from_dict(REFUSED | {"predicted_peak_bytes": 30})
    assert (older.needed_bytes, older.predicted_peak_bytes) == (30, None)


def test_a_results_file_is_validated_field_by_field(tmp_path: Path) -> None:
    """One reader for every results file: NaN, Infinity, negative or mistyped figures, a malformed
    spec, a null case and a binary file are named with the file, the record and the field."""
    from attnperf.benchgrid import FORWARD, PointSpec
    from attnperf.errors import UsageError

    spec = PointSpec("eager", "causal", 64, 16, "float32", FORWARD, device="cpu", heads=2)
    good = Record(spec, Status.OK, median_s=1e-3, samples_s=(1e-3,), tokens_per_s=1.0).to_dict()
    cases = {
        "nan": (json.dumps({"records": [good]}).replace('"median_s": 0.001', '"median_s": NaN'),
                "NaN is not a number JSON allows"),
        "inf": (json.dumps({"records": [good]}).replace('"median_s": 0.001', '"median_s": Infinity'),
                "Infinity is not a number JSON allows"),
        "negative": (json.dumps({"records": [good | {"median_s": -1.0}]}), "records[0]: median_s must be finite"),
        "string": (json.dumps({"records": [good | {"peak_bytes": "lots"}]}), "peak_bytes must be an integer"),
        "samples": (json.dumps({"records": [good | {"samples_s": [1.0, None]}]}), "samples_s must be a number"),
        "spec": (json.dumps({"records": [good | {"spec": {"backend": 3}}]}), "records[0]: spec"),
        "machine": (json.dumps({"machine": 5, "records": [good]}), "'machine' must be an object or a machine tag"),
        "ok without time": (json.dumps({"records": [{k: v for k, v in good.items() if k != "median_s"}]}),
                            "an ok record needs median_s or replay_median_s"),
    }  # fmt: skip
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        with pytest.raises(UsageError, match=re.escape(message)):
            load_records(path)
    nulls = tmp_path / "nulls.json"
    nulls.write_text(json.dumps({"records": [good | {"case": None, "reason": None}]}))
    (record,) = load_records(nulls).records
    assert record.case == {}, "null is a field left out, not a value of another type"
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    with pytest.raises(UsageError, match="is not a text file"):
        load_records(binary)


def test_schema_1_files_stay_readable() -> None:
    """A sweep's and a batch process's records as schema 1 wrote them read as today's."""
    from attnperf.records import parse_results

    sweep = {"machine": {"torch": "2.13"}, "records": [
        {"variant": "causal", "mechanism": "full", "backend": "eager", "seq_len": 64, "batch": 1, "case_id": "x",
         "case": {"heads": 2, "head_dim": 16, "dtype": "float32", "device": "cpu"}, "status": "ok", "median_s": 0.5,
         "samples_s": [0.5], "cuda_graph": True}]}  # fmt: skip
    (r,) = parse_results(sweep, None).records
    assert (r.variant, r.backend, r.spec.heads, r.replay_median_s, r.median_s) == ("causal", "eager", 2, 0.5, None)
    spec = {"backend": "eager", "variant": "causal", "seq_len": 64, "head_dim": 16, "dtype": "float32",
            "mode": "forward", "device": "cpu", "heads": 2}  # fmt: skip
    batch = {"records": [{"key": "k", "spec": spec, "status": "ok", "median": 0.2, "samples": [0.2], "number": 3,
                          "cuda_graph": False, "tflops": 1.5},
                         {"key": "k+5%", "base_key": "k", "spec": spec, "status": "ok", "median": 0.21,
                          "samples": [0.21], "number": 3, "injected_pct": 5.0, "target_s": 0.01}]}  # fmt: skip
    read = parse_results(batch, None)
    (plain,) = read.records
    (slowed,) = read.injected
    assert (plain.median_s, plain.number, plain.useful_tflops) == (0.2, 3, 1.5)
    assert slowed.injection == {"kind": "spin", "pct": 5.0, "target_s": 0.01}
