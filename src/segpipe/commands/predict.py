"""The predict command: masks for new images of any size, from a trained checkpoint.

segpipe predict --model models/model.pt [--model MORE.pt ...] --input DIR_OR_FILE --output DIR
    [--overlay] [--probabilities] [--overwrite] [--threshold T] [--tile N] [--overlap F]
    [--tta flip] [--decode M] [--backend B]

Several ``--model`` flags predict with their ensemble (class probabilities averaged, see
:mod:`segpipe.inference.ensemble`).

Settings without a flag come from the ``evaluate`` section of ``--params`` (default
``params.yaml``, if there is one), and only from it; each is logged with where it came from.
"""

from __future__ import annotations

import argparse
import logging
import time
import typing
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segpipe.cli import parser, run_stage
from segpipe.config import (
    EvaluateConfig,
    Tta,
    check_overlap,
    check_threshold,
    check_tile,
    load_evaluate,
)
from segpipe.data.colours import blend, palette
from segpipe.data.images import IMAGE_EXTENSIONS, scan_folder, stem_of
from segpipe.errors import SegpipeError
from segpipe.files import ensure_writable_dir, require_folder, write_error
from segpipe.inference.memory import check_memory
from segpipe.inference.openvino_backend import BACKENDS
from segpipe.inference.predictor import Predictor
from segpipe.inference.stream import (
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
    save_probabilities,
)
from segpipe.inference.tiling import InferenceOptions
from segpipe.progress import progress
from segpipe.runtime import reuse_freed_memory

log = logging.getLogger(__name__)

DEFAULT_PARAMS = Path("params.yaml")


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
    a folder, below a file (where a subfolder of ``out_dir`` goes), or (without
    ``overwrite``) over any existing file.

    Raises:
        SegpipeError: naming the first file at fault (and how many there are).
    """
    if inputs.is_dir() and out_dir.resolve() == inputs.resolve():
        raise SegpipeError(
            f"{out_dir}: --output is the --input folder, so masks would replace or mix with "
            "the images; choose another --output"
        )
    require_folder(out_dir, "--output")
    _check_subfolders(out_dir, targets)
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


def _check_subfolders(out_dir: Path, targets: list[Path]) -> None:
    """Refuse an existing file (or a link to one) where a subfolder of ``out_dir`` goes:
    inputs in ``in/a/`` have their masks in ``out/a/``, and ``--overwrite`` replaces masks,
    never a file in a folder's place."""
    blocked: dict[Path, int] = {}
    for target in targets:
        for parent in target.relative_to(out_dir).parents:
            folder = out_dir / parent
            if parent != Path(".") and folder.exists() and not folder.is_dir():
                blocked[folder] = blocked.get(folder, 0) + 1
                break
    if blocked:
        folder, count = next(iter(blocked.items()))
        raise SegpipeError(
            f"{folder}: a file where the subfolder for {count} output(s) goes (inputs in the "
            f"subfolder {folder.relative_to(out_dir).as_posix()} of --input); move or rename "
            "it, or choose another --output"
        )


def _identity(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of an existing file: the same file under any name or link."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


SETTINGS = ("threshold", "tile", "overlap", "tta", "decode", "backend")
"""What predict reads of the ``evaluate`` section, each also a flag (``--tile 0``: whole
images). Only the settings no flag gives are read, and only from that section: predict runs
beside another project's ``params.yaml`` (its ``epochs`` is none of predict's business)."""

DEFAULTS: dict[str, Any] = {
    "threshold": 0.5,
    "tile": None,
    "overlap": 0.0,
    "tta": "none",
    "decode": "exact",
    "backend": "torch",
}
"""The settings without a flag and without a params file's ``evaluate`` section."""


def resolve_settings(
    given: dict[str, Any], params_path: Path | None, names: tuple[str, ...] = SETTINGS
) -> tuple[dict[str, Any], dict[str, str]]:
    """Each of :data:`SETTINGS` and where it came from: its flag (``given``), else the
    ``evaluate`` section of the params file (see :func:`params_file`), as the evaluate stage
    used it, so predict writes the masks evaluate scored; else :data:`DEFAULTS`. Only
    ``names`` are resolved (export needs the threshold alone); the file is not read when the
    flags give all of them.

    Raises:
        SegpipeError: a ``--params`` file not found or without an ``evaluate`` section, or a
            bad key in that section (naming the file).
    """
    needed = [name for name in names if name not in given]
    section, origin = None, ""
    if needed:
        section, origin = _evaluate_section(params_path)
    values, sources = {}, {}
    for name in names:
        if name in given:
            values[name], sources[name] = given[name], f"--{name}"
        elif section is not None:
            values[name] = getattr(section, name)
            sources[name] = f"evaluate section of {origin}, as the evaluate stage used"
        else:
            values[name], sources[name] = DEFAULTS[name], f"the default: {origin}"
    return values, sources


def _evaluate_section(params_path: Path | None) -> tuple[EvaluateConfig | None, str]:
    """The params file's ``evaluate`` section (None without one) and the file's name, or why
    there is none."""
    path = params_file(params_path)
    if path is None:
        return None, f"no {DEFAULT_PARAMS} here to read evaluate settings from"
    section = load_evaluate(path)
    if section is None and path != DEFAULT_PARAMS:
        raise SegpipeError(
            f"{path}: has no evaluate section to read predict's settings from; pass a segpipe "
            "params file, or give the settings as flags (--threshold, --tile, ...)"
        )
    if section is None:  # another project's params.yaml in this folder: not ours to read
        return None, f"{path} has no evaluate section (another project's file?)"
    return section, str(path)


def params_file(params_path: Path | None) -> Path | None:
    """The params file evaluate's settings are read from: ``params_path`` (which must exist if
    given and not the default), else ``params.yaml`` if it exists here, else None."""
    path = DEFAULT_PARAMS if params_path is None else Path(params_path)
    if path.is_file():
        return path
    if params_path is not None and path != DEFAULT_PARAMS:
        raise SegpipeError(f"{path}: --params file not found")
    return None


def check_flags(given: dict[str, Any]) -> None:
    """The settings given as flags, by the rules of their ``evaluate`` keys.

    Raises:
        SegpipeError: naming the flag.
    """
    if "threshold" in given:
        check_threshold(given["threshold"], "--threshold")
    if "tile" in given:
        check_tile(given["tile"], "--tile")
    if "overlap" in given:
        check_overlap(given["overlap"], "--overlap")
    choices = {"tta": typing.get_args(Tta), "decode": DECODE_MODES, "backend": BACKENDS}
    for name, valid in choices.items():
        if name in given and given[name] not in valid:
            raise SegpipeError(f"--{name}: must be one of {', '.join(valid)}, got {given[name]!r}")


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
    model_path: Path | list[Path],
    inputs: Path,
    out_dir: Path,
    *,
    threshold: float | None = None,
    batch_size: int = 16,
    with_overlay: bool = False,
    with_probabilities: bool = False,
    overwrite: bool = False,
    params_path: Path | None = None,
    decode: str | None = None,
    threads: int = IO_THREADS,
    backend: str | None = None,
    tile: int | None = None,
    overlap: float | None = None,
    tta: str | None = None,
) -> dict[str, float]:
    """Write ``out_dir/<stem>.png`` for every readable input, at the input's own resolution
    and orientation (as viewers show it). Inputs in subfolders keep them: ``in/a/1.jpg``
    gives ``out/a/1.png``. Each setting of :data:`SETTINGS` (``threshold``, ``tile`` (0:
    whole images), ``overlap``, ``tta``, ``decode``, ``backend``) is the argument, else
    evaluate's (see :func:`resolve_settings`); where each came from is logged. Reading and
    writing run on ``threads`` threads beside the model (0: one step after another).
    ``model_path``: one checkpoint, or a list (an ensemble). ``with_probabilities``: also
    write ``out_dir/<stem>.npz``, the class probabilities (docs/inference.md).

    Nothing is written before every output path is checked (see :func:`check_outputs`) and
    the largest input is known to fit in memory (see :func:`check_memory`); unreadable inputs
    are reported and skipped (none readable: an error); each file is written atomically.

    Returns:
        Counts of written and skipped images, and the throughput.
    """
    flags = dict(zip(SETTINGS, (threshold, tile, overlap, tta, decode, backend), strict=True))
    given = _given_settings(flags, batch_size=batch_size, threads=threads)
    settings, sources = resolve_settings(given, params_path)
    inputs_by_stem, duplicates, plan = _checked_plan(
        inputs,
        out_dir,
        with_overlay=with_overlay,
        with_probabilities=with_probabilities,
        overwrite=overwrite,
    )
    reuse_freed_memory()  # as the evaluate stage does: large buffers are not mapped afresh
    predictor = _load_predictor(model_path, settings, sources, threshold_given=threshold)
    sizes = {path: _header_size(path) for path in inputs_by_stem.values()}
    known = {path: hw for path, hw in sizes.items() if hw is not None}
    check_memory(predictor, known, fix="pass --tile {tile} (or set evaluate.tile)")
    stream = StreamSettings(batch_size, settings["decode"], threads)
    ensure_writable_dir(out_dir, "--output")
    start = time.perf_counter()
    written, unreadable = _predict_in_batches(
        predictor, plan, inputs_by_stem, stream, with_probabilities=with_probabilities
    )
    if unreadable and not written:
        many = f"{inputs}: none of its {len(plan)} image(s) could be read, e.g. "
        raise SegpipeError(f"{'' if inputs.is_file() else many}{unreadable[0]}")
    skipped = len(unreadable) + len(duplicates)
    seconds = time.perf_counter() - start
    speed = written / seconds if seconds else 0.0
    log.info("wrote %d mask(s) to %s (%d skipped), %.1f images/s", written, out_dir, skipped, speed)
    return {"written": written, "skipped": skipped, "images_per_s": speed}


def _given_settings(flags: dict[str, Any], *, batch_size: int, threads: int) -> dict[str, Any]:
    """The settings of :data:`SETTINGS` given as flags (the ones not None), checked by the rules
    of their ``evaluate`` keys; ``--tile 0`` is whole images, whatever evaluate.tile says.

    Raises:
        SegpipeError: naming the flag (``--batch-size`` and ``--threads`` too).
    """
    given = {name: value for name, value in flags.items() if value is not None}
    if given.get("tile") == 0:
        given["tile"] = None
    check_flags(given)
    if batch_size < 1:
        raise SegpipeError(f"--batch-size: must be >= 1, got {batch_size}")
    if threads < 0:
        raise SegpipeError(f"--threads: must be >= 0, got {threads}")
    return given


def _checked_plan(
    inputs: Path, out_dir: Path, *, with_overlay: bool, with_probabilities: bool, overwrite: bool
) -> tuple[dict[str, Path], list[Path], list[tuple[str, Path, Path | None]]]:
    """The inputs by stem, the inputs left out as duplicates of a stem (see
    :func:`list_inputs`) and the output plan (see :func:`plan_outputs`), once every file the
    plan writes has passed :func:`check_outputs`."""
    inputs_by_stem, duplicates = list_inputs(inputs, out_dir)
    plan = plan_outputs(inputs_by_stem, out_dir, with_overlay=with_overlay)
    targets = [p for _, mask, over in plan for p in (mask, over) if p is not None]
    if with_probabilities:
        targets += [probabilities_path(mask) for _, mask, _ in plan]
    input_files = [*inputs_by_stem.values(), *duplicates]
    check_outputs(inputs, input_files, out_dir, targets, overwrite=overwrite)
    return inputs_by_stem, duplicates, plan


def probabilities_path(mask_path: Path) -> Path:
    """Where an image's class probabilities go: beside its mask, ``<stem>.npz``."""
    return mask_path.with_suffix(".npz")


def _load_predictor(
    model_path: Path | list[Path],
    settings: dict[str, Any],
    sources: dict[str, str],
    *,
    threshold_given: float | None,
) -> Predictor:
    """The model at ``model_path`` (or the ensemble of the list) with the resolved
    ``settings``, each logged with its source.

    Raises:
        SegpipeError: ``--threshold`` given for a model of more than two classes, which
            takes each pixel's most likely class and has no threshold to set.
    """
    options = InferenceOptions(
        tile=settings["tile"], overlap=settings["overlap"], tta=settings["tta"]
    )
    predictor = Predictor(
        model_path, settings["threshold"], options=options, backend=settings["backend"]
    )
    if len(predictor.members) > 1:
        names = ", ".join(path.as_posix() for path in predictor.paths)
        log.info(
            "ensemble of %d models (probabilities averaged): %s", len(predictor.members), names
        )
    if predictor.num_classes > 2 and threshold_given is not None:
        raise SegpipeError(
            f"--threshold: {predictor.paths[0]} has {predictor.num_classes} classes and gives each "
            "pixel its most likely one (argmax); a threshold applies to two-class models only, "
            "drop --threshold"
        )
    groups: dict[str, list[str]] = {}
    for name in SETTINGS:
        if name == "threshold" and predictor.num_classes > 2:
            log.info("class of each pixel by argmax over %d classes", predictor.num_classes)
        else:
            groups.setdefault(sources[name], []).append(f"{name} {_shown(settings[name])}")
    log.info("settings: %s", "; ".join(f"{', '.join(v)} ({k})" for k, v in groups.items()))
    return predictor


def _shown(value: Any) -> str:
    """A setting as params.yaml writes it."""
    if value is None:
        return "null"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _header_size(path: Path) -> tuple[int, int] | None:
    """An image file's (height, width) from its header (no decoding); None if unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return height, width


def _predict_in_batches(
    predictor: Predictor,
    plan: list[tuple[str, Path, Path | None]],
    inputs_by_stem: dict[str, Path],
    settings: StreamSettings,
    *,
    with_probabilities: bool = False,
) -> tuple[int, list[SegpipeError]]:
    """Predict and save each planned output, ``settings.batch_size`` images per forward pass,
    with reading and writing on a thread pool; returns the number of images written and the
    errors of the unreadable ones skipped (each reported)."""
    written, unreadable = 0, []

    def read(entry: tuple[str, Path, Path | None]) -> Prepared:
        stem, _, overlay_path = entry
        path = inputs_by_stem[stem]
        return read_prepared(
            predictor, path, decode=settings.decode, keep_photo=overlay_path is not None
        )

    with MaskStream(
        predictor, settings.batch_size, threads=settings.threads, probabilities=with_probabilities
    ) as stream:
        try:
            for outcome in progress(
                stream.labels(plan, read), "predict", total=len(plan), unit="image"
            ):
                if outcome.error is not None:
                    log.warning("skipped %s", outcome.error)
                    unreadable.append(outcome.error)
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
    return written, unreadable


def _save_outputs(predictor: Predictor, outcome: Outcome) -> None:
    """Write the mask of one outcome, its class probabilities if the stream gave them, and its
    overlay if one is planned."""
    _, mask_path, overlay_path = outcome.item
    save_mask(predictor, outcome.labels, mask_path)
    if outcome.probabilities is not None:
        save_probabilities(probabilities_path(mask_path), outcome.probabilities, predictor.classes)
    if overlay_path is not None:
        save_png(overlay(outcome.extra, outcome.labels, predictor.num_classes), overlay_path)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("Predict masks for new images with a trained checkpoint.")
    p.prog = prog or p.prog
    p.add_argument(
        "--model",
        type=Path,
        action="append",
        default=None,
        help="checkpoint (default models/model.pt); give it several times to predict with the "
        "ensemble of the models (same classes and input geometry; probabilities averaged)",
    )
    p.add_argument("--input", type=Path, required=True, help="an image file or a folder of images")
    p.add_argument("--output", type=Path, required=True, help="folder for <stem>.png masks")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="foreground probability threshold (default: evaluate.threshold of --params if "
        "that file exists, else 0.5)",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        help="predict in sliding windows of this side, a multiple of 32 (0: whole images; "
        "default: evaluate.tile of --params, else whole images)",
    )
    p.add_argument(
        "--overlap",
        type=float,
        default=None,
        help="share of a window its neighbour repeats (default: evaluate.overlap of --params, "
        "else 0)",
    )
    p.add_argument(
        "--tta",
        choices=typing.get_args(Tta),
        default=None,
        help="flip: average the logits of each image and its mirror (default: evaluate.tta of "
        "--params, else none)",
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
        "--probabilities",
        action="store_true",
        help="also write <stem>.npz: the class probabilities (C, H, W) float16 at the image's "
        "size, and the class names (docs/inference.md)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace masks and overlays already in --output"
    )
    return p


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command on ``argv`` (default: the process's arguments); returns the exit code."""
    args = build_parser(prog).parse_args(argv)

    def predict() -> None:
        run(
            args.model or [Path("models/model.pt")],
            args.input,
            args.output,
            threshold=args.threshold,
            batch_size=args.batch_size,
            with_overlay=args.overlay,
            with_probabilities=args.probabilities,
            overwrite=args.overwrite,
            params_path=Path(args.params),
            decode=args.decode,
            threads=args.threads,
            backend=args.backend,
            tile=args.tile,
            overlap=args.overlap,
            tta=args.tta,
        )

    return run_stage(predict, verbose=args.verbose)
