"""Result files: atomic replacement, no debris after a failed write, ordinary permissions; sweep
records read back as written, older files included."""

from __future__ import annotations

import os
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
