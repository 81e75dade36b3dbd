"""The benchmarks' one atomic write: whole files, or the old file untouched."""

from __future__ import annotations

import json

import pytest

from benchmarks import atomic


def test_write_json_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    atomic.write_json(path, {"a": 1}, indent=2)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    atomic.write_text(tmp_path / "runs.csv", "x,y\r\n1,2\r\n")
    assert (tmp_path / "runs.csv").read_bytes() == b"x,y\r\n1,2\r\n"  # written verbatim
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.csv", "summary.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "run.json"
    atomic.write_json(path, {"old": True})
    with pytest.raises(TypeError):
        atomic.write_json(path, {"bad": object()})  # fails before anything is written
    with pytest.raises(UnicodeEncodeError):
        atomic.write_text(path, "\udcff")  # fails while writing the temporary file
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
