"""A checkpoint ready to predict at each image's original resolution.

The one code path from image to label map, shared by the evaluate stage and the predict
command, so a mask written by ``predict`` is exactly the one evaluate scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from segpipe.data.colours import mask_to_png
from segpipe.data.dataset import build_transform, normalize, to_tensor
from segpipe.data.geometry import pad_pair, padded_size, resize_pair
from segpipe.data.images import read_image
from segpipe.errors import SegpipeError
from segpipe.inference.folding import fold_batch_norms
from segpipe.inference.memory import bytes_per_pixel
from segpipe.inference.openvino_backend import BACKENDS, compile_openvino
from segpipe.inference.tiling import InferenceOptions, logits_of
from segpipe.model.checkpoint import load_checkpoint
from segpipe.model.outputs import logits_to_labels
from segpipe.runtime import Runtime, parse_device


class Predictor:
    """Loads a checkpoint and turns RGB images (HxWx3 uint8) into label maps (HxW uint8).

    Its copy of the network has its batch norms folded into the convolutions (see
    :mod:`~segpipe.inference.folding`): the same function, with fewer passes over memory.

    Args:
        model_path: a checkpoint written by the train stage (``models/model.pt``).
        threshold: foreground probability threshold (binary models); the evaluate stage
            uses ``evaluate.threshold``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a :class:`torch.device`; default: the
            GPU if there is one, else the CPU.
        options: sliding windows and flip averaging (``evaluate.tile``, ``evaluate.overlap``,
            ``evaluate.tta``); default: one pass over the whole image.
        backend: what runs the forward pass: ``torch``, or ``openvino`` (CPU only, see
            :mod:`~segpipe.inference.openvino_backend`).
    """

    def __init__(
        self,
        model_path: Path | str,
        threshold: float = 0.5,
        *,
        device: str | torch.device | None = None,
        options: InferenceOptions | None = None,
        backend: str = "torch",
    ) -> None:
        if backend not in BACKENDS:
            raise SegpipeError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
        model, self.checkpoint = load_checkpoint(Path(model_path))
        spec = self.checkpoint.model_config
        self.classes: list[str] = list(spec.classes)
        self.num_classes = len(self.classes)
        self.image_size = spec.image_size
        self.geometry = spec.geometry
        self.threshold = threshold
        self.options = options or InferenceOptions()
        self.runtime = Runtime.choose(
            spec.precision, channels_last=spec.channels_last, device=parse_device(device)
        )
        example = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        try:
            model, self.batch_norms_folded = fold_batch_norms(model, example)
        except SegpipeError as e:
            raise SegpipeError(f"{model_path}: {e}") from None
        self.model = self.runtime.place(model)
        self.backend = backend
        self._compiled = (
            compile_openvino(self.model, self.runtime, self.image_size)
            if backend == "openvino"
            else None
        )
        self.transform = build_transform(
            self.image_size, augment=False, seed=0, normalisation=spec.normalisation
        )
        self.normalize = normalize(spec.normalisation)
        self._bytes_per_pixel: float | None = None

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
        if self._bytes_per_pixel is None:  # traced once, on first use
            self._bytes_per_pixel = bytes_per_pixel(self.model)
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
            return to_tensor(self.transform(image=image)["image"]), None
        valid = self.geometry.input_size(*(size or image.shape[:2]))
        resized, _ = resize_pair(image, None, valid)
        padded, _ = pad_pair(resized, None, padded_size(*valid))
        return to_tensor(self.normalize(image=padded)["image"]), valid

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor, valid: tuple[int, int] | None = None) -> torch.Tensor:
        """The float32 logits (N, C', h, w) of prepared inputs (N, 3, h', w'), with the
        sliding windows and flip averaging of :attr:`options`, the padding outside ``valid``
        cut off."""
        logits = logits_of(self._forward, self.runtime.to_device(batch), self.options)
        return logits if valid is None else logits[:, :, : valid[0], : valid[1]]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None:
            return self._compiled(x)
        # A window is a strided view: made dense in the model's layout again (to_device), or
        # convolutions take a slow path; a no-op otherwise.
        with self.runtime.autocast():
            return self.model(self.runtime.to_device(x)).float()

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
