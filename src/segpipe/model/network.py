"""Building models by name, checked, offline-safe and with their CPU fast paths."""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from segpipe.config import ModelConfig
from segpipe.constants import IMAGENET_MEAN, IMAGENET_STD
from segpipe.errors import SegpipeError
from segpipe.model.weights import load_encoder_file

log = logging.getLogger(__name__)


def output_channels(num_classes: int) -> int:
    """Binary is one logit channel (sigmoid); N classes are N channels (softmax)."""
    return 1 if num_classes == 2 else num_classes


def check_model_names(cfg: ModelConfig) -> None:
    """Fail with the valid names when ``model.arch`` or ``model.encoder`` is unknown."""
    import segmentation_models_pytorch as smp

    archs = sorted(smp.MODEL_ARCHITECTURES_MAPPING)
    if cfg.arch.lower() not in archs:
        raise SegpipeError(
            f"model.arch: unknown architecture {cfg.arch!r} (valid: {', '.join(archs)})"
        )
    encoders = smp.encoders.get_encoder_names()
    if cfg.encoder not in encoders and not cfg.encoder.startswith("tu-"):
        raise SegpipeError(
            f"model.encoder: unknown encoder {cfg.encoder!r} "
            f"(valid: {', '.join(encoders)}, or any timm encoder as 'tu-<name>')"
        )


def encoder_normalisation(cfg: ModelConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the encoder's pretrained weights expect, from local configs only: timm's
    ``pretrained_cfg`` for ``tu-`` encoders, smp's ``pretrained_settings`` for the others.

    ``model.normalisation`` if set (a weights file carries no config); else the values of
    ``model.encoder_weights`` if it names hub weights, else of the encoder's default (first)
    weights, so a model trained from scratch is fed as its pretrained twin would be; ImageNet's
    when the encoder records none.
    """
    if cfg.normalisation is not None:
        return cfg.normalisation.mean, cfg.normalisation.std
    hub_name = None if cfg.weights_file else cfg.encoder_weights
    if cfg.encoder.startswith("tu-"):
        settings = _timm_settings(cfg.encoder[3:], hub_name)
    else:
        import segmentation_models_pytorch as smp

        known = smp.encoders.encoders.get(cfg.encoder, {}).get("pretrained_settings", {})
        settings = known.get(hub_name) or next(iter(known.values()), {})
    mean, std = settings.get("mean"), settings.get("std")
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _timm_settings(name: str, weights: str | None) -> dict:
    """A timm model's pretrained mean/std (``name`` may carry a tag: ``resnet50.a1_in1k``)."""
    import timm

    tag = name if "." in name or weights in (None, "imagenet") else f"{name}.{weights}"
    try:
        cfg = timm.get_pretrained_cfg(tag) or timm.get_pretrained_cfg(name.split(".")[0])
    except Exception:  # timm raises for names it has no config for
        cfg = None
    return {"mean": cfg.mean, "std": cfg.std} if cfg is not None else {}


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """``smp.create_model(arch, encoder, encoder_weights, classes)``, checked and offline-safe.

    ``model.encoder_weights`` naming a file loads it into the encoder (checked, see
    :func:`~segpipe.model.weights.load_encoder_file`), as the hub's weights would be.

    Raises:
        SegpipeError: unknown names, a weights file that does not fit, or pretrained weights
            that are neither cached nor downloadable (fails in seconds instead of retrying for
            half a minute).
    """
    import segmentation_models_pytorch as smp

    check_model_names(cfg)
    hub_name = None if cfg.weights_file else cfg.encoder_weights

    def create() -> nn.Module:
        model = smp.create_model(
            cfg.arch,
            cfg.encoder,
            encoder_weights=hub_name,
            classes=output_channels(num_classes),
        )
        return _depthwise_trains_in_fp32_on_cpu(_fold_symmetric_padding(model))

    if cfg.weights_file is not None:
        model = create()
        load_encoder_file(model, cfg.encoder, Path(cfg.weights_file))
        return model
    if cfg.encoder_weights is None:
        return _pytorch_bn_momentum(create())
    if _hub_reachable():
        try:
            return create()
        except KeyError as e:  # smp lists the weights an encoder has
            raise SegpipeError(f"model.encoder_weights: {e.args[0]}") from None
    # Offline: use the local Hugging Face cache only, so a missing file fails at once.
    with _hub_offline():
        try:
            return create()
        except KeyError as e:
            raise SegpipeError(f"model.encoder_weights: {e.args[0]}") from None
        except Exception as e:  # huggingface_hub raises several types for "not cached"
            raise SegpipeError(
                f"model.encoder_weights: {cfg.encoder_weights!r} weights for {cfg.encoder} are "
                f"not in the local cache and the Hugging Face hub cannot be reached "
                f"({type(e).__name__}); set model.encoder_weights: null, or run once with "
                "network access (or HF_ENDPOINT pointing at a mirror) to cache them"
            ) from None


def _pytorch_bn_momentum(model: nn.Module) -> nn.Module:
    """Use PyTorch's BatchNorm momentum (0.1) for a model trained from scratch.

    Some encoders (efficientnet-b*) keep TensorFlow's 0.01, tuned for long runs from
    pretrained statistics. From random init over a few hundred steps, their running statistics
    stay near the init values, so eval-mode predictions collapse (validation Dice stayed at 0.0
    for 6 epochs of the default run while the training loss fell).
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    return model


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """huggingface_hub's offline switch on for the block (its clients read it at each call)."""
    import huggingface_hub

    before = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = before


def _fold_symmetric_padding(model: nn.Module) -> nn.Module:
    """Let convolutions pad their input themselves where an explicit pad layer does the same.

    smp's efficientnet encoders zero-pad before every convolution (TensorFlow's "same"
    padding), which copies each activation forward and its gradient backward. Where that
    padding is symmetric (every stride-1 convolution), the convolution's own ``padding``
    gives identical outputs without the copies (the time saved: BENCHMARKS.md).
    """
    for module in model.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(module, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom and tuple(module.padding) == (0, 0):
                module.padding = (top, left)
                module.static_padding = nn.Identity()
    return model


def _depthwise_trains_in_fp32_on_cpu(model: nn.Module) -> nn.Module:
    """Compute 5x5 and strided depthwise convolutions in fp32 while training under CPU autocast.

    oneDNN's bf16 backward of these depthwise convolutions is slower than its fp32 one (per
    layer of efficientnet-b3; 3x3 stride-1 ones are fine), so under bf16 autocast these few
    layers cost more than the rest of the encoder. Computing them in fp32, with their output
    cast back to bf16 for the layers after them, shortens the training step (BENCHMARKS.md).
    Inference (no gradients) and fp32 training are untouched.
    """
    for module in model.modules():
        if (
            isinstance(module, nn.Conv2d)
            and 1 < module.groups == module.in_channels
            and (max(module.kernel_size) > 3 or max(module.stride) > 1)
        ):
            module.forward = types.MethodType(_fp32_forward_when_training_on_cpu, module)
    return model


def _fp32_forward_when_training_on_cpu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    plain_forward = type(conv).forward
    if x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return plain_forward(conv, x.float()).to(torch.get_autocast_dtype("cpu"))
    return plain_forward(conv, x)


def _hub_reachable() -> bool:
    """Whether the Hugging Face hub answers, asked through huggingface_hub's own HTTP client,
    so its settings apply: ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` (a mirror), proxies
    (``HTTPS_PROXY``) and ``HF_HUB_ETAG_TIMEOUT``. Offline, the download itself would retry for
    about half a minute before giving up."""
    import huggingface_hub
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        huggingface_hub.get_session().head(
            constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT
        )
    except Exception:  # any transport failure; the HTTP client's error types vary by version
        return False
    return True


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind DistributedDataParallel or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
