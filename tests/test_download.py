"""The download stage's folder source: stored once where it is safe, and a warning when DVC
does not track the data."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import pytest

from segpipe.data import download

from .helpers import tiny_params
from .realdata import write_folder_dataset


@pytest.fixture
def in_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DVC repository's root (a `.dvc` folder) as the current folder, as DVC runs stages."""
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def folder_config(path: str):
    return dataclasses.replace(tiny_params().data, source="folder", path=path)


def test_read_only_files_are_linked_writable_ones_copied(in_repo: Path) -> None:
    """DVC's hard-linked files are read-only: linking them stores the dataset once. A
    writable file is copied, so editing it in place never changes data/imported or the cache."""
    data = write_folder_dataset(in_repo / "data" / "external", ["0001", "0002"])
    for mask in (data / "masks").iterdir():
        mask.chmod(0o444)
    assert download.run(folder_config("data/external"), 0, in_repo / "raw") == 2
    for stem in ("0001", "0002"):
        mask, raw_mask = data / "masks" / f"{stem}.png", in_repo / "raw" / "masks" / f"{stem}.png"
        image, raw_image = (
            data / "images" / f"{stem}.jpg",
            in_repo / "raw" / "images" / f"{stem}.jpg",
        )
        assert os.path.samefile(mask, raw_mask), "read-only: one file"
        assert not os.path.samefile(image, raw_image), "writable: a copy"
        assert raw_image.read_bytes() == image.read_bytes()


def test_untracked_folder_is_named_with_the_command_that_tracks_it(
    in_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    write_folder_dataset(in_repo / "data" / "external", ["0001", "0002"])
    download.run(folder_config("data/external"), 0, in_repo / "raw")
    assert (
        "data/external is not tracked by DVC: another clone's `dvc pull`, `dvc exp run --temp` "
        "and `dvc queue` do not have it; track it with `dvc add data/external/images "
        "data/external/masks` and commit the .dvc files"
    ) in caplog.text

    caplog.clear()
    for name in ("images", "masks"):  # what `dvc add data/external/images ...` writes
        (in_repo / "data" / "external" / f"{name}.dvc").write_text("outs: []\n")
    download.run(folder_config("data/external"), 0, in_repo / "raw")
    assert "not tracked by DVC" not in caplog.text

    write_folder_dataset(in_repo / "data" / "polyps", ["0001", "0002"])
    (in_repo / "data" / "polyps.dvc").write_text("outs: []\n")  # `dvc add data/polyps`
    download.run(folder_config("data/polyps"), 0, in_repo / "raw")
    assert "not tracked by DVC" not in caplog.text


def test_folder_outside_the_repository_is_named(
    in_repo: Path, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    outside = write_folder_dataset(tmp_path_factory.mktemp("elsewhere") / "masks", ["0001", "0002"])
    download.run(folder_config(str(outside)), 0, in_repo / "raw")
    assert f"data.path {outside} is outside the repository, so DVC cannot track it" in caplog.text
