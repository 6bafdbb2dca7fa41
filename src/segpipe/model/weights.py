"""Weights from files: reading a state dict safely, and saying in one line why it does not fit.

``model.encoder_weights`` may name a file (``.pth``, ``.pt`` or ``.safetensors``) holding a state
dict of the encoder in its own key names: timm's for ``tu-`` encoders (``conv_stem.weight``), smp's
for the others (``conv1.weight``). Keys and shapes are checked before any training; a
classification head the encoder does not use (timm's ``classifier``, torchvision's ``fc``) may
be in the file and is left out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from segpipe.errors import SegpipeError

log = logging.getLogger(__name__)

HEAD_NAMES = ("fc", "_fc", "classifier", "last_linear", "head")
"""Top-level modules of a classification network that smp's own encoders drop."""
SHOWN = 3
"""Mismatched keys named per kind in an error."""


def read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a state dict, or a mapping holding one as ``state_dict``
    or ``model`` (how training scripts often save them). Never unpickles arbitrary objects.

    Raises:
        SegpipeError: naming ``key`` (the parameter) and ``path``: missing, unreadable, or no
            state dict in it.
    """
    if not path.is_file():
        raise SegpipeError(f"{key}: {path} not found (put the file there, or `dvc pull` it)")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            payload = load_file(str(path))
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: never fall back to unsafe unpickling
        raise SegpipeError(
            f"{key}: {path} is not a loadable weights file ({type(e).__name__})"
        ) from None
    if isinstance(payload, dict):
        for inner in ("state_dict", "model"):
            if isinstance(payload.get(inner), dict):
                payload = payload[inner]
                break
    if not (payload and isinstance(payload, dict) and _all_tensors(payload)):
        raise SegpipeError(f"{key}: {path} holds no state dict (a mapping of names to tensors)")
    return {str(k): v for k, v in payload.items()}


def _all_tensors(mapping: dict) -> bool:
    return all(isinstance(v, torch.Tensor) for v in mapping.values())


def describe_mismatch(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], *, optional: set[str]
) -> str:
    """What keeps ``state`` from loading where ``expected`` is, in one clause ('' if it fits):
    counts of missing, unexpected and wrongly shaped tensors, and the first few of each. Keys
    in ``optional`` may be missing (BatchNorm's ``num_batches_tracked``) or unexpected."""
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected and k not in optional]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or reshaped):
        return ""
    parts = [
        f"{len(missing)} missing, {len(unexpected)} unexpected and {len(reshaped)} wrongly "
        "shaped tensor(s)"
    ]
    if missing:
        parts.append(f"missing {_first(missing)}")
    if unexpected:
        parts.append(f"unexpected {_first(unexpected)}")
    if reshaped:
        shown = [
            f"{k!r} is {_shape(state[k])}, needs {_shape(expected[k])}" for k in reshaped[:SHOWN]
        ]
        parts.append(f"wrongly shaped {', '.join(shown)}")
    return "; ".join(parts)


def _first(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return ", ".join(repr(k) for k in keys[:SHOWN]) + more


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def load_encoder_file(model: nn.Module, encoder: str, path: Path) -> None:
    """Load the state dict in ``path`` into ``model.encoder`` (an smp model), checked first.

    Raises:
        SegpipeError: one line naming the file, the encoder and the first mismatches.
    """
    key = "model.encoder_weights"
    state = read_state_dict(path, key)
    target, expected, head = _encoder_target(model.encoder, encoder)
    optional = {k for k in expected if k.endswith("num_batches_tracked")} | head
    problem = describe_mismatch(expected, state, optional=optional | _heads(state, encoder))
    if problem:
        raise SegpipeError(
            f"{key}: {path} does not fit encoder {encoder}: {problem} (a state dict of this "
            "encoder in its own key names is needed, timm's for tu- encoders)"
        )
    kept = {k: v for k, v in state.items() if k in expected}
    target.load_state_dict({**expected, **kept})  # num_batches_tracked kept where absent
    log.info("encoder weights: %d tensors from %s", len(kept), path)


def _encoder_target(
    encoder: nn.Module, name: str
) -> tuple[nn.Module, dict[str, torch.Tensor], set[str]]:
    """The module a weights file loads into, its state dict, and the keys of the full
    classification network it leaves out (allowed in the file): timm's features-only model
    behind smp's ``tu-`` encoders, or smp's own encoder."""
    if not name.startswith("tu-"):
        return encoder, encoder.state_dict(), set()
    import timm

    target = encoder.model
    expected = target.state_dict()
    # The full network's extra keys (conv_head, bn2, classifier) may be in a file saved from it.
    full = timm.create_model(name[3:], pretrained=False).state_dict()
    return target, expected, set(full) - set(expected)


def _heads(state: dict[str, torch.Tensor], encoder: str) -> set[str]:
    """Classification-head keys of a file for one of smp's own encoders, which drop the head."""
    if encoder.startswith("tu-"):
        return set()
    return {k for k in state if k.split(".")[0] in HEAD_NAMES}
