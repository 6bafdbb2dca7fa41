"""A checkpoint ready to predict at each image's original resolution.

The one code path from image to label map, shared by the evaluate stage and the predict
command, so a mask written by ``predict`` is exactly the one evaluate scored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segpipe.data.colours import mask_to_png
from segpipe.data.geometry import pad_pair, padded_size, resize_pair
from segpipe.data.images import read_image
from segpipe.data.normalise import normalise, to_tensor
from segpipe.errors import SegpipeError
from segpipe.inference.ensemble import average_logits, check_members
from segpipe.inference.folding import fold_batch_norms
from segpipe.inference.memory import bytes_per_pixel
from segpipe.inference.openvino_backend import BACKENDS, compile_openvino
from segpipe.inference.tiling import InferenceOptions, logits_of
from segpipe.model.checkpoint import Checkpoint, load_checkpoint
from segpipe.model.outputs import logits_to_labels
from segpipe.runtime import Runtime, parse_device

ModelPaths = Path | str | Sequence[Path | str]
"""One checkpoint, or the members of an ensemble."""


@dataclasses.dataclass(frozen=True)
class Member:
    """One loaded checkpoint of a predictor: its file, record, network (batch norms folded)
    and the runtime and compiled forward pass (OpenVINO) it runs with."""

    path: Path
    checkpoint: Checkpoint
    model: nn.Module
    runtime: Runtime
    batch_norms_folded: int
    compiled: Callable[[torch.Tensor], torch.Tensor] | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) model input -> (N, C', h, w) float32 logits."""
        if self.compiled is not None:
            return self.compiled(x)
        # A window is a strided view: made dense in the model's layout again (to_device), or
        # convolutions take a slow path; a no-op otherwise.
        with self.runtime.autocast():
            return self.model(self.runtime.to_device(x)).float()


def load_member(path: Path, device: torch.device | None, backend: str) -> Member:
    """The checkpoint at ``path`` ready to run on ``device`` with ``backend``."""
    model, checkpoint = load_checkpoint(path)
    spec = checkpoint.model_config
    runtime = Runtime.choose(spec.precision, channels_last=spec.channels_last, device=device)
    example = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        model, folded = fold_batch_norms(model, example)
    except SegpipeError as e:
        raise SegpipeError(f"{path}: {e}") from None
    model = runtime.place(model)
    compiled = compile_openvino(model, runtime, spec.image_size) if backend == "openvino" else None
    return Member(path, checkpoint, model, runtime, folded, compiled)


class Predictor:
    """Loads a checkpoint (or several: an ensemble) and turns RGB images (HxWx3 uint8) into
    label maps (HxW uint8).

    Its copy of the network has its batch norms folded into the convolutions (see
    :mod:`~segpipe.inference.folding`): the same function, with fewer passes over memory.
    The members of an ensemble must share classes and input geometry; their class
    probabilities are averaged (see :mod:`~segpipe.inference.ensemble`).

    Args:
        model_path: a checkpoint written by the train stage (``models/model.pt``), or a list
            of them (an ensemble; one of one is that model, byte for byte).
        threshold: foreground probability threshold (binary models); the evaluate stage
            uses ``evaluate.threshold``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a :class:`torch.device`; default: the
            GPU if there is one, else the CPU.
        options: sliding windows and flip averaging (``evaluate.tile``, ``evaluate.overlap``,
            ``evaluate.tta``); default: one pass over the whole image.
        backend: what runs the forward pass: ``torch``, or ``openvino`` (CPU only, see
            :mod:`~segpipe.inference.openvino_backend`).

    Attributes:
        members: the loaded checkpoints, in the order given. ``checkpoint``, ``model``,
            ``runtime`` and ``batch_norms_folded`` are the first one's.
    """

    def __init__(
        self,
        model_path: ModelPaths,
        threshold: float = 0.5,
        *,
        device: str | torch.device | None = None,
        options: InferenceOptions | None = None,
        backend: str = "torch",
    ) -> None:
        if backend not in BACKENDS:
            raise SegpipeError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
        paths = [Path(model_path)] if isinstance(model_path, str | Path) else list(model_path)
        if not paths:
            raise SegpipeError("model_path: no checkpoint given; pass one file or a list")
        target = parse_device(device)
        self.members = [load_member(Path(path), target, backend) for path in paths]
        check_members([(m.path, m.checkpoint.model_config) for m in self.members])
        first = self.members[0]
        self.checkpoint, self.model, self.runtime = first.checkpoint, first.model, first.runtime
        self.batch_norms_folded = first.batch_norms_folded
        spec = self.checkpoint.model_config
        self.classes: list[str] = list(spec.classes)
        self.num_classes = len(self.classes)
        self.image_size = spec.image_size
        self.geometry = spec.geometry
        self.threshold = threshold
        self.options = options or InferenceOptions()
        self.backend = backend
        self.normalisation = spec.normalisation
        self._bytes_per_pixel: float | None = None

    @property
    def paths(self) -> list[Path]:
        """The checkpoint files, in the order given."""
        return [member.path for member in self.members]

    def memory_needed(self, height: int, width: int, tile: int | None = None) -> int:
        """The estimated peak bytes of one forward pass for an image of ``height`` x ``width``
        (see :mod:`~segpipe.inference.memory`): of one ``tile`` window when given, else of the
        input :meth:`prepare` makes of it."""
        if self.geometry.fixed_size:
            h = w = self.image_size
        else:
            h, w = padded_size(*self.geometry.input_size(height, width))
        if tile is not None:
            h, w = min(h, tile), min(w, tile)
        return self.window_memory(h, w)

    def window_memory(self, height: int, width: int | None = None) -> int:
        """The estimated peak bytes of one forward pass over a model input of ``height`` x
        ``width`` (default: a square)."""
        if self._bytes_per_pixel is None:  # traced once, on first use; members run in turn
            self._bytes_per_pixel = max(bytes_per_pixel(m.model) for m in self.members)
        return int(self._bytes_per_pixel * height * (width or height))

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Label maps at each image's own size: resize + the checkpoint's normalisation in, logits
        resized back bilinearly, then thresholded (one channel) or argmax (several)."""
        return self._run(images)

    def predict_files(self, paths: list[Path | str]) -> list[np.ndarray]:
        """Label maps for image files, each at its file's size as viewers show it (EXIF
        orientation applied, any format segpipe reads)."""
        return self.predict([read_image(Path(path)) for path in paths])

    def decode_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) an image of ``height`` x ``width`` becomes before the model sees it
        (padding aside): decoding it any larger gains nothing (the bound for reduced-scale
        decoding)."""
        return self.geometry.input_size(height, width)

    def prepare(
        self, image: np.ndarray, size: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """The model input (3, h', w') float32 for one RGB image, and the (h, w) of the image
        inside its padding (None: no padding). ``size``: the image's full (H, W) when it was
        decoded at a reduced scale (default: its own). Thread-safe (no random transform).

        Squashed models get the ``image_size`` square; the others the size
        :meth:`decode_size` gives, padded below and to the right to multiples of 32."""
        if self.geometry.fixed_size:
            squashed, _ = resize_pair(image, None, (self.image_size, self.image_size))
            return to_tensor(normalise(squashed, self.normalisation)), None
        valid = self.geometry.input_size(*(size or image.shape[:2]))
        resized, _ = resize_pair(image, None, valid)
        padded, _ = pad_pair(resized, None, padded_size(*valid))
        return to_tensor(normalise(padded, self.normalisation)), valid

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor, valid: tuple[int, int] | None = None) -> torch.Tensor:
        """The float32 logits (N, C', h, w) of prepared inputs (N, 3, h', w'), with the
        sliding windows and flip averaging of :attr:`options` (per member; an ensemble's
        probabilities then averaged), the padding outside ``valid`` cut off."""
        logits = average_logits(
            [logits_of(m.forward, m.runtime.to_device(batch), self.options) for m in self.members]
        )
        return logits if valid is None else logits[:, :, : valid[0], : valid[1]]

    def _run(self, images: list[np.ndarray]) -> list[np.ndarray]:
        prepared = [self.prepare(image) for image in images]
        sizes = [image.shape[:2] for image in images]
        if self.geometry.fixed_size:  # one square size: the whole batch in one pass
            passes = [(torch.stack([t for t, _ in prepared]), None, sizes)]
        else:  # sizes differ: one image per pass
            pairs = zip(prepared, sizes, strict=True)
            passes = [(t[None], valid, [size]) for (t, valid), size in pairs]
        outputs = []
        for batch, valid, batch_sizes in passes:
            logits = self.logits(batch, valid)
            outputs += full_resolution(logits, batch_sizes, self.threshold)
        return [labels.numpy().astype(np.uint8) for labels in outputs]

    def to_png(self, labels: np.ndarray) -> Image.Image:
        """Binary masks as 0/255; multi-class ones as palette PNGs whose pixel values are the
        class indices (and whose palette colours them for viewers)."""
        return mask_to_png(labels, self.num_classes)


def full_resolution(
    logits: torch.Tensor, sizes: list[tuple[int, int]], threshold: float
) -> list[torch.Tensor]:
    """Label maps at each image's original (H, W): the logits (N, C', h, w) are resized back
    bilinearly before thresholding, so the result is what a user of the predictions gets."""
    out = []
    for i, size in enumerate(sizes):
        resized = F.interpolate(logits[i : i + 1], size=size, mode="bilinear", align_corners=False)
        out.append(logits_to_labels(resized, threshold)[0].cpu())
    return out
