"""Fine-tuning: ``model.init_from`` starts a model from another one's weights, and
``train.freeze_encoder_epochs`` trains only the decoder and head at first.

The source is a segpipe checkpoint (``.pt``) or an smp ``save_pretrained`` folder
(``config.json`` + ``model.safetensors``, what ``segpipe export --format smp`` writes). Its
architecture and encoder must be the run's; when its class count differs, the segmentation head
keeps its fresh random weights and every other tensor is loaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from segpipe.config import ModelConfig
from segpipe.errors import SegpipeError
from segpipe.model.checkpoint import read_payload, read_record
from segpipe.model.network import encoder_normalisation, unwrap
from segpipe.model.weights import describe_mismatch, read_state_dict

log = logging.getLogger(__name__)

KEY = "model.init_from"
HEAD = "segmentation_head."
"""The prefix of the layers that map decoder features to classes, in every smp architecture."""
SMP_WEIGHTS = "model.safetensors"


def initialise(model: nn.Module, cfg: ModelConfig) -> None:
    """Load ``cfg.init_from``'s weights into ``model`` (built from ``cfg``), checked first.

    Raises:
        SegpipeError: one line naming the source: not found, another architecture or
            encoder, or tensors that do not fit (the first mismatches named).
    """
    assert cfg.init_from is not None
    path = Path(cfg.init_from)
    if path.is_dir():
        state, arch, encoder = _smp_folder(path)
    else:
        state, arch, encoder = _segpipe_checkpoint(path, cfg)
    if (arch.lower(), encoder) != (cfg.arch.lower(), cfg.encoder):
        raise SegpipeError(
            f"{KEY}: {path} is a {arch} with encoder {encoder}, this run builds a {cfg.arch} "
            f"with {cfg.encoder}; set model.arch and model.encoder to the source's"
        )
    expected = model.state_dict()
    head = [k for k in expected if k.startswith(HEAD)]
    if any(k in state and state[k].shape != expected[k].shape for k in head):
        log.info("%s: other class count: the segmentation head starts from random weights", path)
        state = {k: v for k, v in state.items() if not k.startswith(HEAD)}
        state.update({k: expected[k] for k in head})
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    problem = describe_mismatch(expected, state, optional=optional)
    if problem:
        raise SegpipeError(f"{KEY}: {path} does not fit this {cfg.arch}/{cfg.encoder}: {problem}")
    model.load_state_dict({**expected, **{k: v for k, v in state.items() if k in expected}})
    log.info("initialised from %s", path)


def _segpipe_checkpoint(path: Path, cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], str, str]:
    """A checkpoint's weights, architecture and encoder. A normalisation other than this run's
    is worth a warning: the weights learnt on inputs scaled another way."""
    if not path.is_file():
        raise SegpipeError(f"{KEY}: {path} not found (a segpipe checkpoint or smp model folder)")
    try:
        payload = read_payload(path)
        spec = read_record(path, payload).model_config
    except SegpipeError as e:
        raise SegpipeError(f"{KEY}: {e}") from None
    state = payload["state_dict"]
    if spec.normalisation != encoder_normalisation(cfg):
        log.warning(
            "%s was trained with mean %s and std %s, this run normalises otherwise; set "
            "model.normalisation to them to feed it alike",
            path,
            list(spec.mean),
            list(spec.std),
        )
    return state, spec.arch, spec.encoder


def _smp_folder(path: Path) -> tuple[dict[str, torch.Tensor], str, str]:
    """The weights, architecture and encoder of an smp ``save_pretrained`` folder."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        arch, encoder = str(config["_model_class"]), str(config["encoder_name"])
    except (OSError, ValueError, KeyError, TypeError):
        raise SegpipeError(
            f"{KEY}: {path} is a folder without an smp config.json (_model_class, encoder_name); "
            "use a folder smp's save_pretrained (or segpipe export --format smp) wrote"
        ) from None
    return read_state_dict(path / SMP_WEIGHTS, KEY), arch, encoder


def freeze_encoder(model: nn.Module, *, frozen: bool) -> None:
    """Let the optimizer skip the encoder's parameters (``frozen``), or train them again.
    Frozen parameters get no gradient, so no optimizer step (nor weight decay) moves them;
    BatchNorm statistics still follow the data."""
    encoder = unwrap(model).encoder
    if next(encoder.parameters()).requires_grad == (not frozen):
        return
    encoder.requires_grad_(not frozen)
    log.info("encoder %s", "frozen: training the decoder and head only" if frozen else "unfrozen")
