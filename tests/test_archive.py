"""Tests for segpipe.data.archive: safe extraction and image/mask folder discovery."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from segpipe.data.archive import find_image_mask_dirs, safe_extract
from segpipe.data.images import IMAGE_EXTENSIONS
from segpipe.errors import SegpipeError

KAGGLE_NESTED = "supervisely_person_clean_2667_img/supervisely_person_clean_2667_img"


def _make_zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def _zip_symlink(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix, so that external_attr carries the file mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def _tar_link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_image_extensions_constant() -> None:
    assert IMAGE_EXTENSIONS == (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def test_safe_extract_normal_zip(tmp_path: Path) -> None:
    archive = _make_zip(
        tmp_path / "data.zip",
        [("df.csv", b"images,masks\n"), (f"{KAGGLE_NESTED}/images/a.png", b"img")],
    )
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "df.csv").read_bytes() == b"images,masks\n"
    assert (tmp_path / "out" / KAGGLE_NESTED / "images" / "a.png").read_bytes() == b"img"


def test_safe_extract_normal_tar_gz(tmp_path: Path) -> None:
    archive = _make_tar(tmp_path / "data.tar.gz", [("d/images/a.png", b"img")])
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "d" / "images" / "a.png").read_bytes() == b"img"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (("/tmp/evil.txt", b"x"), "absolute path"),
        (("../evil.txt", b"x"), "'..'"),
        (("ok/../../evil.txt", b"x"), "'..'"),
        (("..\\evil.txt", b"x"), "'..'"),
        (("C:/evil.txt", b"x"), "absolute path"),
        ((_zip_symlink("link", "/etc/passwd"), b"/etc/passwd"), "symbolic link"),
    ],
    ids=["absolute", "dotdot", "nested-dotdot", "backslash-dotdot", "drive", "symlink"],
)
def test_safe_extract_rejects_unsafe_zip(tmp_path: Path, bad: tuple, reason: str) -> None:
    archive = _make_zip(tmp_path / "evil.zip", [("good/first.txt", b"ok"), bad])
    dest = tmp_path / "out"
    with pytest.raises(SegpipeError) as err:
        safe_extract(archive, dest)
    message = str(err.value)
    name = bad[0].filename if isinstance(bad[0], zipfile.ZipInfo) else bad[0]
    assert str(archive) in message and repr(name) in message and reason in message
    assert "\n" not in message
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip"]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (("/tmp/evil.txt", b"x"), "absolute path"),
        (("../evil.txt", b"x"), "'..'"),
        (_tar_link("link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (_tar_link("hard", tarfile.LNKTYPE, "good/first.txt"), "hard link"),
        (_tar_link("dev", tarfile.CHRTYPE, ""), "device or special file"),
    ],
    ids=["absolute", "dotdot", "symlink", "hardlink", "device"],
)
def test_safe_extract_rejects_unsafe_tar(tmp_path: Path, bad: object, reason: str) -> None:
    archive = _make_tar(tmp_path / "evil.tar.gz", [("good/first.txt", b"ok"), bad])
    dest = tmp_path / "out"
    with pytest.raises(SegpipeError) as err:
        safe_extract(archive, dest)
    name = bad.name if isinstance(bad, tarfile.TarInfo) else bad[0]
    assert str(archive) in str(err.value) and repr(name) in str(err.value)
    assert reason in str(err.value)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz"]


def test_safe_extract_not_an_archive(tmp_path: Path) -> None:
    bogus = tmp_path / "data.zip"
    bogus.write_bytes(b"<html>not a zip</html>")
    with pytest.raises(SegpipeError, match="not a zip or tar archive"):
        safe_extract(bogus, tmp_path / "out")
    with pytest.raises(SegpipeError, match="archive not found"):
        safe_extract(tmp_path / "missing.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_find_dirs_kaggle_nested_layout(tmp_path: Path) -> None:
    root = tmp_path / "supervisely-filtered-segmentation-person-dataset"
    nested = root / KAGGLE_NESTED
    _touch(nested / "images", "ds1_a.png", "ds1_b.png", "ds6_c.png")
    _touch(nested / "masks", "ds1_a.png", "ds1_b.png", "ds6_c.png")
    _touch(root, "df.csv")
    # macOS resource forks must not win even though they hold more "images".
    _touch(root / "__MACOSX" / KAGGLE_NESTED / "images", *[f"._{i}.png" for i in range(9)])
    _touch(root / "__MACOSX" / KAGGLE_NESTED / "masks", "._0.png")
    assert find_image_mask_dirs(root) == [(nested / "images", nested / "masks")]


def test_find_dirs_flat_case_insensitive(tmp_path: Path) -> None:
    _touch(tmp_path / "Images", "a.JPG", "b.jpeg")
    _touch(tmp_path / "MASKS", "a.png", "b.png")
    assert find_image_mask_dirs(tmp_path) == [(tmp_path / "Images", tmp_path / "MASKS")]


def test_find_dirs_name_variants_all_pairs(tmp_path: Path) -> None:
    """Every folder pair is found (no longer only the one with the most images: the others
    were dropped in silence); pairs without images only when no pair has any."""
    _touch(tmp_path / "small" / "img", "a.bmp")
    _touch(tmp_path / "small" / "labels", "a.png")
    _touch(tmp_path / "big" / "imgs", "a.tif", "b.tiff", "notes.txt")
    _touch(tmp_path / "big" / "annotations", "a.png", "b.png")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir(parents=True)
    assert find_image_mask_dirs(tmp_path) == [
        (tmp_path / "big" / "imgs", tmp_path / "big" / "annotations"),
        (tmp_path / "small" / "img", tmp_path / "small" / "labels"),
    ]
    assert find_image_mask_dirs(tmp_path / "empty") == [
        (tmp_path / "empty" / "images", tmp_path / "empty" / "masks")
    ]


def test_find_dirs_none_found(tmp_path: Path) -> None:
    _touch(tmp_path / "images", "a.png")  # no masks folder next to it
    _touch(tmp_path / "other" / "masks", "a.png")
    with pytest.raises(SegpipeError) as err:
        find_image_mask_dirs(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path}: no folder with images/ and masks/ subfolders found")
    assert "looked for" in message and "\n" not in message


def test_find_dirs_missing_root(tmp_path: Path) -> None:
    with pytest.raises(SegpipeError, match="not found"):
        find_image_mask_dirs(tmp_path / "nope")
