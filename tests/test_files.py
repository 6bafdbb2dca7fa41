"""Atomic writes of files and folders."""

from __future__ import annotations

import errno
import os

import pytest

from segpipe.errors import SegpipeError
from segpipe.files import (
    atomic_write,
    ensure_writable_dir,
    reserve_space,
    staged_dir,
    write_error,
    write_json,
)


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


def test_failed_writes_and_unusable_folders_are_one_line(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device")
    assert str(write_error(tmp_path / "a.csv", full, "nothing was written")) == (
        f"{tmp_path / 'a.csv'}: cannot write (no space left on device); nothing was written; "
        "free some space and run again"
    )
    (tmp_path / "file").write_text("x")
    for folder, what in (
        ("file", "an existing file"),
        ("file/sub/deeper", f"{tmp_path / 'file'} is an existing file"),
    ):
        with pytest.raises(SegpipeError) as err:
            ensure_writable_dir(tmp_path / folder, "--output")
        assert str(err.value) == (
            f"{tmp_path / folder}: {what}, where --output needs a folder; choose another --output"
        )
    ensure_writable_dir(tmp_path / "new" / "out", "--output")
    assert (tmp_path / "new" / "out").is_dir() and list((tmp_path / "new" / "out").iterdir()) == []


def test_reserve_space_gives_the_file_its_bytes(tmp_path, monkeypatch):
    for fallocate in (os.posix_fallocate, None):  # None: write zeros (macOS, or unsupported)
        if fallocate is None:
            monkeypatch.delattr(os, "posix_fallocate")
        with open(tmp_path / "f.bin", "wb") as f:
            f.write(b"header")
            reserve_space(f, 6, 3 << 20)
        assert (tmp_path / "f.bin").read_bytes() == b"header" + bytes(3 << 20)
        assert os.stat(tmp_path / "f.bin").st_blocks * 512 >= 3 << 20  # not sparse


def test_staging_folders_left_by_a_killed_run_are_named(tmp_path, caplog):
    (tmp_path / ".cache.k1ll3d").mkdir()
    (tmp_path / ".cache.k1ll3d" / "train_images.npy").write_bytes(bytes(1 << 20))
    with staged_dir(tmp_path / "cache") as staging:
        (staging / "a.npy").write_bytes(b"new")
    assert (
        f"{tmp_path / '.cache.k1ll3d'}: a staging folder left by an earlier run of this stage "
        f"that was killed (1.0 MiB); delete it if no other run is writing {tmp_path / 'cache'}"
    ) in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache.k1ll3d", "cache"]
