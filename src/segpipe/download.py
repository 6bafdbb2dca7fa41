"""The download stage: bring a dataset into the normalised layout later stages read.

Whatever the source, the output is ``<out>/images/<stem>.<ext>`` and ``<out>/masks/<stem>.<ext>``.
The new dataset is assembled in a temporary folder and swapped in only when complete.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from segpipe.archive import find_image_mask_dirs
from segpipe.config import DataConfig
from segpipe.errors import SegpipeError
from segpipe.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)


def run(cfg: DataConfig, seed: int, out_dir: Path) -> int:
    """Produce the raw dataset for ``cfg.source`` in ``out_dir``. Returns the number of images."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        staging = Path(tmp) / "dataset"
        if cfg.source == "synthetic":
            from segpipe.synthetic import generate

            generate(staging, cfg.synthetic, seed)
        elif cfg.source == "folder":
            copy_pairs(Path(cfg.path), staging, what="data.path")
        else:
            from segpipe.kaggle_source import download_kaggle

            root = download_kaggle(cfg.kaggle_dataset, Path(tmp) / "kaggle")
            copy_pairs(root, staging, what=f"Kaggle dataset {cfg.kaggle_dataset}", move=True)
        count = len(list((staging / "images").iterdir()))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    log.info("%s source: %d images in %s", cfg.source, count, out_dir)
    return count


def copy_pairs(root: Path, dest: Path, what: str, move: bool = False) -> None:
    """Copy the image files of ``root``'s images and masks folders into ``dest``.

    ``root`` either holds ``images/`` and ``masks/`` or contains them somewhere below (as the
    Kaggle archive does).
    """
    if not root.is_dir():
        raise SegpipeError(f"{what}: folder {root} not found (it must hold images/ and masks/)")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        images, masks = root / "images", root / "masks"
    else:
        images, masks = find_image_mask_dirs(root)
    for src, name in ((images, "images"), (masks, "masks")):
        target = dest / name
        target.mkdir(parents=True)
        files = [
            p
            for p in sorted(src.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        ]
        if not files:
            raise SegpipeError(
                f"{what}: {src} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
            )
        for path in files:
            (shutil.move if move else shutil.copy2)(path, target / path.name)
