"""The checkpoint's one schema: written as plain types, read back strictly into a dataclass."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch

from segpipe.config import ModelConfig
from segpipe.constants import IMAGENET_MEAN, IMAGENET_STD
from segpipe.errors import SegpipeError
from segpipe.inference.predictor import Predictor
from segpipe.model.checkpoint import Checkpoint, ModelSpec, load_checkpoint, save_checkpoint
from segpipe.model.network import build_model, encoder_normalisation
from segpipe.runtime import Environment, Runtime

from .helpers import tiny_params

ENCODER = "tu-mobilenetv3_small_050"
"""The tiny settings' encoder (2.2M parameters: small checkpoints to write and read)."""
TINY = ModelConfig(arch="Unet", encoder=ENCODER, encoder_weights=None)


@functools.cache
def _tiny_state() -> dict[str, torch.Tensor]:
    """The weights of a fresh two-class TINY model, built once (copy before changing them)."""
    return build_model(TINY, 2).state_dict()


def payload_as_train_writes_it() -> dict:
    """A checkpoint in the exact layout of the files the train stage has been writing."""
    return {
        "format": 1,
        "model_config": {
            "arch": "Unet",
            "encoder": ENCODER,
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
        "state_dict": {k: v.clone() for k, v in _tiny_state().items()},
        "epoch": 2,
        "val_dice": 0.75,
        "train_images_per_s": 31.5,
        "environment": {
            "cpu": "AMD EPYC (AuthenticAMD 25/17/1)",
            "isa": "avx2 fma avx512f avx512_vnni avx512_bf16",
            "kernels": "AVX512",
            "device": "cpu",
            "torch": "2.14.1+cu130",
            "onednn": "3.12.0",
            "cuda": "",
            "threads": 2,
            "precision": "bf16",
        },
    }


def test_the_training_environment_round_trips_and_older_files_have_none(tmp_path):
    payload = payload_as_train_writes_it()
    torch.save(payload, tmp_path / "m.pt")
    _, record = load_checkpoint(tmp_path / "m.pt")
    assert record.environment == Environment(**payload["environment"])
    del payload["environment"]  # written before the environment was recorded
    torch.save(payload, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")[1].environment is None
    runtime = Runtime.choose("fp32", channels_last=False, device=torch.device("cpu"))
    current = Environment.current(runtime)
    assert current.device == "cpu" and current.precision == "fp32" and current.cuda == ""
    assert current.threads == torch.get_num_threads() and current.torch == torch.__version__
    spec = ModelSpec.from_params(tiny_params())
    record = Checkpoint(
        model_config=spec, epoch=1, val_dice=0.5, train_images_per_s=2.0, environment=current
    )
    save_checkpoint(tmp_path / "new.pt", build_model(TINY, 2), record)
    assert load_checkpoint(tmp_path / "new.pt")[1].environment == current


def test_files_in_the_current_layout_load_into_the_record(tmp_path):
    torch.save(payload_as_train_writes_it(), tmp_path / "m.pt")
    _, record = load_checkpoint(tmp_path / "m.pt")
    assert record == Checkpoint(
        model_config=ModelSpec(
            arch="Unet",
            encoder=ENCODER,
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
        environment=Environment(**payload_as_train_writes_it()["environment"]),
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
    record = Checkpoint(
        model_config=spec,
        epoch=1,
        val_dice=math.nan,
        train_images_per_s=2.0,
        environment=Environment(**payload_as_train_writes_it()["environment"]),
    )
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
    fed, _ = predictor.prepare(image)
    expected = (128 / 255 - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.3])
    assert np.allclose(fed[:, 0, 0].numpy(), expected, atol=1e-5)


RANGE_HINT = " (the train stage writes valid values; use the checkpoint it wrote)"

OUT_OF_RANGE = [
    ("image_size", 0, "model_config.image_size: must be a multiple of 32 and >= 32, got 0"),
    ("image_size", -64, "model_config.image_size: must be a multiple of 32 and >= 32, got -64"),
    ("image_size", 100, "model_config.image_size: must be a multiple of 32 and >= 32, got 100"),
    ("crop", 48, "model_config.crop: must be null or a multiple of 32 and >= 32, got 48"),
    ("crop", 0, "model_config.crop: must be null or a multiple of 32 and >= 32, got 0"),
    ("scale", 0.0, "model_config.scale: must be in (0, 4] (1.0 = original resolution), got 0.0"),
    ("scale", -0.5, "model_config.scale: must be in (0, 4]"),
    ("scale", 1e6, "model_config.scale: must be in (0, 4]"),
    ("scale", math.inf, "model_config.scale: must be in (0, 4]"),
    ("scale", math.nan, "model_config.scale: must be in (0, 4]"),
    ("mean", [0.5, math.nan, 0.5], "model_config.mean[1]: must be in [0, 1] (pixels scaled"),
    ("mean", [0.5, 0.5, math.inf], "model_config.mean[2]: must be in [0, 1]"),
    ("mean", [123.7, 116.3, 103.5], "model_config.mean[0]: must be in [0, 1]"),  # 0..255 values
    ("mean", [-0.1, 0.5, 0.5], "model_config.mean[0]: must be in [0, 1]"),
    ("std", [0.0, 0.2, 0.2], "model_config.std[0]: must be in [0.01, 1] (pixels scaled"),
    ("std", [0.2, math.inf, 0.2], "model_config.std[1]: must be in [0.01, 1]"),
    ("std", [0.2, 0.2, math.nan], "model_config.std[2]: must be in [0.01, 1]"),
    ("std", [0.2, -0.2, 0.2], "model_config.std[1]: must be in [0.01, 1]"),
    ("std", [58.4, 57.1, 57.4], "model_config.std[0]: must be in [0.01, 1]"),
    ("std", [1e-6, 0.2, 0.2], "model_config.std[0]: must be in [0.01, 1]"),
    ("classes", ["background", "background"], "model_config.classes: names must be unique"),
    ("classes", ["background", " "], "model_config.classes: class names must be non-empty"),
    ("classes", ["background", "a/b"], "model_config.classes: class names must be non-empty"),
    ("classes", [str(i) for i in range(256)], "model_config.classes: at most 255 classes"),
]


@pytest.mark.parametrize(("key", "value", "message"), OUT_OF_RANGE)
def test_a_model_config_value_out_of_range_is_named_in_one_line(tmp_path, key, value, message):
    """Checked by range as params.yaml is (the same rules, in segpipe.config): a value that
    loads by type would give wrong masks, or a 40-second image, and exit 0."""
    payload = payload_as_train_writes_it()
    payload["model_config"][key] = value
    if key == "classes":  # the weights must fit the classes, or that is what fails first
        payload["state_dict"] = build_model(TINY, len(value)).state_dict()
    text = _error(tmp_path, payload)
    assert text.startswith(message) and text.endswith(RANGE_HINT)


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ({"scale": 0.5}, "model_config.scale: applies to crop training; set model_config.crop"),
        (
            {"crop": 64, "resize": "longest_side"},
            "model_config.resize: with model_config.crop, images keep their aspect",
        ),
        ({"crop": 64, "scale": 4.5}, "model_config.scale: must be in (0, 4]"),
    ],
)
def test_geometry_values_that_do_not_go_together(tmp_path, edits, message):
    payload = payload_as_train_writes_it()
    payload["model_config"].update(edits)
    assert _error(tmp_path, payload).startswith(message)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("epoch", -1, "epoch: must be >= 0, got -1"),
        ("val_dice", 1.5, "val_dice: must be in [0, 1] (or NaN), got 1.5"),
        ("val_dice", -0.1, "val_dice: must be in [0, 1] (or NaN), got -0.1"),
        ("val_dice", math.inf, "val_dice: must be in [0, 1] (or NaN), got inf"),
        ("train_images_per_s", -2.0, "train_images_per_s: must be finite and >= 0, got -2.0"),
        ("train_images_per_s", math.nan, "train_images_per_s: must be finite and >= 0"),
    ],
)
def test_a_record_value_out_of_range_is_named_in_one_line(tmp_path, key, value, message):
    payload = payload_as_train_writes_it()
    payload[key] = value
    assert _error(tmp_path, payload).startswith(message)


def _tensor_names() -> dict[str, str]:
    """One tensor of each kind that a damaged file can hold NaN or inf in."""
    names = list(_tiny_state())
    return {
        "encoder conv": "encoder.model.conv_stem.weight",
        "bn weight": "encoder.model.bn1.weight",
        "bn bias": "encoder.model.bn1.bias",
        "bn running_mean": "encoder.model.bn1.running_mean",
        "bn running_var": "encoder.model.bn1.running_var",
        "decoder": next(n for n in names if n.startswith("decoder.") and n.endswith("weight")),
        "head bias": next(n for n in names if n.startswith("segmentation_head") and "bias" in n),
    }


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("site", list(_tensor_names()))
def test_nan_or_inf_weights_are_refused_at_load_naming_the_tensor(tmp_path, site, value):
    """Every reader (evaluate, predict, export, batch-norm folding) loads through here."""
    payload = payload_as_train_writes_it()
    name = _tensor_names()[site]
    payload["state_dict"][name].view(-1)[0] = value
    text = _error(tmp_path, payload)
    assert text.startswith(f"tensor {name!r} holds 1 NaN or infinite value(s) of ")
    assert "retrain" in text


def test_a_negative_running_variance_is_refused(tmp_path):
    payload = payload_as_train_writes_it()
    payload["state_dict"]["encoder.model.bn1.running_var"][3] = -1.0
    assert _error(tmp_path, payload).startswith(
        "tensor 'encoder.model.bn1.running_var' holds a negative variance"
    )


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (2, "written by a newer segpipe (checkpoint format 2; this one reads format 1); "),
        (17, "written by a newer segpipe (checkpoint format 17;"),
        (0, "not a segpipe checkpoint (format 1)"),
        ("1", "not a segpipe checkpoint (format 1)"),
        (None, "not a segpipe checkpoint (format 1)"),
    ],
)
def test_checkpoint_format_newer_or_foreign(tmp_path, version, message):
    payload = payload_as_train_writes_it()
    payload["format"] = version
    assert _error(tmp_path, payload).startswith(message)


def test_finite_weights_that_overflow_are_refused_by_the_predictor(tmp_path):
    payload = payload_as_train_writes_it()
    payload["state_dict"]["segmentation_head.0.weight"].fill_(3e38)
    torch.save(payload, tmp_path / "huge.pt")
    with pytest.raises(SegpipeError) as err:
        Predictor(tmp_path / "huge.pt", device="cpu")
    assert str(err.value).startswith(
        f"{tmp_path / 'huge.pt'}: the network gives NaN or infinite logits on a test input"
    )
