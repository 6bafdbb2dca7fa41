"""Every mode a mask file can come in is read by what it encodes, or refused by name: objects
in the alpha channel alone, palette transparency, 16- and 32-bit levels, floats that are whole
numbers or soft, CMYK and other colour spaces, and images (masks and photos) of several frames."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.data.images import UnreadableImageError, read_image
from segpipe.data.masks import mask_values, open_mask, rule_of_files
from segpipe.errors import SegpipeError

from .test_bad_inputs import Case, error_line, warnings_of
from .test_masks import SIZE, disc

OBJECT = disc(3)
"""The object every mask of these tests draws; the masks' rule must give it back exactly."""


def grey(values: tuple[int, int], mode: str = "L") -> Image.Image:
    """The object as ``values[1]`` on ``values[0]``, in a greyscale ``mode``."""
    array = np.where(OBJECT, values[1], values[0])
    dtype = {"L": np.uint8, "I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    return Image.fromarray(array.astype(dtype))


def with_alpha(
    colour: tuple[int, ...], alpha_of: Callable[[np.ndarray], np.ndarray]
) -> Image.Image:
    """An RGBA mask: ``colour`` everywhere, ``alpha_of(OBJECT)`` as its alpha."""
    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = alpha_of(OBJECT)
    return Image.fromarray(rgba, mode="RGBA")


def cutout(mode: str) -> Image.Image:
    """White object, opaque, on transparent black: colour and alpha agree."""
    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    rgba[OBJECT] = (255, 255, 255, 255)
    return Image.fromarray(rgba, mode="RGBA").convert(mode)


def palette_mask(transparency: int | None) -> Image.Image:
    image = Image.fromarray(OBJECT.astype(np.uint8), mode="P")
    image.putpalette([255, 255, 255, 200, 30, 30] + [0] * 762)  # background drawn white
    if transparency is not None:
        image.info["transparency"] = transparency
    return image


def alpha_only(mode: str) -> Image.Image:
    """The object in the alpha channel alone: the colour is one everywhere."""
    return with_alpha((255, 255, 255), lambda o: o.astype(np.uint8) * 255).convert(mode)


READABLE: dict[str, Callable[[], Image.Image]] = {
    "1": lambda: Image.fromarray(OBJECT).convert("1"),
    "L 0/255": lambda: grey((0, 255)),
    "L 0/1": lambda: grey((0, 1)),
    "P": lambda: palette_mask(None),
    "P, background index transparent": lambda: palette_mask(0),
    "P, object index transparent": lambda: palette_mask(1),
    "PA, object in alpha": lambda: alpha_only("RGBA").convert("PA"),
    "LA, object in alpha": lambda: alpha_only("LA"),
    "La, object in alpha": lambda: alpha_only("LA").convert("La"),
    "LA, cut-out on black": lambda: cutout("LA"),
    "LA, opaque": lambda: grey((0, 255)).convert("LA"),
    "RGB grey": lambda: grey((0, 255)).convert("RGB"),
    "RGBA, object in alpha (white)": lambda: alpha_only("RGBA"),
    "RGBA, object in alpha (black)": lambda: with_alpha((0, 0, 0), lambda o: o * 255),
    "RGBA, cut-out on black": lambda: cutout("RGBA"),
    "RGBA, opaque": lambda: grey((0, 255)).convert("RGBA"),
    "RGBa, cut-out on black": lambda: cutout("RGBa"),
    "RGBX": lambda: grey((0, 255)).convert("RGBX"),
    "CMYK": lambda: grey((0, 255)).convert("RGB").convert("CMYK"),
    "YCbCr": lambda: grey((0, 255)).convert("RGB").convert("YCbCr"),
    "HSV": lambda: grey((0, 255)).convert("RGB").convert("HSV"),
    "I 0/1": lambda: grey((0, 1), "I"),
    "I 0/255": lambda: grey((0, 255), "I"),
    "I;16 0/65535": lambda: grey((0, 65535), "I;16"),
    "I;16 0/1": lambda: grey((0, 1), "I;16"),
    "I;16B 0/1": lambda: grey((0, 1), "I;16").convert("I;16B"),
    "F 0.0/1.0": lambda: grey((0, 1), "F"),
    "F 0.0/255.0": lambda: grey((0, 255), "F"),
}


@pytest.mark.parametrize("name", sorted(READABLE))
def test_each_mode_is_read_by_what_it_encodes(tmp_path, name):
    image = READABLE[name]()
    raw, colour = mask_values(image, tmp_path / "m.png")
    assert not colour
    rule = rule_of_files_of(raw)
    assert (rule == OBJECT).all(), (name, np.unique(raw))


def rule_of_files_of(raw: np.ndarray) -> np.ndarray:
    """The labels the split stage's rule gives ``raw`` as a mask's values (two classes)."""
    from segpipe.data.masks import MaskValues, decide_rule

    values = MaskValues.of(Path("m.png"), raw, colour=False)
    rule = decide_rule([values], 2)
    return rule.to_classes(raw, Path("m.png"))


REFUSED: dict[str, tuple[Callable[[], Image.Image], str]] = {
    "RGBA, colour and alpha disagree": (
        lambda: Image.fromarray(
            np.where(OBJECT[..., None], [0, 0, 0, 255], [255, 255, 255, 0]).astype(np.uint8),
            mode="RGBA",
        ),
        "a RGBA mask whose colours and transparency disagree (",
    ),
    "LA, colour and alpha disagree": (
        lambda: Image.fromarray(
            np.dstack([np.where(OBJECT, 0, 255), np.where(OBJECT, 255, 0)]).astype(np.uint8),
            mode="LA",
        ),
        "a LA mask whose colours and transparency disagree",
    ),
    "F soft values": (lambda: grey((0, 1), "F").point(lambda v: v * 0.6), "e.g. 0.6"),
    "F NaN": (
        lambda: Image.fromarray(np.where(OBJECT, np.nan, 0).astype(np.float32)),
        "NaN or infinite",
    ),
    "F infinite": (
        lambda: Image.fromarray(np.where(OBJECT, np.inf, 0).astype(np.float32)),
        "NaN or infinite",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_modes_that_hide_their_meaning_are_refused_by_name(tmp_path, name):
    make, reason = REFUSED[name]
    with pytest.raises(SegpipeError) as caught:
        mask_values(make(), tmp_path / "m.png")
    assert str(caught.value).startswith(f"{tmp_path / 'm.png'}: "), caught.value
    assert reason in str(caught.value)


def test_colour_reading_honours_transparency_and_floats(tmp_path):
    path = tmp_path / "m.png"
    codes, colour = mask_values(alpha_only("RGBA"), path, colours=True)
    assert colour and set(np.unique(codes)) == {0, 0xFFFFFF}  # the alpha read as grey colours
    codes, _ = mask_values(palette_mask(0), path, colours=True)
    assert set(np.unique(codes)) == {0xFFFFFF, 0xC81E1E}  # a viewer's colours, opaque object
    codes, _ = mask_values(grey((0, 2), "F"), path, colours=True)
    assert set(np.unique(codes)) == {0, 0x020202}
    with pytest.raises(SegpipeError, match="outside 0..255"):
        mask_values(grey((0, 300), "F"), path, colours=True)


def several_frames(fmt: str) -> bytes:
    first = Image.fromarray(OBJECT.astype(np.uint8) * 255)
    second = Image.fromarray(np.roll(OBJECT, 5, axis=1).astype(np.uint8) * 255)
    buffer = io.BytesIO()
    first.save(buffer, fmt, save_all=True, append_images=[second])
    return buffer.getvalue()


@pytest.mark.parametrize("read", [open_mask, read_image], ids=["mask", "photo"])
@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "PNG"])
def test_images_of_several_frames_are_refused(tmp_path, fmt, read):
    path = tmp_path / f"m.{fmt.lower()}"
    path.write_bytes(several_frames(fmt))
    with pytest.raises(UnreadableImageError, match="2 frames, an animated or multi-page image"):
        read(path)


def test_a_cameras_multi_picture_jpeg_is_read_at_its_photo(tmp_path):
    """MPO (CIPA DC-007): the first frame is the photo; the others are previews or views."""
    photo = np.zeros((32, 48, 3), dtype=np.uint8)
    photo[:, :24] = 200
    path = tmp_path / "camera.jpg"
    Image.fromarray(photo).save(
        path, "MPO", save_all=True, append_images=[Image.fromarray(photo[:16, :24])], quality=95
    )
    with Image.open(path) as image:
        assert image.format == "MPO" and image.n_frames == 2
    read = read_image(path)
    assert read.shape == photo.shape and np.abs(read.astype(int) - photo).max() <= 8


SAVED = {  # files as they are written in these modes; each is read back as OBJECT
    "1.png": lambda: Image.fromarray(OBJECT).convert("1"),
    "l.png": lambda: grey((0, 255)),
    "p_transparent.png": lambda: palette_mask(0),
    "la_alpha.png": lambda: alpha_only("LA"),
    "rgba_alpha.png": lambda: alpha_only("RGBA"),
    "i16.png": lambda: grey((0, 65535), "I;16"),
    "i16.tif": lambda: grey((0, 1), "I;16"),
    "i32.tif": lambda: grey((0, 255), "I"),
    "f.tif": lambda: grey((0, 1), "F"),
    "cmyk.tif": lambda: grey((0, 255)).convert("RGB").convert("CMYK"),
    "single.gif": lambda: grey((0, 255)),
}


@pytest.mark.parametrize("name", sorted(SAVED))
def test_saved_files_of_each_mode_read_back(tmp_path, name):
    path = tmp_path / name
    SAVED[name]().save(path)
    rule = rule_of_files([path], 2)
    assert (rule.read(path) == OBJECT).all(), (name, Image.open(path).mode)


def test_the_split_stage_names_a_refused_mask_and_skips_several_frames(tmp_path):
    case = Case(tmp_path)
    gif = case.raw / "masks" / "p1.gif"
    (case.raw / "masks" / "p1.png").unlink()
    gif.write_bytes(several_frames("GIF"))
    warnings = warnings_of(case.split())
    assert (
        f"skipped {gif}: cannot read mask (2 frames, an animated or multi-page image"
        in (warnings[0])
    )
    assert case.report()["skipped_by_kind"] == {"unreadable_mask": 1}
    soft = case.raw / "masks" / "p2.tif"
    (case.raw / "masks" / "p2.png").unlink()
    grey((0, 1), "F").point(lambda v: v * 0.6).save(soft)
    error_line(case.split(), soft, "a floating-point mask with values between whole numbers")
