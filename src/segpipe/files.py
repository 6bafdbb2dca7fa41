"""Atomic writes of files and folders: a crash never leaves a half-written output that a later
stage trusts."""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from segpipe.errors import SegpipeError

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600 files; give the result the usual permissions (0666 - umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_json(path: Path, data: Any) -> None:
    """Write pretty JSON atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def atomic_save_image(image: Any, path: Path) -> None:
    """Save a PIL image atomically, in the format its suffix names."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(Path(path).suffix.lower(), "PNG")
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


@contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty folder next to ``out_dir``; when the block succeeds it becomes ``out_dir``.

    On an error (or Ctrl-C) inside the block the staging folder is deleted and ``out_dir`` is
    left untouched. The swap moves the old folder aside before renaming the new one in, so
    ``out_dir`` holds either all old or all new files; the old ones are then deleted.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SegpipeError(f"{out_dir}: exists and is not a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _warn_leftovers(out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        staging, old = Path(tmp) / "new", Path(tmp) / "old"
        staging.mkdir()
        yield staging
        if out_dir.exists() or out_dir.is_symlink():
            os.replace(out_dir, old)
        try:
            os.replace(staging, out_dir)
        except BaseException:
            if old.exists() or old.is_symlink():
                os.replace(old, out_dir)
            raise


def staging_leftovers(out_dir: Path) -> list[Path]:
    """The staging folders of ``out_dir`` (see :func:`staged_dir`) that killed runs left
    behind: a crash or Ctrl-C removes its own."""
    found = sorted(Path(out_dir).parent.glob(f".{glob.escape(Path(out_dir).name)}.*"))
    return [p for p in found if p.is_dir() and not p.is_symlink()]


def _warn_leftovers(out_dir: Path) -> None:
    """Name the :func:`staging_leftovers` of ``out_dir``: they may hold gigabytes, and only the
    user knows no other run is using them."""
    for leftover in staging_leftovers(out_dir):
        size = sum(_disk_bytes(p) for p in leftover.rglob("*") if p.is_file())
        log.warning(
            "%s: a staging folder left by an earlier run of this stage that was killed "
            "(%.1f MiB); delete it if no other run is writing %s",
            leftover,
            size / 2**20,
            out_dir,
        )


def _disk_bytes(path: Path) -> int:
    """The disk space a file takes (a sparse file takes less than its size)."""
    st = path.stat()
    return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
"""The errors of a full disk or an exhausted quota: raised by writes only."""


def os_reason(error: OSError) -> str:
    """Why an OS call failed, in a few lower-case words (``no space left on device``)."""
    if error.strerror:
        return error.strerror.lower()
    if error.errno:
        return os.strerror(error.errno).lower()
    return str(error) or type(error).__name__


def write_error(path: Path, error: OSError, outcome: str, again: str = "run again") -> SegpipeError:
    """One line for a failed write of ``path``: why, ``outcome`` (what became of the earlier
    output) and the fix."""
    fix = "free some space" if error.errno in DISK_FULL else "check the path and its permissions"
    return SegpipeError(f"{path}: cannot write ({os_reason(error)}); {outcome}; {fix} and {again}")


def _file_in_the_way(folder: Path) -> Path | None:
    """``folder`` or its nearest existing ancestor, if that is something other than a folder."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def require_folder(folder: Path, option: str) -> None:
    """Fail if ``folder`` or its nearest existing ancestor is a file (nothing is created).

    Raises:
        SegpipeError: naming the file in the way and ``option`` (say ``--output``).
    """
    folder = Path(folder)
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        what = "an existing file" if blocker == folder else f"{blocker} is an existing file"
        raise SegpipeError(
            f"{folder}: {what}, where {option} needs a folder; choose another {option}"
        )


def path_relation(path: Path, other: Path) -> str | None:
    """How ``path`` lies to ``other`` once both are resolved: ``"is"`` (the same), ``"holds"``
    (``other`` is inside it), ``"lies inside"`` (it is inside ``other``), or None (apart)."""
    a, b = Path(path).resolve(), Path(other).resolve()
    if a == b:
        return "is"
    if b.is_relative_to(a):
        return "holds"
    if a.is_relative_to(b):
        return "lies inside"
    return None


def require_apart(output: Path, option: str, inputs: Mapping[str, Path | None]) -> None:
    """Refuse an output folder that is, holds or lies inside one of a stage's inputs, before
    any work: a stage replaces its output folder as a whole (or writes files into it), so the
    dataset, the annotation file or the model it reads would be deleted or overwritten. The
    one check of every stage that writes a folder.

    Args:
        output: the folder the stage writes (``--out``).
        option: how the user names it (``--out``, ``--predictions``).
        inputs: what the stage reads, by how the user names it (``data.path``, ``--splits``);
            None entries are skipped. A file input matters only when the output holds it.

    Raises:
        SegpipeError: naming the output, the input and the fix.
    """
    for name, path in inputs.items():
        if path is None:
            continue
        relation = path_relation(output, path)
        if relation is None or (relation == "lies inside" and not Path(path).is_dir()):
            continue
        what = {
            "is": f"is {name} itself",
            "holds": f"holds {name} ({Path(path).as_posix()})",
            "lies inside": f"lies inside {name} ({Path(path).as_posix()})",
        }[relation]
        raise SegpipeError(
            f"{option} {Path(output).as_posix()}: {what}, which this stage reads; writing "
            f"{option} there would replace or change it: choose a folder for {option} apart "
            "from the stage's inputs"
        )


def ensure_writable_dir(folder: Path, option: str) -> None:
    """Create ``folder`` (and its parents) if needed and check that files can be created in
    it, so a bad ``option`` (say ``--output``) fails before any work, not after.

    Raises:
        SegpipeError: ``folder`` or an ancestor is a file, or the folder cannot be written.
    """
    folder = Path(folder)
    require_folder(folder, option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise SegpipeError(
            f"{folder}: cannot write to this folder ({os_reason(e)}); choose another {option}"
        ) from None


def reserve_space(file: BinaryIO, offset: int, length: int) -> None:
    """Allocate the disk blocks of bytes ``offset..offset+length`` of an open file now.

    Writes through a memory map of a sparse file find out that the disk is full only when
    the kernel stores the page, and then kill the process with SIGBUS ("Bus error"), leaving
    its temporary files behind. With the blocks reserved first, a full disk is an
    ``OSError`` (ENOSPC) here, before any work.
    """
    if length <= 0:
        return
    try:
        os.posix_fallocate(file.fileno(), offset, length)
        return
    except AttributeError:  # no posix_fallocate (macOS): write the zeros ourselves
        pass
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    file.seek(offset)
    zeros = bytes(1 << 20)
    for start in range(0, length, len(zeros)):
        file.write(zeros[: min(len(zeros), length - start)])
    file.flush()


def link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link ``src`` at ``dest`` if it is read-only (nobody edits it in place: DVC's
    hard-linked files, a downloaded Kaggle version), else copy it. Another file system, or a
    file system without hard links, falls back to a copy."""
    if not src.stat().st_mode & 0o222:
        try:
            os.link(src, dest)
            return
        except OSError:
            pass
    shutil.copy2(src, dest)


def require_inside(path: str, folder: Path | None, key: str) -> Path:
    """``path`` (a parameter's value) as a Path, if it lies below ``folder``: the folder a
    stage depends on in dvc.yaml, so that a change of the file reruns the stage. No folder
    (a stage run by hand, a test) checks nothing.

    Raises:
        SegpipeError: naming ``key``, the path and the folder to move it into.
    """
    if folder is not None and not Path(path).resolve().is_relative_to(Path(folder).resolve()):
        raise SegpipeError(
            f"{key}: {path} is outside {Path(folder).as_posix()}/, the folder dvc.yaml makes "
            f"this stage depend on; move the file there (and `dvc add` it if it is large)"
        )
    return Path(path)
