"""Safe extraction of downloaded archives and discovery of image/mask folders in them."""

from __future__ import annotations

import logging
import os
import re
import stat
import tarfile
import zipfile
from pathlib import Path

from segpipe.data.images import scan_folder
from segpipe.errors import SegpipeError
from segpipe.progress import progress

logger = logging.getLogger(__name__)

IMAGE_DIR_NAMES = ("images", "image", "imgs", "img")
MASK_DIR_NAMES = ("masks", "mask", "labels", "annotations")
_SKIPPED_DIRS = {"__macosx"}


def _unsafe_reason(name: str, dest: Path) -> str | None:
    """Return why the member name would escape ``dest``, or None if it is safe."""
    if not name or "\x00" in name:
        return "empty or invalid name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "'..' path component"
    root = dest.resolve()
    if not (root / name).resolve().is_relative_to(root):
        return "path outside the destination"
    return None


def _reject(archive: Path, name: str, reason: str) -> SegpipeError:
    return SegpipeError(f"{archive}: unsafe member {name!r} ({reason}); nothing was extracted")


def _check_zip(archive: Path, zf: zipfile.ZipFile, dest: Path) -> None:
    for info in zf.infolist():
        reason = _unsafe_reason(info.filename, dest)
        if reason is None and stat.S_ISLNK(info.external_attr >> 16):
            reason = "symbolic link"
        if reason:
            raise _reject(archive, info.filename, reason)


def _check_tar(archive: Path, tf: tarfile.TarFile, dest: Path) -> None:
    for member in tf.getmembers():
        reason = _unsafe_reason(member.name, dest)
        if reason is None and member.issym():
            reason = "symbolic link"
        elif reason is None and member.islnk():
            reason = "hard link"
        elif reason is None and not (member.isfile() or member.isdir()):
            reason = "device or special file"
        if reason:
            raise _reject(archive, member.name, reason)


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a zip or tar archive into ``dest``, refusing members that could escape it.

    Every member is checked before anything is written: absolute paths, ``..``
    components, links and special files make the whole archive rejected.

    Args:
        archive: Path of a .zip, .tar, .tar.gz (or other compressed tar) file.
        dest: Folder to extract into; created if missing.

    Raises:
        SegpipeError: The archive is missing, unreadable, or has an unsafe member.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise SegpipeError(f"{archive}: archive not found")
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(archive, zf, dest)
                dest.mkdir(parents=True, exist_ok=True)
                members = progress(zf.infolist(), f"extract {archive.name}")
                zf.extractall(dest, members)  # noqa: S202 (all members validated above)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                _check_tar(archive, tf, dest)
                dest.mkdir(parents=True, exist_ok=True)
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                members = progress(tf.getmembers(), f"extract {archive.name}")
                tf.extractall(dest, members, **extra)  # noqa: S202 (all members validated above)
        else:
            raise SegpipeError(f"{archive}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise SegpipeError(f"{archive}: cannot extract archive ({type(e).__name__}: {e})") from e
    logger.info("Extracted %s into %s", archive, dest)


def _count_images(folder: Path) -> int:
    return len(scan_folder(folder).images)


def _pick(subdirs: dict[str, Path], names: tuple[str, ...]) -> Path | None:
    return next((subdirs[n] for n in names if n in subdirs), None)


def find_image_mask_dirs(root: Path) -> list[tuple[Path, Path]]:
    """Find the image folders and their mask folders in a dataset tree.

    A candidate is any folder (``root`` included, at any depth) holding both an image
    subfolder (images/image/imgs/img) and a mask subfolder (masks/mask/labels/annotations),
    names compared case-insensitively; those without images are dropped when others have
    some. ``__MACOSX`` folders are skipped. A public layout such as ``train/``, ``val/``,
    ``test/`` (each with images and masks) gives three candidates.

    Args:
        root: Root of the extracted tree.

    Returns:
        ``(images_dir, masks_dir)`` of every candidate, in sorted walk order.

    Raises:
        SegpipeError: ``root`` is not a folder, or no candidate is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise SegpipeError(f"{root}: dataset folder not found")
    found: list[tuple[int, Path, Path]] = []
    for parent, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d.lower() not in _SKIPPED_DIRS)
        subdirs = {d.lower(): Path(parent) / d for d in dirnames}
        images, masks = _pick(subdirs, IMAGE_DIR_NAMES), _pick(subdirs, MASK_DIR_NAMES)
        if images is None or masks is None:
            continue
        count = _count_images(images)
        logger.debug("Candidate %s / %s with %d images", images, masks, count)
        found.append((count, images, masks))
    if not found:
        raise SegpipeError(
            f"{root}: no folder with images/ and masks/ subfolders found (looked for "
            f"{'/'.join(IMAGE_DIR_NAMES)} next to {'/'.join(MASK_DIR_NAMES)}, any depth, "
            "case-insensitive)"
        )
    with_images = [(images, masks) for count, images, masks in found if count]
    return with_images or [(images, masks) for _, images, masks in found]
