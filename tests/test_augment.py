"""train.augment: the transforms list, applied to image and mask alike, seeded, checked."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from segpipe import check
from segpipe.config import AugmentStep, parse_augment
from segpipe.constants import IMAGENET_MEAN, IMAGENET_STD
from segpipe.data.augment import AUGMENTATIONS, build_augmentations
from segpipe.data.dataset import build_transform
from segpipe.errors import SegpipeError

from .helpers import REPO, write_params


def pattern(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric mask (an L-shaped object off-centre) and a grey image that draws it: the
    image is white exactly where the mask is foreground."""
    mask = np.zeros((size, size), np.uint8)
    mask[8:40, 10:20] = 1
    mask[30:40, 10:50] = 1
    return np.repeat(mask[..., None] * 255, 3, axis=2), mask


def foreground_of(image: np.ndarray) -> np.ndarray:
    """Undo the normalisation and read the drawn object back."""
    rgb = image * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
    return (rgb.mean(axis=2) > 0.5).astype(np.uint8)


def steps(value: list) -> tuple[AugmentStep, ...]:
    return parse_augment(value)


def test_default_list_reproduces_the_fixed_flip_and_colour_jitter():
    """``augment: true`` draws exactly what the fixed pipeline drew for the same seed, so the
    default run's numbers do not move."""
    image, mask = pattern()
    image = (image * 0.5 + np.arange(64, dtype=np.uint8)[None, :, None]).astype(np.uint8)
    fixed = A.Compose(
        [
            A.Resize(64, 64),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.5),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ],
        seed=7,
    )
    listed = build_transform(64, augment=True, seed=7)
    for _ in range(6):
        a, b = fixed(image=image, mask=mask), listed(image=image, mask=mask)
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])


@pytest.mark.parametrize(
    "value",
    [
        [{"HorizontalFlip": {"p": 1.0}}],
        [{"VerticalFlip": {"p": 1.0}}, {"RandomRotate90": {"p": 1.0}}],
        [{"Affine": {"rotate": [25, 25], "scale": [1.2, 1.2], "interpolation": 0, "p": 1.0}}],
        [{"RandomResizedCrop": {"scale": [0.5, 0.6], "interpolation": 0, "p": 1.0}}],
    ],
)
def test_geometric_transforms_move_image_and_mask_alike(value):
    image, mask = pattern()
    out = build_transform(64, augment=steps(value), seed=3)(image=image, mask=mask)
    assert out["image"].shape[:2] == out["mask"].shape == (64, 64)
    assert not np.array_equal(out["mask"], mask), "the transform changed the geometry"
    assert np.array_equal(foreground_of(out["image"]), out["mask"])


def test_colour_transforms_leave_the_mask_alone():
    image, mask = pattern()
    value = [{"ColorJitter": {"brightness": 0.5, "p": 1.0}}, {"GaussNoise": {"p": 1.0}}]
    transform = build_transform(64, augment=steps(value), seed=0)
    out = transform(image=image, mask=mask)
    assert np.array_equal(out["mask"], mask)
    plain = build_transform(64, augment=False, seed=0)(image=image, mask=mask)
    assert not np.array_equal(out["image"], plain["image"])


def test_augment_list_is_seeded():
    image, mask = pattern()
    value = [{"Affine": {"rotate": [-30, 30], "p": 1.0}}, {"HorizontalFlip": {}}]

    def draws(seed: int) -> list[np.ndarray]:
        transform = build_transform(64, augment=steps(value), seed=seed)
        return [transform(image=image, mask=mask)["mask"] for _ in range(4)]

    assert all(np.array_equal(a, b) for a, b in zip(draws(1), draws(1), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(draws(1), draws(2), strict=True))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([{"Blur2": {}}], "train.augment[0]: unknown transform 'Blur2' (valid: HorizontalFlip, "),
        (
            [{"HorizontalFlip": {}}, {"HorizontalFlip": {"prob": 0.5}}],
            "train.augment[1]: HorizontalFlip has no argument 'prob' (valid: p)",
        ),
        (
            [{"ColorJitter": {"brightness": -1}}],
            "train.augment[0]: ColorJitter(brightness=-1): brightness",
        ),
        ([{"Affine": {"rotate": "a lot"}}], "train.augment[0]: Affine(rotate='a lot'): rotate"),
    ],
)
def test_bad_transforms_and_arguments_are_one_line_errors(value, message):
    with pytest.raises(SegpipeError) as err:
        build_augmentations(steps(value), 64)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value) and "pydantic" not in str(err.value)


def test_every_listed_transform_builds_with_its_defaults():
    built = build_augmentations(tuple(AugmentStep(name, ()) for name in AUGMENTATIONS), 64)
    assert [type(t).__name__ for t in built] == list(AUGMENTATIONS)


def test_check_stage_reports_a_bad_transform(tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", train__augment=[{"Flip": {"p": 0.5}}])
    assert check.main(["--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: train.augment[0]: unknown transform 'Flip'")
    assert err.count("\n") == 1
    assert check.main(["--params", str(REPO / "params.yaml")]) == 0


SIZE_CHANGING = [
    ({"Rotate": {"crop_border": True}}, "crop_border: true changes the image size"),
    ({"Rotate": {"limit": [10, 20], "crop_border": True}}, "crop_border: true changes"),
    ({"Affine": {"fit_output": True}}, "fit_output: true changes the image size"),
    ({"Affine": {"rotate": [-30, 30], "fit_output": True}}, "fit_output: true changes"),
    ({"RandomResizedCrop": {"size": [100, 100]}}, "changes the image size (64x64 -> 100x100)"),
    ({"RandomResizedCrop": {"size": [32, 64]}}, "changes the image size (64x64 -> 32x64)"),
    (
        {"RandomResizedCrop": {"size": [96, 96], "p": 0.1}},  # rarely drawn: refused all the same
        "changes the image size (64x64 -> 96x96)",
    ),
]


@pytest.mark.parametrize(("step", "message"), SIZE_CHANGING)
def test_transforms_that_change_the_size_are_refused(step, message):
    """Batches stack after the transforms: a size change would die in collate, mid-training."""
    with pytest.raises(SegpipeError) as err:
        build_augmentations(steps([{"HorizontalFlip": {}}, step]), 64)
    text = str(err.value)
    assert text.startswith(f"train.augment[1]: {next(iter(step))}(") and message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    "step",
    [
        {"Rotate": {"crop_border": False}},
        {"Affine": {"rotate": [-30, 30], "fit_output": False}},
        {"RandomResizedCrop": {"size": [64, 64]}},
        {"ElasticTransform": {}},
    ],
)
def test_transforms_that_keep_the_size_pass(step):
    assert len(build_augmentations(steps([step]), 64)) == 1


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ({"train__augment": [{"Rotate": {"crop_border": True}}]}, "crop_border: true"),
        ({"train__augment": [{"Affine": {"fit_output": True}}]}, "fit_output: true"),
        (  # crop training augments crop x crop windows: the model's image_size is not the size
            {"train__crop": 64, "train__augment": [{"RandomResizedCrop": {"size": [256, 256]}}]},
            "(64x64 -> 256x256)",
        ),
    ],
)
def test_check_stage_refuses_size_changing_transforms(tmp_path, capsys, edits, message):
    params = write_params(tmp_path / "params.yaml", **edits)
    assert check.main(["--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: train.augment[0]: ") and message in err
    assert err.count("\n") == 1
