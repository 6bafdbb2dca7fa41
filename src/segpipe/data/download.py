"""The download stage: bring a dataset into the normalised layout later stages read.

Whatever the source and format, the output is ``<out>/images/<stem>.<ext>`` and
``<out>/masks/<stem>.<ext>``; annotation exports (``data.format`` coco or voc) are converted
into it, and what was left out of them is recorded in ``<out>/source.json`` (see
:mod:`segpipe.data.source_report`). The Kaggle source also writes ``<out>/kaggle_version.json``,
naming the version it holds. The new dataset is assembled in a staging folder and swapped in
only when complete.

Read-only source files (DVC's hard-linked files, a downloaded Kaggle version) are hard-linked
into the output rather than copied: the dataset is stored once, however many folders show it.
Writable files are copied, so editing one can never change the output or DVC's cache.
"""

from __future__ import annotations

import filecmp
import logging
import tempfile
from pathlib import Path

from segpipe.config import DataConfig
from segpipe.data.archive import find_image_mask_dirs
from segpipe.data.images import IMAGE_EXTENSIONS, scan_folder
from segpipe.errors import SegpipeError
from segpipe.files import link_or_copy, require_apart, staged_dir, write_json
from segpipe.progress import progress

log = logging.getLogger(__name__)


KAGGLE_RECORD = "kaggle_version.json"
"""In the download stage's output, Kaggle source: the dataset and the version it holds."""


def run(cfg: DataConfig, seed: int, out_dir: Path, downloads: Path | None = None) -> int:
    """Produce the raw dataset for ``cfg.source`` in ``out_dir``. Returns the number of images.

    ``out_dir`` is replaced as a whole once the new dataset is complete; a failed run leaves it
    as it was. ``downloads`` keeps each Kaggle version downloaded, so that a rerun with the
    same spec downloads nothing (None: a temporary folder, deleted after).
    """
    out_dir = Path(out_dir)
    folder = cfg.source == "folder" and cfg.path.strip()
    inputs = {
        "data.path": Path(cfg.path) if folder else None,
        "--downloads": downloads if cfg.source == "kaggle" else None,
    }
    require_apart(out_dir, "--out", inputs)
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
            warn_if_untracked(Path(cfg.path))
        elif downloads is None:
            with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".kaggle.") as tmp:
                _from_kaggle(cfg, Path(tmp), staging)
        else:
            _from_kaggle(cfg, Path(downloads), staging)
        count = len(scan_folder(staging / "images").images)
    log.info("%s source: %d images in %s", cfg.source, count, out_dir)
    return count


def bring(root: Path, dest: Path, cfg: DataConfig, what: str) -> None:
    """Bring the dataset folder ``root``, laid out as ``cfg.format`` says, into ``dest``."""
    if cfg.format == "masks":
        copy_pairs(root, dest, what)
        return
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "not found"
        raise SegpipeError(f"{what}: {root} {problem} (it must hold the {cfg.format} export)")
    if cfg.format == "coco":
        from segpipe.data import coco

        report = coco.convert(root, dest, cfg, what)
    else:
        from segpipe.data import voc

        report = voc.convert(root, dest, cfg)
    report.write(dest)


def _from_kaggle(cfg: DataConfig, downloads: Path, staging: Path) -> None:
    """The Kaggle dataset in ``staging``, laid out as ``cfg.format`` says, from the downloads
    folder (downloading the version only if it is not there), and the version it is, recorded
    in ``kaggle_version.json``."""
    from segpipe.data.kaggle_source import fetch_kaggle

    dataset = cfg.kaggle_dataset
    fetched = fetch_kaggle(dataset, downloads)
    spec = fetched.spec
    bring(fetched.root, staging, cfg, what=f"Kaggle dataset {spec}")
    how = "downloaded" if fetched.downloaded else f"already downloaded in {fetched.root}"
    latest = (
        "" if str(spec) == dataset else f"; the latest: pin it with data.kaggle_dataset: {spec}"
    )
    log.info("Kaggle dataset %s: version %d (%s%s)", spec.ref, spec.version, how, latest)
    record = {"source": "kaggle", "dataset": spec.ref, "version": spec.version, "spec": dataset}
    write_json(staging / KAGGLE_RECORD, {**record, "pinned": str(spec)})


def warn_if_untracked(folder: Path) -> None:
    """Warn when DVC does not track the folder source's data (run in a DVC repository): a
    clone's `dvc pull`, `dvc exp run --temp` and `dvc queue` would not have it."""
    if not Path(".dvc").is_dir():
        return
    here = Path.cwd().resolve()
    absolute = folder.resolve()
    if not absolute.is_relative_to(here):
        log.warning(
            "data.path %s is outside the repository, so DVC cannot track it: another clone, "
            "`dvc exp run --temp` and `dvc queue` do not have it; move it into the repository "
            "and `dvc add` it (docs/data.md: Train on your own folder)",
            folder,
        )
        return
    relative = absolute.relative_to(here)
    around = [here / relative, *(here / p for p in relative.parents if p != Path("."))]
    in_dvc_file = any(p.with_name(p.name + ".dvc").is_file() for p in around)  # it or above
    if in_dvc_file or any(absolute.glob("*.dvc")):  # or its folders (data/external/images)
        return
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    log.warning(
        "%s is not tracked by DVC: another clone's `dvc pull`, `dvc exp run --temp` and `dvc "
        "queue` do not have it; track it with `dvc add %s` and commit the .dvc files",
        folder,
        " ".join(p.as_posix() for p in subfolders) or folder.as_posix(),
    )


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
        " (this run is in DVC's temporary copy of the repository, which holds only what git "
        f"and DVC track: track the data with `dvc add {' '.join(copies)}` and commit the .dvc "
        f"files, or copy it in: `dvc exp run --temp {flags}`, or `--queue` with the same -C "
        "options)"
    )


def copy_pairs(root: Path, dest: Path, what: str) -> None:
    """Copy (or link, see :func:`link_or_copy`) the image files of ``root``'s images and
    masks folders into ``dest``, keeping their names and subfolders; other files are named
    in a warning.

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
            _copy_images(src, dest / name / prefix, what)


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


def _copy_images(src: Path, target: Path, what: str) -> None:
    scan = scan_folder(src, confine_links=True)
    if not scan.images:
        raise SegpipeError(f"{what}: {src} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    scan.require_unique_stems()
    scan.warn_others(f"{what}: {src}")
    target.mkdir(parents=True, exist_ok=True)
    for path in progress(scan.images.values(), f"download {src.name}"):
        copy = target / path.relative_to(src)
        copy.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(path, copy)
