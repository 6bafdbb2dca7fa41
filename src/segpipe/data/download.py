"""The download stage: bring a dataset into the normalised layout later stages read.

Whatever the source and format, the output is ``<out>/images/<stem>.<ext>`` and
``<out>/masks/<stem>.<ext>``; annotation exports (``data.format`` coco or voc) are converted
into it, and what was left out of them is recorded in ``<out>/source.json`` (see
:mod:`segpipe.data.source_report`). The new dataset is assembled in a staging folder and
swapped in only when complete.
"""

from __future__ import annotations

import filecmp
import logging
import shutil
import tempfile
from pathlib import Path

from segpipe.config import DataConfig
from segpipe.data.archive import find_image_mask_dirs
from segpipe.data.images import IMAGE_EXTENSIONS, scan_folder
from segpipe.errors import SegpipeError
from segpipe.files import staged_dir

log = logging.getLogger(__name__)


def run(cfg: DataConfig, seed: int, out_dir: Path) -> int:
    """Produce the raw dataset for ``cfg.source`` in ``out_dir``. Returns the number of images.

    ``out_dir`` is replaced as a whole once the new dataset is complete; a failed run leaves it
    as it was.
    """
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as staging:
        if cfg.source == "synthetic":
            from segpipe.data.synthetic import generate

            generate(staging, cfg.synthetic, seed, cfg.num_classes)
        elif cfg.source == "folder":
            if not cfg.path.strip():
                raise SegpipeError(
                    "data.path: empty; set it to the dataset folder (for data.format masks, a "
                    "folder with images/ and masks/)"
                )
            try:
                bring(Path(cfg.path), staging, cfg, what="data.path")
            except SegpipeError as e:
                raise SegpipeError(f"{e}{_temp_copy_hint(cfg.path)}") from None
        else:
            from segpipe.data.kaggle_source import download_kaggle

            with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".kaggle.") as tmp:
                root = download_kaggle(cfg.kaggle_dataset, Path(tmp))
                what = f"Kaggle dataset {cfg.kaggle_dataset}"
                bring(root, staging, cfg, what=what, move=True)
        count = len(scan_folder(staging / "images").images)
    log.info("%s source: %d images in %s", cfg.source, count, out_dir)
    return count


def bring(root: Path, dest: Path, cfg: DataConfig, what: str, *, move: bool = False) -> None:
    """Bring the dataset folder ``root``, laid out as ``cfg.format`` says, into ``dest``."""
    if cfg.format == "masks":
        copy_pairs(root, dest, what, move=move)
        return
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "not found"
        raise SegpipeError(f"{what}: {root} {problem} (it must hold the {cfg.format} export)")
    if cfg.format == "coco":
        from segpipe.data import coco

        report = coco.convert(root, dest, cfg)
    else:
        from segpipe.data import voc

        report = voc.convert(root, dest, cfg)
    report.write(dest)


def _temp_copy_hint(path: str) -> str:
    """Why ``data.path`` may be missing: `dvc exp run --temp` and `dvc queue` run in a copy of
    the repository under ``.dvc/tmp/exps`` that holds only what git tracks, and the data folder
    is git-ignored. Names the ``--copy-paths`` (``-C``) that bring it in."""
    here = Path.cwd().resolve().as_posix() + "/"
    if "/.dvc/tmp/exps/" not in here:
        return ""
    original = Path(here.split("/.dvc/tmp/exps/")[0]) / path
    if Path(path).exists():  # partly tracked (data/external/README.md): copy what is missing
        missing = [p.name for p in sorted(original.glob("*")) if not (Path(path) / p.name).exists()]
        copies = [f"{path}/{name}" for name in missing] or [f"{path}/images", f"{path}/masks"]
    else:
        copies = [path]
    flags = " ".join(f"-C {copy}" for copy in copies)
    return (
        " (this run is in DVC's temporary copy of the repository, which holds only files git "
        f"tracks: track the data with `dvc add {path}` and commit the .dvc file, or copy it "
        f"in: `dvc exp run --temp {flags}`, or `--queue` with the same -C options)"
    )


def copy_pairs(root: Path, dest: Path, what: str, *, move: bool = False) -> None:
    """Copy the image files of ``root``'s images and masks folders into ``dest``, keeping
    their names and subfolders; other files are named in a warning.

    ``root`` holds ``images/`` and ``masks/``, or contains them somewhere below (as the Kaggle
    archive does), or holds several such pairs (``train/``, ``val/``, ``test/``): then all are
    used, each under its folder's path (``train/0001``), and the split stage splits them anew.
    """
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "not found"
        raise SegpipeError(f"{what}: {root} {problem} (it must hold images/ and masks/)")
    try:
        pairs = _distinct(find_image_mask_dirs(root))
    except SegpipeError as e:
        raise SegpipeError(f"{what}: {e}") from None
    if len(pairs) > 1:
        log.warning(
            "%s: %d image/mask folder pairs found, all are used (stems are prefixed by their "
            "folder) and split anew: %s",
            what,
            len(pairs),
            ", ".join(images.parent.relative_to(root).as_posix() for images, _ in pairs),
        )
    for images, masks in pairs:
        prefix = images.parent.relative_to(root) if len(pairs) > 1 else Path()
        for src, name in ((images, "images"), (masks, "masks")):
            _copy_images(src, dest / name / prefix, what, move=move)


def _distinct(pairs: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """The pairs whose images are not byte-identical copies of an earlier pair's (same
    names, same bytes): a copy of a folder pair elsewhere in the tree would put the same
    photos in train and test. Subsets numbered alike (``val/0001``, ``test/0001``) are kept."""
    kept: list[tuple[Path, Path]] = []
    for images, masks in pairs:
        files = scan_folder(images).images
        copy_of = next((other for other, _ in kept if _same_files(files, other)), None)
        if copy_of is not None:
            log.warning("skipped %s: a copy of %s (the same files)", images, copy_of)
            continue
        kept.append((images, masks))
    return kept


def _same_files(files: dict[str, Path], folder: Path) -> bool:
    other = scan_folder(folder).images
    if other.keys() != files.keys():
        return False
    pairs = [(files[stem], other[stem]) for stem in files]
    return all(a.stat().st_size == b.stat().st_size for a, b in pairs) and all(
        filecmp.cmp(a, b, shallow=False) for a, b in pairs
    )


def _copy_images(src: Path, target: Path, what: str, *, move: bool) -> None:
    scan = scan_folder(src, confine_links=True)
    if not scan.images:
        raise SegpipeError(f"{what}: {src} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    scan.require_unique_stems()
    scan.warn_others(f"{what}: {src}")
    target.mkdir(parents=True, exist_ok=True)
    for path in scan.images.values():
        copy = target / path.relative_to(src)
        copy.parent.mkdir(parents=True, exist_ok=True)
        (shutil.move if move else shutil.copy2)(path, copy)
