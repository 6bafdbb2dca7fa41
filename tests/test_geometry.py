"""Input geometry (squash, longest side, crops at a scale), sliding windows and flip TTA: the
sizes they make, padding left out of loss and metrics, and predict equal to evaluate."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from segpipe.commands import predict
from segpipe.config import load_params
from segpipe.constants import IGNORE
from segpipe.data import cache
from segpipe.data.dataset import CachedDataset, build_transform
from segpipe.data.geometry import (
    Geometry,
    crop_steps,
    padded_size,
    resize_pair,
    whole_image_steps,
)
from segpipe.data.images import read_image
from segpipe.data.masks import RULE_FILE, load_rule
from segpipe.data.normalise import IMAGENET, normalise
from segpipe.data.tables import read_split
from segpipe.errors import SegpipeError
from segpipe.evaluation import evaluate
from segpipe.inference.predictor import Predictor
from segpipe.inference.tiling import (
    InferenceOptions,
    flip_averaged,
    logits_of,
    tiled,
    window_starts,
)
from segpipe.metrics import SegmentationMetrics
from segpipe.model.checkpoint import load_checkpoint, save_checkpoint
from segpipe.training.losses import build_loss

from .helpers import call, stage_in_process, tiny_params, write_params

LONGEST = Geometry(resize="longest_side", image_size=128, crop=None, scale=1.0)
CROPS = Geometry(resize="squash", image_size=128, crop=64, scale=0.5)


@pytest.mark.parametrize(("height", "width"), [(1072, 1920), (830, 550), (100, 100), (7, 300)])
def test_longest_side_keeps_the_aspect_and_pads_to_multiples_of_32(height, width):
    h, w = LONGEST.input_size(height, width)
    assert max(h, w) == 128
    assert abs(h / w - height / width) <= 1 / min(h, w)  # rounding only
    ph, pw = padded_size(h, w)
    assert ph % 32 == 0 and pw % 32 == 0 and 0 <= ph - h < 32 and 0 <= pw - w < 32
    assert Geometry.squash(128).input_size(height, width) == (128, 128)


@pytest.mark.parametrize("size", [(64, 64), (37, 91), (300, 200), (129, 128)])
@pytest.mark.parametrize("mask_dtype", [np.uint8, np.uint16])
def test_resizing_is_albumentations_resize_byte_for_byte(size, mask_dtype):
    """Inference resizes without albumentations; the arrays are those its ``Resize`` gives
    (the cache stage and training used it), up and down, for every mask type the data gives."""
    import albumentations as A

    rng = np.random.default_rng(sum(size))
    image = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    mask = rng.integers(0, 6, (128, 128)).astype(mask_dtype)
    expected = A.Resize(*size)(image=image, mask=mask)
    got_image, got_mask = resize_pair(image, mask, size)
    assert got_image.dtype == np.uint8 and got_mask.dtype == mask_dtype
    assert np.array_equal(got_image, expected["image"])
    assert np.array_equal(got_mask, expected["mask"])
    assert resize_pair(image, None, size)[1] is None


@pytest.mark.parametrize(
    "normalisation",
    [IMAGENET, ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))],
)
def test_inference_normalises_as_albumentations_normalize_byte_for_byte(normalisation):
    """Every uint8 value of every channel, normalised as training's ``A.Normalize`` does."""
    import albumentations as A

    values = np.arange(256, dtype=np.uint8)
    image = np.stack([values, values[::-1], np.roll(values, 7)], axis=-1).reshape(16, 16, 3)
    expected = A.Normalize(mean=normalisation[0], std=normalisation[1])(image=image)["image"]
    got = normalise(image, normalisation)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_a_squashed_input_is_what_the_training_transform_makes(tiny_run):
    """The predictor's input for a squashed model is training's validation transform
    (``build_transform`` without augmentation) byte for byte."""
    predictor = Predictor(tiny_run / "model.pt", 0.5, device="cpu")
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (77, 140, 3), dtype=np.uint8)
    transform = build_transform(
        predictor.image_size, augment=False, seed=0, normalisation=predictor.normalisation
    )
    expected = transform(image=image)["image"].transpose(2, 0, 1)
    got, valid = predictor.prepare(image)
    assert valid is None and np.array_equal(got.numpy(), expected)


def test_crops_keep_the_image_at_its_scale():
    assert CROPS.input_size(1072, 1920) == (536, 960)
    assert dataclasses.replace(CROPS, scale=1.0).input_size(1072, 1920) == (1072, 1920)


def test_longest_side_cache_pads_the_square_with_ignored_pixels():
    image = np.full((50, 100, 3), 200, np.uint8)
    mask = np.ones((50, 100), np.uint8)
    geometry = dataclasses.replace(LONGEST, image_size=64)
    cached_image, cached_mask = geometry.for_cache(image, mask)
    assert cached_image.shape == (64, 64, 3) and cached_mask.shape == (64, 64)
    assert (cached_image[:32] == 200).all() and (cached_mask[:32] == 1).all()
    assert (cached_image[32:] == 0).all() and (cached_mask[32:] == IGNORE).all()


def test_crop_training_gives_crops_of_the_stated_size_and_pads_small_images():
    transform = build_transform(128, augment=True, seed=0, geometry=crop_steps(64))
    big = transform(image=np.zeros((100, 150, 3), np.uint8), mask=np.ones((100, 150), np.uint8))
    assert big["image"].shape == (64, 64, 3) and (big["mask"] == 1).all()
    small = transform(image=np.zeros((40, 50, 3), np.uint8), mask=np.ones((40, 50), np.uint8))
    assert small["image"].shape == (64, 64, 3)
    assert (small["mask"][:40, :50] == 1).all() and (small["mask"][40:] == IGNORE).all()
    whole = build_transform(128, augment=False, seed=0, geometry=whole_image_steps())
    out = whole(image=np.zeros((40, 70, 3), np.uint8), mask=np.ones((40, 70), np.uint8))
    assert out["image"].shape == (64, 96, 3) and (out["mask"][:, 70:] == IGNORE).all()


def test_crop_cache_stores_each_image_at_its_scaled_size(tmp_path, splits_dir, params):
    geometry = dataclasses.replace(CROPS, crop=32, scale=0.5)
    rule = load_rule(splits_dir / RULE_FILE, params.data)
    cache.run(splits_dir, tmp_path / "crops", geometry, rule)
    frame = read_split(splits_dir / "train.csv")
    transform = build_transform(64, augment=False, seed=0, geometry=[])
    data = CachedDataset(
        *cache.cache_paths(tmp_path / "crops", "train"),
        transform,
        shapes_path=cache.shapes_path(tmp_path / "crops", "train"),
    )
    assert len(data) == len(frame)
    for i, (height, width) in enumerate(zip(frame["height"], frame["width"], strict=True)):
        image, mask = data[i]
        expected = (round(height * 0.5), round(width * 0.5))
        assert tuple(image.shape[1:]) == expected and tuple(mask.shape) == expected


def test_padding_counts_in_no_loss_and_no_metric():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 32, 32)
    labels = (torch.rand(2, 32, 32) > 0.5).long()
    labels[:, 20:] = IGNORE  # the padded rows
    other = logits.clone()
    other[:, :, 20:] = torch.randn(2, 1, 12, 32) * 10  # anything the model says there
    for loss in ("ce", "dice", "focal", "lovasz", "ce+dice"):
        fn = build_loss(loss, 2, None)
        assert torch.equal(fn(logits, labels), fn(other, labels)), loss
    scores = []
    for prediction in (logits, other):
        metrics = SegmentationMetrics(2)
        metrics.update((prediction[:, 0] > 0).long(), labels)
        scores.append(metrics.compute())
    assert scores[0] == scores[1]


def test_window_starts_cover_the_axis_and_end_flush():
    assert window_starts(64, 64, 0.5) == [0]
    assert window_starts(160, 64, 0.5) == [0, 32, 64, 96]
    assert window_starts(100, 64, 0.0) == [0, 36]
    for length, window, overlap in [(1000, 96, 0.25), (97, 32, 0.9)]:
        starts = window_starts(length, window, overlap)
        assert starts[0] == 0 and starts[-1] == length - window
        assert all(b - a <= window for a, b in zip(starts, starts[1:], strict=False))


def test_tiles_average_overlaps_and_one_covering_tile_is_the_whole_input():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1).eval()
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        whole = conv(x)
        assert torch.equal(tiled(conv, x, 160, 0.5), whole)  # one window: exactly the same
        pointwise = lambda t: t[:, :2] * 3  # noqa: E731 - no context: windows agree exactly
        assert torch.allclose(tiled(pointwise, x, 64, 0.5), pointwise(x))
        inner = tiled(conv, x, 64, 0.5)[:, :, 1:-1, 1:-1]  # differs only at window edges
        assert inner.shape == whole[:, :, 1:-1, 1:-1].shape
        mirrored = flip_averaged(conv)(x)
        expected = (conv(x) + torch.flip(conv(torch.flip(x, dims=(3,))), dims=(3,))) / 2
        assert torch.equal(mirrored, expected)
        options = InferenceOptions(tile=None, overlap=0.0, tta="none")
        assert torch.equal(logits_of(conv, x, options), whole)


def _with_geometry(model_path: Path, out: Path, **geometry: object) -> Path:
    """A copy of the checkpoint at ``model_path`` whose model_config has other geometry."""
    model, record = load_checkpoint(model_path)
    spec = dataclasses.replace(record.model_config, **geometry)
    save_checkpoint(out, model, dataclasses.replace(record, model_config=spec))
    return out


@pytest.mark.parametrize("geometry", [{}, {"resize": "longest_side"}, {"crop": 32}])
def test_a_tile_that_covers_the_input_equals_whole_image_inference(tmp_path, tiny_run, geometry):
    model_path = _with_geometry(tiny_run / "model.pt", tmp_path / "m.pt", **geometry)
    images = [read_image_of(tiny_run, i) for i in range(3)]  # 48..80 px: inputs of <= 96
    whole = Predictor(model_path, device="cpu").predict(images)
    covered = Predictor(
        model_path, device="cpu", options=InferenceOptions(tile=96, overlap=0.5)
    ).predict(images)
    for a, b, image in zip(whole, covered, images, strict=True):
        assert a.shape == image.shape[:2] and np.array_equal(a, b)


def read_image_of(run: Path, index: int) -> np.ndarray:
    return read_image(Path(read_split(run / "splits" / "test.csv")["image"][index]))


def test_longest_side_inference_cuts_the_padding_before_resizing_back(tmp_path, tiny_run):
    model_path = _with_geometry(tiny_run / "model.pt", tmp_path / "m.pt", resize="longest_side")
    predictor = Predictor(model_path, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (50, 90, 3), np.uint8)
    model_input, valid = predictor.prepare(image)
    assert valid == (36, 64) and tuple(model_input.shape) == (3, 64, 64)
    assert predictor.decode_size(50, 90) == (36, 64)
    with torch.no_grad(), predictor.runtime.autocast():  # the predictor's precision and layout
        batch = predictor.runtime.to_device(model_input[None])
        logits = predictor.model(batch).float()[:, :, :36, :64]
    resized = torch.nn.functional.interpolate(logits, size=(50, 90), mode="bilinear")
    expected = (torch.sigmoid(resized[0, 0]) > 0.5).numpy().astype(np.uint8)
    assert np.array_equal(predictor.predict([image])[0], expected)


def test_geometry_and_inference_options_are_validated_in_one_line(tmp_path):
    cases = {
        "train__resize": ("stretch", "train.resize: got 'stretch', expected one of 'squash' | "),
        "train__crop": (48, "train.crop: must be null or a multiple of 32 and >= 32, got 48"),
        "train__scale": (0.5, "train.scale: applies to crop training; set train.crop"),
        "evaluate__tile": (100, "evaluate.tile: must be null (whole image) or a multiple of 32"),
        "evaluate__overlap": (0.99, "evaluate.overlap: must be in [0, 0.75] (the share of"),
        "evaluate__tta": ("rotate", "evaluate.tta: got 'rotate', expected one of 'none' | 'flip'"),
    }
    for key, (value, message) in cases.items():
        path = write_params(tmp_path / f"{key}.yaml", **{key: value})
        with pytest.raises(SegpipeError) as err:
            load_params(path)
        assert str(err.value).startswith(message) and "\n" not in str(err.value), key
    path = write_params(tmp_path / "both.yaml", train__crop=64, train__resize="longest_side")
    with pytest.raises(SegpipeError, match=r"^train.resize: with train.crop, images keep"):
        load_params(path)
    path = write_params(tmp_path / "big.yaml", train__crop=64, train__scale=5.0)
    with pytest.raises(SegpipeError, match=r"^train.scale: must be in \(0, 4\]"):
        load_params(path)


def test_tta_predict_writes_exactly_the_masks_tta_evaluate_scored(tmp_path, tiny_run):
    model_path = _with_geometry(tiny_run / "model.pt", tmp_path / "m.pt", resize="longest_side")
    edits = {"evaluate__tile": 32, "evaluate__overlap": 0.5, "evaluate__tta": "flip"}
    params_file = write_params(tmp_path / "params.yaml", tiny_params(), **edits)
    evaluate.run(
        load_params(params_file),
        model_path,
        tiny_run / "splits",
        tmp_path / "evaluate.json",
        tmp_path / "per_image.csv",
        tmp_path / "predictions",
    )
    images = tmp_path / "test_images"
    images.mkdir()
    test = read_split(tiny_run / "splits" / "test.csv")
    for image in test["image"]:
        shutil.copy2(image, images)
    predict.run(model_path, images, tmp_path / "out", params_path=params_file)
    plain = tmp_path / "plain"
    predict.run(model_path, images, plain, params_path=write_params(tmp_path / "p.yaml"))
    differs = False
    for stem in test["stem"]:
        written = (tmp_path / "out" / f"{stem}.png").read_bytes()
        assert written == (tmp_path / "predictions" / f"{stem}.png").read_bytes(), stem
        differs |= written != (plain / f"{stem}.png").read_bytes()
    assert differs  # tiles and TTA did change some mask: the comparison is not vacuous


@pytest.mark.slow
@pytest.mark.parametrize(
    "edits",
    [
        {
            "train__resize": "longest_side",
            "evaluate__tile": 32,
            "evaluate__overlap": 0.0,
            "evaluate__tta": "flip",
        },
        {"train__crop": 32, "train__scale": 0.75, "evaluate__tile": 64, "evaluate__tta": "flip"},
    ],
    ids=["longest_side", "crops"],
)
def test_stages_with_geometry_tiles_and_tta_and_predict_writes_what_evaluate_scored(
    tmp_path, tiny_run, edits
):
    params_file = write_params(tmp_path / "params.yaml", tiny_params(), **edits)
    splits = tiny_run / "splits"
    stage_in_process(
        "cache.py", "--params", params_file, "--splits", splits, "--out", tmp_path / "cache"
    )
    stage_in_process(
        "train.py", "--params", params_file, "--cache", tmp_path / "cache",
        "--model", tmp_path / "model.pt", "--live", tmp_path / "live",
    )  # fmt: skip
    stage_in_process(
        "evaluate.py", "--params", params_file, "--model", tmp_path / "model.pt",
        "--splits", splits, "--metrics", tmp_path / "evaluate.json",
        "--per-image", tmp_path / "per_image.csv", "--predictions", tmp_path / "predictions",
    )  # fmt: skip
    _, record = load_checkpoint(tmp_path / "model.pt")
    assert record.model_config.geometry == Geometry.from_train(load_params(params_file).train)
    test = read_split(splits / "test.csv")
    result = call(
        predict.main, "--model", tmp_path / "model.pt", "--input", tiny_run / "raw" / "images",
        "--output", tmp_path / "out", "--params", params_file,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for stem in test["stem"]:
        predicted = (tmp_path / "out" / f"{stem}.png").read_bytes()
        assert predicted == (tmp_path / "predictions" / f"{stem}.png").read_bytes(), stem
    assert not math.isnan(record.val_dice)
