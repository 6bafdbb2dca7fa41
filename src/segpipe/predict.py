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
from segpipe.images import IMAGE_EXTENSIONS, image_files, read_image
from segpipe.inference import Predictor

log = logging.getLogger(__name__)


def list_inputs(path: Path) -> list[Path]:
    """One image file, or the image files of a folder (sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SegpipeError(f"{path}: no such file or folder")
    files = image_files(path)
    if not files:
        raise SegpipeError(f"{path}: holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files


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
    """Write ``out_dir/<stem>.png`` for every readable input, at the input's own resolution.

    Unreadable inputs are reported and skipped; each mask is written atomically.

    Returns:
        Counts of written and skipped images, and the throughput.
    """
    if not 0.0 < threshold < 1.0:
        raise SegpipeError(f"--threshold: must be in (0, 1), got {threshold}")
    if batch_size < 1:
        raise SegpipeError(f"--batch-size: must be >= 1, got {batch_size}")
    files = list_inputs(inputs)
    predictor = Predictor(model_path, threshold)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped, seen = 0, 0, set()
    start = time.perf_counter()
    for first in range(0, len(files), batch_size):
        batch: list[tuple[Path, np.ndarray]] = []
        for path in files[first : first + batch_size]:
            if path.stem in seen:
                log.warning("skipped %s: another input already wrote %s.png", path, path.stem)
                skipped += 1
                continue
            try:
                batch.append((path, read_image(path)))
            except SegpipeError as e:
                log.warning("skipped %s", e)
                skipped += 1
                continue
            seen.add(path.stem)
        if not batch:
            continue
        for (path, image), labels in zip(
            batch, predictor.predict([image for _, image in batch]), strict=True
        ):
            atomic_save_image(predictor.to_png(labels), out_dir / f"{path.stem}.png")
            if with_overlay:
                atomic_save_image(
                    overlay(image, labels, predictor.num_classes),
                    out_dir / f"{path.stem}_overlay.png",
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
