"""Pascal VOC trees (``JPEGImages/`` + ``SegmentationClass/``) as the normalised dataset.

Each image with a mask is copied into ``images/``, its mask into ``masks/``, as they are: VOC
masks are palette PNGs whose pixel values are class indices in the order of ``data.classes``
(VOC's own 21 classes, :data:`VOC_CLASSES`, or yours), with 255 on object borders and unlabelled
pixels (``data.ignore_index: 255``); the split stage reads them as every mask is read. Images
without a mask (VOC's detection-only images) are counted, not used.

With ``data.voc.image_sets``, the lists in ``ImageSets/Segmentation`` (``train.txt``,
``val.txt``, and ``test.txt`` if its images have masks) are recorded in ``source.json`` and the
split stage splits by them (see :func:`segpipe.data.split.assign_listed`).
"""

from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path

from segpipe.config import DataConfig
from segpipe.data.images import FolderScan, scan_folder, short_list
from segpipe.data.source_report import SourceReport
from segpipe.errors import SegpipeError
from segpipe.files import link_or_copy
from segpipe.progress import progress

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
"""Pascal VOC's classes in the order of its mask indices: its ``data.classes``."""
IMAGES, MASKS = "JPEGImages", "SegmentationClass"
IMAGE_SETS = Path("ImageSets") / "Segmentation"
LISTS = ("train", "val", "test")


def find_voc_root(root: Path) -> Path:
    """The folder at or below ``root`` that holds ``JPEGImages/`` and ``SegmentationClass/``."""
    if not root.is_dir():
        raise SegpipeError(f"{root}: {'is not a folder' if root.exists() else 'not found'}")
    found = []
    for parent, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        if IMAGES in dirnames and MASKS in dirnames:
            found.append(Path(parent))
    if not found:
        raise SegpipeError(
            f"{root}: no folder with {IMAGES}/ and {MASKS}/ found (a Pascal VOC tree, such as "
            "VOCdevkit/VOC2012)"
        )
    if len(found) > 1:
        names = short_list([p.relative_to(root).as_posix() or "." for p in found])
        raise SegpipeError(f"{root}: {len(found)} VOC trees found ({names}); set data.path to one")
    return found[0]


def read_image_sets(voc: Path, pairs: set[str]) -> dict[str, list[str]]:
    """The stems ``ImageSets/Segmentation/{train,val,test}.txt`` list (first word of each line).
    ``test.txt`` is used only if any of its images has a mask (VOC's test masks are not public).

    Raises:
        SegpipeError: ``train.txt`` or ``val.txt`` is missing, or two lists share an image.
    """
    lists: dict[str, list[str]] = {}
    for name in LISTS:
        path = voc / IMAGE_SETS / f"{name}.txt"
        if not path.is_file():
            if name == "test":
                continue
            raise SegpipeError(
                f"data.voc.image_sets: {path} not found; set data.voc.image_sets: false to split "
                "the images at random"
            )
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        # names in the composed Unicode form, as stems are (see images.stem_of)
        named = (unicodedata.normalize("NFC", line.split()[0]) for line in lines if line.strip())
        stems = list(dict.fromkeys(named))
        if name != "test" or any(stem in pairs for stem in stems):
            lists[name] = stems
    for i, first in enumerate(lists):
        for second in list(lists)[i + 1 :]:
            both = sorted(set(lists[first]) & set(lists[second]))
            if both:
                raise SegpipeError(
                    f"{voc / IMAGE_SETS}: {first}.txt and {second}.txt both list "
                    f"{short_list(both, 5)}; an image in two subsets would be trained and tested on"
                )
    return lists


def _pairs(voc: Path, report: SourceReport) -> tuple[FolderScan, FolderScan, list[str]]:
    images = scan_folder(voc / IMAGES, confine_links=True)
    masks = scan_folder(voc / MASKS, confine_links=True)
    for scan, what in ((images, IMAGES), (masks, MASKS)):
        scan.require_unique_stems()
        scan.warn_others(f"{voc / what}")
    for stem in sorted(masks.images.keys() - images.images.keys()):
        report.problem(
            f"file {MASKS}/{masks.images[stem].name}",
            "no_image",
            f"no image {IMAGES}/{stem}.<ext> for this mask: not used",
        )
    unmasked = len(images.images.keys() - masks.images.keys())
    report.counts["images_without_mask"] = unmasked
    return images, masks, sorted(images.images.keys() & masks.images.keys())


def _listed(voc: Path, pairs: list[str], report: SourceReport) -> list[str]:
    """The pairs the image sets list; ``report.subsets`` gets the lists (pairs only)."""
    lists = read_image_sets(voc, set(pairs))
    have = set(pairs)
    for name, stems in lists.items():
        for stem in stems:
            if stem not in have:
                report.problem(
                    f"{IMAGE_SETS.as_posix()}/{name}.txt: {stem!r}",
                    "listed_without_pair",
                    f"listed, but no {IMAGES} image with a {MASKS} mask has this name: left out",
                )
    listed = {stem for stems in lists.values() for stem in stems}
    for stem in pairs:
        if stem not in listed:
            report.problem(
                f"image {stem!r}",
                "not_in_image_sets",
                f"has a mask but no list of {IMAGE_SETS.as_posix()} names it: not used",
            )
    report.subsets = {name: [s for s in stems if s in have] for name, stems in lists.items()}
    return [stem for stem in pairs if stem in listed]


def convert(root: Path, dest: Path, data: DataConfig) -> SourceReport:
    """Copy the VOC tree at or below ``root`` into ``dest/images`` and ``dest/masks``.

    Returns:
        What was copied, every problem and (with ``data.voc.image_sets``) the subsets.
    """
    voc = find_voc_root(root)
    report = SourceReport("voc", voc.as_posix())
    images, masks, pairs = _pairs(voc, report)
    if data.voc.image_sets:
        pairs = _listed(voc, pairs, report)
    if not pairs:
        raise SegpipeError(f"{voc}: no image of {IMAGES}/ has a mask in {MASKS}/ to use")
    for stem in progress(pairs, "copy VOC", unit="pair"):
        for scan, sub in ((images, "images"), (masks, "masks")):
            source = scan.images[stem]
            target = dest / sub / source.relative_to(scan.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(source, target)
    report.counts["pairs"] = len(pairs)
    log.info(
        "%s: %d image/mask pairs copied; %d images have no mask (detection-only), not used",
        voc,
        len(pairs),
        report.counts["images_without_mask"],
    )
    return report
