"""Atomic writes of files and folders: a crash never leaves a half-written output that a later
stage trusts."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from segpipe.errors import SegpipeError


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
