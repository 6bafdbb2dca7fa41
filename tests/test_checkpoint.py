"""The checkpoint's one schema: written as plain types, read back strictly into a dataclass."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from segpipe.config import ModelConfig
from segpipe.constants import IMAGENET_MEAN, IMAGENET_STD
from segpipe.errors import SegpipeError
from segpipe.model.checkpoint import Checkpoint, ModelSpec, load_checkpoint, save_checkpoint
from segpipe.model.inference import Predictor
from segpipe.model.network import build_model, encoder_normalisation

from .conftest import tiny_params

TINY = ModelConfig(arch="Unet", encoder="resnet18", encoder_weights=None)


def payload_as_train_writes_it() -> dict:
    """A checkpoint in the exact layout of the files the train stage has been writing."""
    return {
        "format": 1,
        "model_config": {
            "arch": "Unet",
            "encoder": "resnet18",
            "classes": ["background", "foreground"],
            "image_size": 64,
            "precision": "auto",
            "channels_last": True,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "resize": "squash",
            "crop": None,
            "scale": 1.0,
        },
        "state_dict": build_model(TINY, 2).state_dict(),
        "epoch": 2,
        "val_dice": 0.75,
        "train_images_per_s": 31.5,
    }


def test_files_in_the_current_layout_load_into_the_record(tmp_path):
    torch.save(payload_as_train_writes_it(), tmp_path / "m.pt")
    _, record = load_checkpoint(tmp_path / "m.pt")
    assert record == Checkpoint(
        model_config=ModelSpec(
            arch="Unet",
            encoder="resnet18",
            classes=("background", "foreground"),
            image_size=64,
            precision="auto",
            channels_last=True,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        ),
        epoch=2,
        val_dice=0.75,
        train_images_per_s=31.5,
    )


def test_files_without_the_geometry_fields_load_as_squashed(tmp_path):
    """Checkpoints written before resize, crop and scale existed keep their meaning."""
    payload = payload_as_train_writes_it()
    for key in ("resize", "crop", "scale"):
        del payload["model_config"][key]
    torch.save(payload, tmp_path / "old.pt")
    _, record = load_checkpoint(tmp_path / "old.pt")
    geometry = record.model_config.geometry
    assert (geometry.resize, geometry.crop, geometry.scale) == ("squash", None, 1.0)
    assert geometry.input_size(1072, 1920) == (64, 64)


def test_geometry_fields_round_trip(tmp_path):
    payload = payload_as_train_writes_it()
    payload["model_config"].update(crop=256, scale=0.5)
    torch.save(payload, tmp_path / "m.pt")
    _, record = load_checkpoint(tmp_path / "m.pt")
    assert record.model_config.crop == 256 and record.model_config.scale == 0.5
    assert record.model_config.geometry.input_size(1072, 1920) == (536, 960)


def test_save_writes_plain_types_under_the_same_keys(tmp_path):
    spec = ModelSpec.from_params(tiny_params())
    record = Checkpoint(model_config=spec, epoch=1, val_dice=math.nan, train_images_per_s=2.0)
    save_checkpoint(tmp_path / "m.pt", build_model(TINY, 2), record)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    expected = payload_as_train_writes_it()
    assert list(payload) == list(expected)
    assert list(payload["model_config"]) == list(expected["model_config"])
    assert payload["model_config"]["classes"] == ["background", "foreground"]
    _, back = load_checkpoint(tmp_path / "m.pt")
    assert back.model_config == spec and back.epoch == 1 and math.isnan(back.val_dice)


def _error(tmp_path, payload: dict) -> str:
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(SegpipeError) as err:
        load_checkpoint(tmp_path / "bad.pt")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'bad.pt'}: ")
    return message.removeprefix(f"{tmp_path / 'bad.pt'}: ")


def test_a_missing_field_is_named_in_one_line(tmp_path):
    payload = payload_as_train_writes_it()
    del payload["model_config"]["precision"]
    assert _error(tmp_path, payload) == (
        "not a complete segpipe checkpoint: no model_config.precision (the train stage writes "
        "every field; use the checkpoint it wrote)"
    )
    payload = payload_as_train_writes_it()
    del payload["epoch"], payload["val_dice"]
    assert _error(tmp_path, payload).startswith(
        "not a complete segpipe checkpoint: no epoch, val_dice ("
    )
    del payload["state_dict"]
    assert _error(tmp_path, payload) == "not a complete segpipe checkpoint: no state_dict"


def test_an_unknown_field_is_named_in_one_line(tmp_path):
    payload = payload_as_train_writes_it()
    payload["model_config"]["decoder"] = "fpn"
    assert _error(tmp_path, payload) == (
        "not a segpipe checkpoint of format 1: unknown field model_config.decoder (valid in "
        "model_config: arch, encoder, classes, image_size, precision, channels_last, mean, "
        "std, resize, crop, scale)"
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("image_size", "64", "model_config.image_size is '64', not an integer"),
        ("image_size", True, "model_config.image_size is True, not an integer"),
        ("channels_last", 1, "model_config.channels_last is 1, not true or false"),
        ("precision", "fp8", "model_config.precision is 'fp8', not one of auto, fp32, bf16, fp16"),
        (
            "classes",
            ["background"],
            "model_config.classes is ['background'], not a list of at least 2 names",
        ),
        ("classes", ["background", 1], "model_config.classes[1] is 1, not a string"),
        ("resize", "stretch", "model_config.resize is 'stretch', not one of squash, longest_side"),
        ("crop", "256", "model_config.crop is '256', not an integer"),
        ("scale", "half", "model_config.scale is 'half', not a number"),
        ("mean", [0.5, 0.5], "model_config.mean is [0.5, 0.5], not a list of 3 numbers"),
        ("std", [0.5, "x", 0.5], "model_config.std[1] is 'x', not a number"),
    ],
)
def test_a_field_of_the_wrong_type_is_named_in_one_line(tmp_path, key, value, message):
    payload = payload_as_train_writes_it()
    payload["model_config"][key] = value
    assert _error(tmp_path, payload) == message


def test_state_dict_must_hold_tensors(tmp_path):
    payload = payload_as_train_writes_it()
    payload["state_dict"] = {"weight": [1, 2]}
    assert (
        _error(tmp_path, payload) == "not a complete segpipe checkpoint: no state_dict of tensors"
    )


def test_checkpoints_without_normalisation_load_with_imagenet_values(tmp_path):
    """Files written before checkpoints stored their normalisation were all trained on
    ImageNet-normalised input: they load, with those values, and predict as before."""
    payload = payload_as_train_writes_it()
    del payload["model_config"]["mean"], payload["model_config"]["std"]
    torch.save(payload, tmp_path / "old.pt")
    _, record = load_checkpoint(tmp_path / "old.pt")
    assert record.model_config.normalisation == (IMAGENET_MEAN, IMAGENET_STD)
    del payload["model_config"]["arch"]
    payload["model_config"]["mean"] = list(IMAGENET_MEAN)
    assert _error(tmp_path, payload).startswith(
        "not a complete segpipe checkpoint: no model_config.arch, model_config.std ("
    )


@pytest.mark.parametrize(
    ("encoder", "weights", "mean", "std"),
    [
        ("efficientnet-b3", None, IMAGENET_MEAN, IMAGENET_STD),
        ("resnet18", "imagenet", IMAGENET_MEAN, IMAGENET_STD),
        ("tu-vit_base_patch16_224", None, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ("tu-resnet50.a1_in1k", None, IMAGENET_MEAN, IMAGENET_STD),
        ("tu-inception_v3.tf_in1k", None, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ],
)
def test_encoder_normalisation_comes_from_the_encoders_own_config(encoder, weights, mean, std):
    """timm's pretrained_cfg for tu- encoders, smp's pretrained_settings for the others,
    offline (these names are never downloaded)."""
    got = encoder_normalisation(ModelConfig("Unet", encoder, weights))
    assert [*got[0], *got[1]] == pytest.approx([*mean, *std])


def test_normalisation_is_stored_and_the_predictor_feeds_it(tmp_path):
    spec = ModelSpec.from_params(tiny_params())
    assert spec.normalisation == (IMAGENET_MEAN, IMAGENET_STD)
    odd = dataclasses.replace(spec, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    record = Checkpoint(model_config=odd, epoch=1, val_dice=0.5, train_images_per_s=2.0)
    save_checkpoint(tmp_path / "m.pt", build_model(TINY, 2), record)
    assert torch.load(tmp_path / "m.pt", weights_only=True)["model_config"]["mean"] == [
        0.5,
        0.4,
        0.3,
    ]
    predictor = Predictor(tmp_path / "m.pt", device="cpu")
    image = np.full((64, 64, 3), 128, np.uint8)
    fed = predictor.transform(image=image)["image"]
    expected = (128 / 255 - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.3])
    assert np.allclose(fed[0, 0], expected, atol=1e-5)
