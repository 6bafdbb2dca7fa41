"""The download stage: bring a dataset into the normalised layout later stages read.

Whatever the source, the output is ``<out>/images/<stem>.<ext>`` and ``<out>/masks/<stem>.<ext>``.
The new dataset is assembled in a staging folder and swapped in only when complete.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from segpipe.archive import find_image_mask_dirs
from segpipe.config import DataConfig
from segpipe.errors import SegpipeError
from segpipe.files import staged_dir
from segpipe.images import IMAGE_EXTENSIONS, scan_folder

log = logging.getLogger(__name__)


def run(cfg: DataConfig, seed: int, out_dir: Path) -> int:
    """Produce the raw dataset for ``cfg.source`` in ``out_dir``. Returns the number of images.

    ``out_dir`` is replaced as a whole once the new dataset is complete; a failed run leaves it
    as it was.
    """
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as staging:
        if cfg.source == "synthetic":
            from segpipe.synthetic import generate

            generate(staging, cfg.synthetic, seed, cfg.num_classes)
        elif cfg.source == "folder":
            if not cfg.path.strip():
                raise SegpipeError("data.path: empty; set it to a folder with images/ and masks/")
            copy_pairs(Path(cfg.path), staging, what="data.path")
        else:
            from segpipe.kaggle_source import download_kaggle

            with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".kaggle.") as tmp:
                root = download_kaggle(cfg.kaggle_dataset, Path(tmp))
                copy_pairs(root, staging, what=f"Kaggle dataset {cfg.kaggle_dataset}", move=True)
        count = len(scan_folder(staging / "images").images)
    log.info("%s source: %d images in %s", cfg.source, count, out_dir)
    return count


def copy_pairs(root: Path, dest: Path, what: str, move: bool = False) -> None:
    """Copy the image files of ``root``'s images and masks folders into ``dest``, keeping
    their names and subfolders; other files are named in a warning.

    ``root`` either holds ``images/`` and ``masks/`` or contains them somewhere below (as the
    Kaggle archive does).
    """
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "not found"
        raise SegpipeError(f"{what}: {root} {problem} (it must hold images/ and masks/)")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        images, masks = root / "images", root / "masks"
    else:
        try:
            images, masks = find_image_mask_dirs(root)
        except SegpipeError as e:
            raise SegpipeError(f"{what}: {e}") from None
    for src, name in ((images, "images"), (masks, "masks")):
        target = dest / name
        target.mkdir(parents=True)
        scan = scan_folder(src)
        if not scan.images:
            raise SegpipeError(
                f"{what}: {src} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
            )
        scan.require_unique_stems()
        scan.warn_others(f"{what}: {src}")
        for path in scan.images.values():
            copy = target / path.relative_to(src)
            copy.parent.mkdir(parents=True, exist_ok=True)
            (shutil.move if move else shutil.copy2)(path, copy)
