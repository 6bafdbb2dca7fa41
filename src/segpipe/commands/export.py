"""ONNX export of a checkpoint, with a parity check against PyTorch in onnxruntime.

    segpipe export --model models/model.pt --out models/model.onnx [--opset 17]

(``--format smp`` writes smp's ``save_pretrained`` folder instead:
:mod:`segpipe.commands.export_smp`.)

The ONNX model takes ``image`` (float32 NCHW, RGB, normalised with the mean and std of its
``preprocessing`` metadata (the encoder's, from the checkpoint), any batch size, height
and width multiples of the encoder's output stride) and returns ``logits`` (N, C', H, W). The
checkpoint's ``model_config`` (arch, encoder, classes, image_size and the input geometry:
resize, crop, scale) travels in the file's ``metadata_props``, so a deployer needs no other file.
Sliding-window inference (``evaluate.tile``) and flip averaging (``evaluate.tta``) are not in the
graph: ``inference`` in the metadata says how segpipe applies them around it.

onnx, onnxruntime and onnxscript are imported lazily: the rest of the pipeline runs without them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segpipe.cli import parser, run_stage
from segpipe.commands import export_smp
from segpipe.commands.predict import resolve_settings
from segpipe.config import check_threshold
from segpipe.errors import SegpipeError, install_extra
from segpipe.files import atomic_path, ensure_writable_dir, write_error, write_json
from segpipe.model import outputs
from segpipe.model.checkpoint import ModelSpec, load_checkpoint
from segpipe.model.outputs import Parity
from segpipe.progress import progress

log = logging.getLogger(__name__)

MIN_OPSET = DEFAULT_OPSET = 17
# torch 2.14's torch.export-based exporter implements opset 18+ only; asking it for 17 runs a
# down-conversion that fails for efficientnet encoders (Pad, ReduceMean) and silently keeps 18.
# Opset 17 therefore goes through the TorchScript exporter, which still ships with torch 2.14.
DYNAMO_MIN_OPSET = 18
MAX_OPSET = 23
DEFAULT_TOLERANCE = 1e-3
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
AXES = {0: "batch", 2: "height", 3: "width"}


def require(*modules: str) -> list[Any]:
    """Import ``modules``, or fail with one line naming what is missing and how to install it."""
    found, missing = [], []
    for name in modules:
        try:
            found.append(importlib.import_module(name))
        except ImportError as e:
            missing.append(name if isinstance(e, ModuleNotFoundError) else f"{name} ({e})")
    if missing:
        raise SegpipeError(f"ONNX export needs {', '.join(missing)}: {install_extra('export')}")
    return found


def parity_shapes(size: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Two inputs that differ in batch size, height and width (e.g. 1x3x256x256, 2x3x192x320)."""
    return [(1, 3, size, size), (2, 3, max(stride, size - 2 * stride), size + 2 * stride)]


def export_onnx(model: nn.Module, path: Path, opset: int, example: torch.Tensor) -> str:
    """Write ``model`` (eval mode) to ``path`` with dynamic batch, height and width axes.

    Returns:
        The exporter used: ``torchscript`` for opset 17, ``dynamo`` (torch.export) above.
    """
    model.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if opset >= DYNAMO_MIN_OPSET:
            require("onnxscript")
            if not log.isEnabledFor(logging.DEBUG):  # its graph passes log every rewrite at INFO
                for name in ("onnxscript", "onnx_ir"):
                    logging.getLogger(name).setLevel(logging.WARNING)
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(AXES,),
                verbose=False,
            )
            assert program is not None
            program.save(str(path), external_data=False)
            exporter = "dynamo"
        else:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: AXES, OUTPUT_NAME: AXES},
            )
            exporter = "torchscript"
    for w in caught:  # exporter chatter (deprecation, tracer notes): visible with --verbose
        log.debug("%s: %s", w.category.__name__, str(w.message).splitlines()[0])
    return exporter


GEOMETRY_NOTE = (
    "model_config.resize squash: resize the image to image_size x image_size; longest_side: "
    "resize it so its longest side is image_size (aspect kept); with model_config.crop set: "
    "resize it to model_config.scale of its size. Then pad below and to the right with black "
    "to multiples of size_multiple, and cut the padding off the logits before resizing them "
    "back (bilinear) to the image's size"
)
"""How an image becomes this graph's input (:mod:`segpipe.data.geometry`), in words."""

OUTSIDE_GRAPH_NOTE = (
    "sliding-window inference (evaluate.tile, evaluate.overlap: logits of overlapping windows "
    "averaged) and test-time augmentation (evaluate.tta flip: logits of the input and of its "
    "horizontal mirror averaged) are not part of this graph; segpipe evaluate and predict "
    "apply them around it"
)
"""What segpipe does around the network that the exported graph does not."""


def add_metadata(
    path: Path, model_config: ModelSpec, stride: int, opset: int, threshold: float | None
) -> None:
    """Embed the model config and the input/output conventions as ``metadata_props``
    (``threshold``: the binary cut-off; None for models of more than two classes).

    Also checks the file with ``onnx.checker`` and that it has the requested opset.
    """
    (onnx,) = require("onnx")
    proto = onnx.load(str(path))
    actual = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if actual != opset:
        raise SegpipeError(
            f"--opset {opset}: the exporter produced opset {actual}; pass --opset {actual}"
        )
    props = {
        "model_config": json.dumps(model_config.to_dict(), sort_keys=True),
        "preprocessing": json.dumps(
            {
                "input": INPUT_NAME,
                "layout": "NCHW",
                "dtype": "float32",
                "channels": "RGB",
                "scale": 1 / 255,
                "mean": list(model_config.mean),  # the encoder's, as the model was trained
                "std": list(model_config.std),
                "size_multiple": stride,
            }
        ),
        "geometry": GEOMETRY_NOTE,
        "inference": OUTSIDE_GRAPH_NOTE,
        "postprocessing": (
            f"{OUTPUT_NAME} (N, C', H, W): one channel = binary, foreground where "
            f"sigmoid > threshold; several channels = class index by argmax (order of "
            f"model_config.classes)"
        ),
        "threshold": json.dumps(threshold),
    }
    kept = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def check_parity(
    path: Path,
    model: nn.Module,
    shapes: list[tuple[int, int, int, int]],
    threshold: float,
) -> Parity:
    """Run random inputs through onnxruntime (CPU) and PyTorch (fp32, eval mode) and compare
    their logits, and their labels at ``threshold`` (binary models)."""
    (ort,) = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )

    def forward(x: torch.Tensor) -> torch.Tensor:
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        return torch.from_numpy(got)

    def reference(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.eval()(x).float()

    checked = progress(shapes, "parity check", unit="input")
    what = f"{path} (onnxruntime)"
    return outputs.check_parity(forward, reference, checked, what=what, threshold=threshold)


def write_checked(
    model: nn.Module,
    out: Path,
    opset: int,
    model_config: ModelSpec,
    check_size: int,
    stride: int,
    tolerance: float,
    threshold: float | None,
) -> tuple[str, float, Parity, int]:
    """Export to a temporary file, check its parity, and rename it onto ``out`` only if
    it passes.

    Returns:
        The exporter used, the export time in seconds, the parity figures, the file size.
    """
    try:
        with atomic_path(out) as tmp:
            example = torch.randn(2, 3, check_size, check_size)
            start = time.perf_counter()
            exporter = export_onnx(model, tmp, opset, example)
            add_metadata(tmp, model_config, stride, opset, threshold)
            seconds = time.perf_counter() - start
            shapes = parity_shapes(check_size, stride)
            parity = check_parity(tmp, model, shapes, 0.5 if threshold is None else threshold)
            if not parity.max_abs_diff <= tolerance:
                raise SegpipeError(
                    f"{out}: onnxruntime differs from PyTorch by max |diff| "
                    f"{parity.max_abs_diff:.3g} > tolerance {tolerance:g} (label mismatch "
                    f"{parity.label_mismatch_fraction:.4%}); not written"
                )
            return exporter, seconds, parity, tmp.stat().st_size
    except OSError as e:  # a full disk, say; the temporary file is gone
        raise write_error(out, e, "nothing was written") from None


def figures_path(out: Path) -> Path:
    """Where the parity figures of ``out`` go: ``<out>.json``."""
    return out.with_name(out.name + ".json")


def check_out(model_path: Path, out: Path) -> None:
    """Refuse, before the slow export, an ``--out`` that cannot or must not be written: a
    folder, a path below a file, an unwritable folder, the checkpoint itself or any other
    existing file that is not ONNX.

    Raises:
        SegpipeError: naming the path at fault and the fix.
    """
    for path in (out, figures_path(out)):
        if path.is_dir():
            raise SegpipeError(
                f"{path}: a folder, where --out needs the ONNX file to write (and <out>.json "
                f"beside it); choose another --out, e.g. {out / 'model.onnx'}"
            )
    if out.exists() and model_path.exists() and out.samefile(model_path):
        raise SegpipeError(f"{out}: the --model checkpoint itself; choose another --out")
    if out.exists() and out.suffix.lower() != ".onnx":
        raise SegpipeError(
            f"{out}: an existing file that is not .onnx, so export does not replace it; "
            "choose another --out (ending in .onnx)"
        )
    ensure_writable_dir(out.parent, "--out")


def run(
    model_path: Path,
    out: Path,
    opset: int = DEFAULT_OPSET,
    check_size: int = 256,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    threshold: float | None = None,
    params_path: Path | None = None,
) -> dict[str, Any]:
    """Export ``model_path`` to ``out`` (ONNX) and ``<out>.json`` (the parity figures).

    The ONNX file appears only once it passed the parity check. Its ``threshold`` (binary
    models; null for more classes) is ``threshold``, else the ``evaluate.threshold`` predict
    would use (:func:`~segpipe.commands.predict.resolve_settings`), logged with its source.

    Returns:
        The report written to ``<out>.json``.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise SegpipeError(f"--opset: must be {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    if not tolerance > 0:
        raise SegpipeError(f"--tolerance: must be positive, got {tolerance}")
    if threshold is not None:
        check_threshold(threshold, "--threshold")
    require("onnx", "onnxruntime")
    check_out(model_path, out)
    given = {} if threshold is None else {"threshold": threshold}
    settings, sources = resolve_settings(given, params_path, names=("threshold",))
    model, checkpoint = load_checkpoint(model_path)
    if len(checkpoint.model_config.classes) > 2:
        if threshold is not None:
            raise SegpipeError(
                f"--threshold: {model_path} has {len(checkpoint.model_config.classes)} classes "
                "(argmax); a threshold applies to two-class models only, drop --threshold"
            )
        settings["threshold"] = None
    else:
        log.info("threshold %g (%s)", settings["threshold"], sources["threshold"])
    stride = int(getattr(getattr(model, "encoder", None), "output_stride", 32))
    if check_size < stride or check_size % stride:
        raise SegpipeError(
            f"--check-size: must be a positive multiple of {stride} (the encoder's output "
            f"stride), got {check_size}"
        )
    model_config = checkpoint.model_config
    exporter, export_seconds, parity, size = write_checked(
        model, out, opset, model_config, check_size, stride, tolerance, settings["threshold"]
    )
    report = {
        "onnx": str(out),
        "opset": opset,
        "exporter": exporter,
        "file_size_bytes": size,
        "export_seconds": round(export_seconds, 2),
        "inputs_checked": parity.shapes,
        "max_abs_diff": parity.max_abs_diff,
        "label_mismatch_fraction": parity.label_mismatch_fraction,
        "tolerance": tolerance,
        "threshold": settings["threshold"],
        "model_config": model_config.to_dict(),
        "inference": OUTSIDE_GRAPH_NOTE,
        "torch": torch.__version__,
        "onnxruntime": require("onnxruntime")[0].__version__,
    }
    try:
        write_json(figures_path(out), report)
    except OSError as e:
        raise write_error(figures_path(out), e, f"{out} was written") from None
    _log_result(out, opset, size, parity)
    return report


def _log_result(out: Path, opset: int, size: int, parity: Parity) -> None:
    labels = (
        "labels identical"
        if parity.label_mismatch_fraction == 0
        else f"labels differ on {parity.label_mismatch_fraction:.4%} of pixels"
    )
    log.info(
        "exported %s (opset %d, %.1f MB); onnxruntime parity: max |diff| %.1e over %d inputs, %s",
        out,
        opset,
        size / 1e6,
        parity.max_abs_diff,
        len(parity.shapes),
        labels,
    )
    log.info("tiling and flip TTA (evaluate.tile, evaluate.tta) are not in the graph")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's arguments."""
    p = parser("Export a checkpoint to ONNX and check it against PyTorch in onnxruntime.")
    p.prog = prog or p.prog
    p.add_argument("--model", type=Path, required=True, help="checkpoint to export")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="ONNX file to write (and <out>.json, the figures); with --format smp, a folder",
    )
    p.add_argument(
        "--format",
        choices=("onnx", "smp"),
        default="onnx",
        help="onnx (default), or smp: the save_pretrained folder smp.from_pretrained loads",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help="ONNX opset, %(default)s..23 (default: %(default)s; 18+ uses torch.export)",
    )
    p.add_argument(
        "--check-size",
        type=int,
        default=256,
        help="parity check inputs: 1x3xSxS and 2x3x(S-64)x(S+64) (default: %(default)s)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="the binary cut-off recorded with the model (default: evaluate.threshold of "
        "--params if that file exists, else 0.5)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest accepted |logit difference| vs PyTorch (default: %(default)g)",
    )
    return p


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command on ``argv`` (default: the process's arguments); returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    if args.format == "smp":
        return run_stage(
            lambda: export_smp.run(args.model, args.out, args.check_size, args.tolerance),
            verbose=args.verbose,
        )
    return run_stage(
        lambda: run(
            args.model,
            args.out,
            args.opset,
            args.check_size,
            args.tolerance,
            threshold=args.threshold,
            params_path=Path(args.params),
        ),
        verbose=args.verbose,
    )
