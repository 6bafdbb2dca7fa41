"""The predict command: masks for new images of any size, from a trained checkpoint."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from segpipe.colours import blend, palette
from segpipe.errors import SegpipeError
from segpipe.files import atomic_save_image
from segpipe.images import IMAGE_EXTENSIONS, read_image, scan_folder, stem_of
from segpipe.inference import Predictor

log = logging.getLogger(__name__)


def list_inputs(path: Path, out_dir: Path | None = None) -> tuple[dict[str, Path], int]:
    """The inputs by stem: one image file, or the image files below a folder (subfolders
    included, ``out_dir`` left out; see :func:`~segpipe.images.scan_folder`), and the number
    of files skipped because an earlier file has their stem. Those and the files that are not
    images are named in warnings."""
    if path.is_file():
        return {path.stem: path}, 0
    if not path.is_dir():
        raise SegpipeError(f"{path}: no such file or folder")
    scan = scan_folder(path, exclude=out_dir)
    scan.warn_others(path.as_posix())
    for duplicate in scan.duplicates:
        stem = stem_of(duplicate, path)
        log.warning("skipped %s: %s also makes %s.png", duplicate, scan.images[stem], stem)
    if not scan.images:
        raise SegpipeError(f"{path}: holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return scan.images, len(scan.duplicates)


def overlay(
    image: np.ndarray, labels: np.ndarray, num_classes: int = 2, alpha: float = 0.45
) -> Image.Image:
    """The image with each foreground class tinted in its colour (red for binary)."""
    colours = palette(max(num_classes, 2)).astype(np.float32)
    out = image.astype(np.float32)
    fg = labels > 0
    blend(out, fg, colours[labels[fg]], alpha)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def run(
    model_path: Path,
    inputs: Path,
    out_dir: Path,
    threshold: float = 0.5,
    batch_size: int = 16,
    with_overlay: bool = False,
) -> dict[str, float]:
    """Write ``out_dir/<stem>.png`` for every readable input, at the input's own resolution
    and orientation (as viewers show it). Inputs in subfolders keep them: ``in/a/1.jpg``
    gives ``out/a/1.png``.

    Unreadable inputs are reported and skipped; each mask is written atomically.

    Returns:
        Counts of written and skipped images, and the throughput.
    """
    if not 0.0 < threshold < 1.0:
        raise SegpipeError(f"--threshold: must be in (0, 1), got {threshold}")
    if batch_size < 1:
        raise SegpipeError(f"--batch-size: must be >= 1, got {batch_size}")
    inputs_by_stem, skipped = list_inputs(inputs, out_dir)
    files = list(inputs_by_stem.items())
    predictor = Predictor(model_path, threshold)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    start = time.perf_counter()
    for first in range(0, len(files), batch_size):
        batch: list[tuple[str, np.ndarray]] = []
        for stem, path in files[first : first + batch_size]:
            try:
                batch.append((stem, read_image(path)))
            except SegpipeError as e:
                log.warning("skipped %s", e)
                skipped += 1
        if not batch:
            continue
        for (stem, image), labels in zip(
            batch, predictor.predict([image for _, image in batch]), strict=True
        ):
            atomic_save_image(predictor.to_png(labels), out_dir / f"{stem}.png")
            if with_overlay:
                atomic_save_image(
                    overlay(image, labels, predictor.num_classes),
                    out_dir / f"{stem}_overlay.png",
                )
            written += 1
    seconds = time.perf_counter() - start
    log.info(
        "wrote %d mask(s) to %s (%d skipped), %.1f images/s",
        written,
        out_dir,
        skipped,
        written / seconds if seconds else 0.0,
    )
    return {"written": written, "skipped": skipped, "images_per_s": written / seconds}
