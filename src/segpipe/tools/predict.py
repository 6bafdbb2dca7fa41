"""The predict command: masks for new images of any size, from a trained checkpoint.

segpipe predict --model models/model.pt --input DIR_OR_FILE --output DIR [--overlay]
    [--overwrite] [--threshold T]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from segpipe.cli import parser, run_stage
from segpipe.config import load_params
from segpipe.data.colours import blend, palette
from segpipe.data.images import IMAGE_EXTENSIONS, scan_folder, stem_of
from segpipe.errors import SegpipeError
from segpipe.files import ensure_writable_dir, require_folder, write_error
from segpipe.model.inference import Predictor
from segpipe.model.openvino_backend import BACKENDS
from segpipe.model.runtime import reuse_freed_memory
from segpipe.model.stream import (
    DECODE_MODES,
    IO_THREADS,
    MaskStream,
    Outcome,
    Prepared,
    StreamSettings,
    WriteFailed,
    read_prepared,
    save_mask,
    save_png,
)
from segpipe.model.tiling import InferenceOptions
from segpipe.progress import progress

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
DEFAULT_PARAMS = Path("params.yaml")
DEFAULTS = {"decode": "exact", "backend": "torch"}
"""``--decode`` and ``--backend`` without the flag and without a params file."""


def list_inputs(path: Path, out_dir: Path | None = None) -> tuple[dict[str, Path], list[Path]]:
    """The inputs by stem: one image file, or the image files below a folder (subfolders
    included, ``out_dir`` left out; see :func:`~segpipe.data.images.scan_folder`), and the files
    skipped because an earlier file has their stem. Those and the files that are not images
    are named in warnings."""
    if path.is_file():
        return {path.stem: path}, []
    if not path.is_dir():
        raise SegpipeError(f"{path}: no such file or folder")
    scan = scan_folder(path, exclude=out_dir)
    scan.warn_others(path.as_posix())
    for duplicate in scan.duplicates:
        stem = stem_of(duplicate, path)
        log.warning("skipped %s: %s also makes %s.png", duplicate, scan.images[stem], stem)
    if not scan.images:
        raise SegpipeError(f"{path}: holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return scan.images, scan.duplicates


def plan_outputs(
    inputs: dict[str, Path], out_dir: Path, *, with_overlay: bool
) -> list[tuple[str, Path, Path | None]]:
    """(stem, mask path, overlay path or None) per input.

    An input named ``x_overlay.png`` next to ``x.png`` has its mask where the overlay of
    ``x.png`` would go: masks come first, so that overlay is left out, with a warning.
    """
    plan = []
    for stem, path in inputs.items():
        overlay_path = out_dir / f"{stem}_overlay.png" if with_overlay else None
        if f"{stem}_overlay" in inputs:
            log.warning(
                "no overlay for %s: %s is the mask of %s",
                path,
                overlay_path,
                inputs[f"{stem}_overlay"],
            )
            overlay_path = None
        plan.append((stem, out_dir / f"{stem}.png", overlay_path))
    return plan


def check_outputs(
    inputs: Path,
    input_files: list[Path],
    out_dir: Path,
    targets: list[Path],
    *,
    overwrite: bool,
) -> None:
    """Refuse, before any work, to write over an input, into the input folder itself, onto
    a folder, or (without ``overwrite``) over any existing file.

    Raises:
        SegpipeError: naming the first file at fault (and how many there are).
    """
    if inputs.is_dir() and out_dir.resolve() == inputs.resolve():
        raise SegpipeError(
            f"{out_dir}: --output is the --input folder, so masks would replace or mix with "
            "the images; choose another --output"
        )
    require_folder(out_dir, "--output")
    existing = [t for t in targets if t.exists() or t.is_symlink()]
    originals = {_identity(f) for f in input_files}
    for target in existing:
        if _identity(target) in originals:
            raise SegpipeError(
                f"{target}: an input image, and a mask would replace it; choose an --output "
                "folder that holds no input"
            )
        if target.is_dir():
            raise SegpipeError(
                f"{target}: a folder where a mask or overlay goes; move it or choose another "
                "--output"
            )
    if existing and not overwrite:
        raise SegpipeError(
            f"{existing[0]}: already exists ({len(existing)} of the {len(targets)} files to "
            "write exist); pass --overwrite to replace them, or choose another --output"
        )


def _identity(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of an existing file: the same file under any name or link."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def resolve_threshold(
    threshold: float | None, params_path: Path | None, classes: list[str]
) -> tuple[float, str]:
    """The foreground threshold and where it came from: ``--threshold``, else the
    ``evaluate.threshold`` of ``params_path`` (default ``params.yaml``, if it exists), as the
    evaluate stage used it, so predict writes the masks evaluate scored; else 0.5."""
    if threshold is not None:
        return threshold, "--threshold"
    path = params_file(params_path)
    if path is None:
        return (
            DEFAULT_THRESHOLD,
            f"the default: no {DEFAULT_PARAMS} here to read evaluate.threshold from",
        )
    params = load_params(path)
    if list(params.data.classes) != classes:
        log.warning(
            "%s describes classes %s, the model has %s: its evaluate.threshold may belong to "
            "another model (pass --threshold to choose)",
            path,
            list(params.data.classes),
            classes,
        )
    return params.evaluate.threshold, f"evaluate.threshold in {path}, as the evaluate stage used"


def params_file(params_path: Path | None) -> Path | None:
    """The params file evaluate's settings are read from: ``params_path`` (which must exist if
    given and not the default), else ``params.yaml`` if it exists here, else None."""
    path = DEFAULT_PARAMS if params_path is None else Path(params_path)
    if path.is_file():
        return path
    if params_path is not None and path != DEFAULT_PARAMS:
        raise SegpipeError(f"{path}: --params file not found")
    return None


def resolve_options(params_path: Path | None) -> tuple[InferenceOptions, str]:
    """Sliding windows and flip averaging as the evaluate stage used them
    (``evaluate.tile``, ``evaluate.overlap``, ``evaluate.tta`` of the params file, see
    :func:`params_file`), so predict writes the masks evaluate scored; else one pass."""
    path = params_file(params_path)
    if path is None:
        return InferenceOptions(), "the default: whole images, no TTA"
    options = InferenceOptions.from_evaluate(load_params(path).evaluate)
    return options, f"evaluate.tile/overlap/tta in {path}"


def resolve_setting(name: str, value: str | None, params_path: Path | None) -> str:
    """``--decode`` or ``--backend`` (``name``): the flag's ``value``, else ``evaluate.<name>``
    of the params file (see :func:`params_file`), so predict writes the masks evaluate scored;
    else the default (``exact`` decoding, the ``torch`` backend)."""
    if value is not None:
        return value
    path = params_file(params_path)
    if path is None:
        return DEFAULTS[name]
    return getattr(load_params(path).evaluate, name)


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
    *,
    threshold: float | None = None,
    batch_size: int = 16,
    with_overlay: bool = False,
    overwrite: bool = False,
    params_path: Path | None = None,
    decode: str | None = None,
    threads: int = IO_THREADS,
    backend: str | None = None,
) -> dict[str, float]:
    """Write ``out_dir/<stem>.png`` for every readable input, at the input's own resolution
    and orientation (as viewers show it). Inputs in subfolders keep them: ``in/a/1.jpg``
    gives ``out/a/1.png``. The threshold is ``threshold``, else evaluate's (see
    :func:`resolve_threshold`); so is ``decode`` (``exact`` or ``reduced``, see
    :data:`~segpipe.model.stream.DECODE_MODES`), and so is ``backend`` (``torch`` or
    ``openvino``). Reading and writing run on ``threads`` threads beside the model (0: one
    step after another).

    Nothing is written before every output path is checked (see :func:`check_outputs`);
    unreadable inputs are reported and skipped; each file is written atomically.

    Returns:
        Counts of written and skipped images, and the throughput.
    """
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise SegpipeError(f"--threshold: must be in (0, 1), got {threshold}")
    if batch_size < 1:
        raise SegpipeError(f"--batch-size: must be >= 1, got {batch_size}")
    if threads < 0:
        raise SegpipeError(f"--threads: must be >= 0, got {threads}")
    if decode is not None and decode not in DECODE_MODES:
        raise SegpipeError(f"--decode: must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
    if backend is not None and backend not in BACKENDS:
        raise SegpipeError(f"--backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
    inputs_by_stem, duplicates = list_inputs(inputs, out_dir)
    plan = plan_outputs(inputs_by_stem, out_dir, with_overlay=with_overlay)
    targets = [p for _, mask, over in plan for p in (mask, over) if p is not None]
    input_files = [*inputs_by_stem.values(), *duplicates]
    check_outputs(inputs, input_files, out_dir, targets, overwrite=overwrite)
    reuse_freed_memory()  # as the evaluate stage does: large buffers are not mapped afresh
    backend = resolve_setting("backend", backend, params_path)
    predictor = _load_predictor(model_path, threshold, backend, params_path)
    settings = StreamSettings(batch_size, resolve_setting("decode", decode, params_path), threads)
    ensure_writable_dir(out_dir, "--output")
    start = time.perf_counter()
    written, skipped = _predict_in_batches(predictor, plan, inputs_by_stem, settings)
    skipped += len(duplicates)
    seconds = time.perf_counter() - start
    log.info(
        "wrote %d mask(s) to %s (%d skipped), %.1f images/s",
        written,
        out_dir,
        skipped,
        written / seconds if seconds else 0.0,
    )
    return {"written": written, "skipped": skipped, "images_per_s": written / seconds}


def _load_predictor(
    model_path: Path, threshold: float | None, backend: str, params_path: Path | None
) -> Predictor:
    """The model at ``model_path`` on ``backend``, thresholded as :func:`resolve_threshold`
    says (binary), with the tiles and TTA :func:`resolve_options` says."""
    options, options_source = resolve_options(params_path)
    predictor = Predictor(model_path, DEFAULT_THRESHOLD, options=options, backend=backend)
    log.info(
        "tile %s, overlap %g, tta %s (%s)",
        options.tile,
        options.overlap,
        options.tta,
        options_source,
    )
    if predictor.num_classes == 2:
        predictor.threshold, source = resolve_threshold(threshold, params_path, predictor.classes)
        log.info("threshold %g (%s)", predictor.threshold, source)
    else:
        log.info("class of each pixel by argmax over %d classes", predictor.num_classes)
    return predictor


def _predict_in_batches(
    predictor: Predictor,
    plan: list[tuple[str, Path, Path | None]],
    inputs_by_stem: dict[str, Path],
    settings: StreamSettings,
) -> tuple[int, int]:
    """Predict and save each planned output, ``settings.batch_size`` images per forward pass,
    with reading and writing on a thread pool; returns the numbers of images written and of
    unreadable ones skipped (each reported)."""
    written = skipped = 0

    def read(entry: tuple[str, Path, Path | None]) -> Prepared:
        stem, _, overlay_path = entry
        path = inputs_by_stem[stem]
        return read_prepared(
            predictor, path, decode=settings.decode, keep_photo=overlay_path is not None
        )

    with MaskStream(predictor, settings.batch_size, threads=settings.threads) as stream:
        try:
            for outcome in progress(
                stream.labels(plan, read), "predict", total=len(plan), unit="image"
            ):
                if outcome.error is not None:
                    log.warning("skipped %s", outcome.error)
                    skipped += 1
                    continue
                written += stream.write(_save_outputs, predictor, outcome)
            written += stream.finish()
        except WriteFailed as e:
            raise write_error(
                e.path,
                e.error,
                f"{e.done_before} of {len(plan)} image(s) were done before it, each file complete",
                again="run again with --overwrite",
            ) from None
    return written, skipped


def _save_outputs(predictor: Predictor, outcome: Outcome) -> None:
    """Write the mask of one outcome, and its overlay if one is planned."""
    _, mask_path, overlay_path = outcome.item
    save_mask(predictor, outcome.labels, mask_path)
    if overlay_path is not None:
        save_png(overlay(outcome.extra, outcome.labels, predictor.num_classes), overlay_path)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("Predict masks for new images with a trained checkpoint.")
    p.prog = prog or p.prog
    p.add_argument("--model", type=Path, default=Path("models/model.pt"), help="checkpoint")
    p.add_argument("--input", type=Path, required=True, help="an image file or a folder of images")
    p.add_argument("--output", type=Path, required=True, help="folder for <stem>.png masks")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="foreground probability threshold (default: evaluate.threshold of --params if "
        "that file exists, else 0.5)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--decode",
        choices=DECODE_MODES,
        default=None,
        help="exact: decode photos in full; reduced: JPEGs at 1/2-1/8 scale where the model "
        "input stays covered (faster; default: evaluate.decode of --params, else exact)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="what runs the network: torch, or openvino (CPU only, faster; default: "
        "evaluate.backend of --params, else torch)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=IO_THREADS,
        help=f"threads that read and write beside the model (default {IO_THREADS}; 0: none)",
    )
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    p.add_argument(
        "--overwrite", action="store_true", help="replace masks and overlays already in --output"
    )
    return p


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command on ``argv`` (default: the process's arguments); returns the exit code."""
    args = build_parser(prog).parse_args(argv)

    def predict() -> None:
        run(
            args.model,
            args.input,
            args.output,
            threshold=args.threshold,
            batch_size=args.batch_size,
            with_overlay=args.overlay,
            overwrite=args.overwrite,
            params_path=Path(args.params),
            decode=args.decode,
            threads=args.threads,
            backend=args.backend,
        )

    return run_stage(predict, verbose=args.verbose)
