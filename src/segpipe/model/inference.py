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
from torch import nn

from segpipe.data.colours import mask_to_png
from segpipe.data.dataset import build_transform, to_tensor
from segpipe.data.images import read_image
from segpipe.model.checkpoint import load_checkpoint
from segpipe.model.outputs import foreground_probability, logits_to_labels
from segpipe.model.runtime import Runtime, parse_device


class Predictor:
    """Loads a checkpoint and turns RGB images (HxWx3 uint8) into label maps (HxW uint8).

    Args:
        model_path: a checkpoint written by the train stage (``models/model.pt``).
        threshold: foreground probability threshold (binary models); the evaluate stage
            uses ``evaluate.threshold``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a :class:`torch.device`; default: the
            GPU if there is one, else the CPU.
    """

    def __init__(
        self,
        model_path: Path | str,
        threshold: float = 0.5,
        *,
        device: str | torch.device | None = None,
    ) -> None:
        model, self.checkpoint = load_checkpoint(Path(model_path))
        spec = self.checkpoint.model_config
        self.classes: list[str] = list(spec.classes)
        self.num_classes = len(self.classes)
        self.image_size = spec.image_size
        self.threshold = threshold
        self.runtime = Runtime.choose(
            spec.precision, channels_last=spec.channels_last, device=parse_device(device)
        )
        self.model = self.runtime.place(model)
        self.transform = build_transform(self.image_size, augment=False, seed=0)

    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Label maps at each image's own size: resize + ImageNet normalisation in, logits
        resized back bilinearly, then thresholded (one channel) or argmax (several)."""
        return [labels for labels, _ in self._run(images, with_probability=False)]

    def predict_files(self, paths: list[Path | str]) -> list[np.ndarray]:
        """Label maps for image files, each at its file's size as viewers show it (EXIF
        orientation applied, any format segpipe reads)."""
        return self.predict([read_image(Path(path)) for path in paths])

    def predict_with_probability(
        self, images: list[np.ndarray]
    ) -> list[tuple[np.ndarray, torch.Tensor]]:
        """As :meth:`predict`, each label map with its foreground probability (H, W) float32."""
        return self._run(images, with_probability=True)

    def decode_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest (height, width) a photo shown at ``height`` x ``width`` can be decoded
        at without losing what the model input needs (the square model input, or the photo's
        own size if smaller): the bound for reduced-scale decoding."""
        return min(height, self.image_size), min(width, self.image_size)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """The model input (3, S, S) float32 for one RGB image: resize + normalisation.
        Thread-safe (no random transform)."""
        return to_tensor(self.transform(image=image)["image"])

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The model's float32 logits (N, C', S, S) for prepared inputs (N, 3, S, S)."""
        with self.runtime.autocast():
            return self.model(self.runtime.to_device(batch)).float()

    def _run(self, images: list[np.ndarray], *, with_probability: bool) -> list:
        batch = torch.stack([self.prepare(im) for im in images])
        sizes = [im.shape[:2] for im in images]
        outputs = predict_full_resolution(
            self.model,
            batch,
            sizes,
            self.runtime,
            threshold=self.threshold,
            with_probability=with_probability,
        )
        return [(labels.numpy().astype(np.uint8), prob) for labels, prob in outputs]

    def to_png(self, labels: np.ndarray) -> Image.Image:
        """Binary masks as 0/255; multi-class ones as palette PNGs whose pixel values are the
        class indices (and whose palette colours them for viewers)."""
        return mask_to_png(labels, self.num_classes)


@torch.inference_mode()
def predict_full_resolution(
    model: nn.Module,
    images: torch.Tensor,
    sizes: list[tuple[int, int]],
    runtime: Runtime,
    *,
    threshold: float,
    with_probability: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Label maps at each image's original (H, W): the logits are resized back bilinearly
    before thresholding, so the result is what a user of the predictions gets. With
    ``with_probability``, each label map comes with its foreground probability map."""
    with runtime.autocast():
        logits = model(runtime.to_device(images)).float()
    out = []
    for i, size in enumerate(sizes):
        resized = F.interpolate(logits[i : i + 1], size=size, mode="bilinear", align_corners=False)
        labels = logits_to_labels(resized, threshold)[0].cpu()
        probability = foreground_probability(resized)[0].cpu() if with_probability else None
        out.append((labels, probability))
    return out
