"""Atomic writes of files and folders."""

from __future__ import annotations

import os

import pytest

from segpipe.files import atomic_write, staged_dir, write_json


def test_atomic_write_replaces_whole_files_with_normal_permissions(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    write_json(target, {"dice": 0.5})
    assert target.read_text() == '{\n  "dice": 0.5\n}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == '{\n  "dice": 0.5\n}\n'
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_staged_dir_swaps_in_whole_folders(tmp_path):
    out = tmp_path / "splits"
    with staged_dir(out) as staging:
        (staging / "a.csv").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(out) as staging:
        (staging / "a.csv").write_text("new")
        raise RuntimeError("failed halfway")
    assert (out / "a.csv").read_text() == "old"
    with staged_dir(out) as staging:
        (staging / "b.csv").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["splits"]
