"""Mask files as class indices, read by one rule for the whole dataset.

The split stage reads every mask once, keeps a histogram of its values (:class:`MaskValues`)
and decides one rule from all of them (:func:`decide_rule`). It writes the rule to
``mask_rule.json`` beside the splits; cache, evaluate, plot and the Dataset read that file
(:func:`load_rule`) and apply :meth:`MaskRule.to_classes`, the one place where raw mask values
become class indices. No mask is read by a rule of its own: a 0/1 mask among 0/255 ones, or a
red mask read as grey, would silently lose its objects.

Rules (values after removing ``data.ignore_index``):

- ``colours``: ``data.mask_colours`` is set: every pixel's colour is one of the declared colours.
- ``0/1`` (two classes): all values in {0, 1}; 1 is foreground.
- ``0/255`` (two classes): all values in {0, 255} (or 65535 in 16-bit files); 255 is foreground.
- ``grey`` (two classes): many grey levels clustered at 0 and 255, as JPEG-compressed 0/255
  masks have (see :func:`_grey_levels`); values >= 128 are foreground.
- ``indices`` (more classes): values are class indices 0..N-1.

Anything else stops the split stage with one line naming the values found and what to set.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segpipe.config import DataConfig
from segpipe.constants import IGNORE
from segpipe.data.images import open_image, read_image, short_list
from segpipe.errors import SegpipeError

RULE_FILE = "mask_rule.json"
"""The split stage's decision, in its output folder; every later reader of masks loads it."""
RULES = ("0/1", "0/255", "grey", "indices", "colours")
FOREGROUND_FROM = 128
"""The 0/255 and grey rules: values from here up are foreground."""
GREY_MIN_LEVELS = 8
GREY_MAX_MIDDLE = 0.05
"""The grey rule: at least 8 distinct values, at most 5% of pixels between 64 and 191; or at
least 3 values and none between 64 and 191 (JPEG at quality 100 leaves 0, 1, 254, 255)."""
NOISE_ONES = 0.01
"""The grey rule: a mask holding only 0 and 1 is JPEG noise (read as background) if at most 1%
of its pixels are 1; with more, it is a 0/1 mask among 0/255 ones, and the split stops."""

_INDEX_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")
"""Modes whose pixel values are read as they are: greyscale levels or palette indices."""
Colour = tuple[int, int, int]


def colour_codes(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 colours as HxW int32 codes ``r << 16 | g << 8 | b`` (comparable as ints)."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _code(colour: Sequence[int]) -> int:
    r, g, b = colour
    return (int(r) << 16) | (int(g) << 8) | int(b)


def _colour(values: Sequence[int]) -> Colour:
    r, g, b = values
    return int(r), int(g), int(b)


def colour_text(code: int) -> str:
    """A colour code as ``[r, g, b]``, as ``data.mask_colours`` spells it."""
    return f"[{code >> 16 & 255}, {code >> 8 & 255}, {code & 255}]"


def _as_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("P", "PA"):  # via RGBA: avoids PIL's palette-transparency warning
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def open_mask(path: Path) -> Image.Image:
    """A mask file decoded as stored (masks are drawn on the photo as shown, so no EXIF turn
    applies), refused if it holds several frames (an animated GIF, a multi-page TIFF): which
    frame is the mask is unknown.

    Raises:
        UnreadableImageError: as :func:`~segpipe.data.images.open_image`, or several frames.
    """
    return open_image(path, upright=False)


def mask_values(
    image: Image.Image, path: Path, *, colours: bool = False
) -> tuple[np.ndarray, bool]:
    """The raw HxW values of a decoded mask, and whether they are colour codes.

    With ``colours`` (``data.mask_colours`` is set) every mask is read as the colours a viewer
    shows (a grey level v is the colour [v, v, v], a palette index its palette colour).
    Otherwise palette masks give their indices, greyscale masks (8, 16 or 32 bits, or floats
    that are whole numbers) their levels, 1-bit masks 0/255, RGB(A) masks whose pixels are all
    grey their grey level, and other colour masks colour codes (:func:`colour_codes`), which
    only declared colours can read. An alpha channel is read by :func:`_settle_alpha`.

    Raises:
        SegpipeError: naming ``path``: a float mask with soft values, transparency that
            disagrees with the colours, or a mode that has no colours.
    """
    image = _settle_alpha(image, path, colours=colours)
    if image.mode == "F":
        return _float_values(image, path, colours=colours)
    if colours:
        return colour_codes(_rgb_of(image, path)), True
    if image.mode in _INDEX_MODES:
        return np.asarray(image), False
    if image.mode == "1":
        return np.asarray(image.convert("L")), False
    rgb = _rgb_of(image, path)
    if ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
        return np.ascontiguousarray(rgb[..., 0]), False
    return colour_codes(rgb), True


def _rgb_of(image: Image.Image, path: Path) -> np.ndarray:
    """The colours a viewer shows, for any mode PIL converts (CMYK, YCbCr, LAB, HSV...)."""
    try:
        return _as_rgb(image)
    except (ValueError, OSError):
        raise SegpipeError(
            f"{path}: a mask in mode {image.mode}, which has no RGB colours to read; save it as "
            "a greyscale, palette or RGB PNG"
        ) from None


_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
"""Modes with an alpha channel, the last one (a palette image's ``transparency`` is no channel:
see :func:`_settle_alpha`)."""


def _settle_alpha(image: Image.Image, path: Path, *, colours: bool) -> Image.Image:
    """``image`` without its alpha channel, read by what it encodes.

    Opaque everywhere: the colours (or levels, or palette indices). One colour everywhere and
    the alpha varies: the objects are in the alpha channel alone (a cut-out), which is read as
    greyscale levels. Both vary: the colours, if every fully transparent pixel is black (index
    0), as cut-outs on black are; else which one marks the objects is unclear, and the mask is
    refused. A palette image's transparency (mode P) belongs to its indices, so the indices (or
    with ``colours``, their palette colours) say all it encodes.
    """
    if image.mode == "PA" and colours:
        image = image.convert("RGBA")
    if image.mode not in _ALPHA_MODES:
        return image
    pixels = np.asarray(image)
    base, alpha = pixels[..., :-1], pixels[..., -1]
    kept = {"RGBA": "RGB", "RGBa": "RGB"}.get(image.mode, "L")
    as_base = Image.fromarray(np.ascontiguousarray(base if kept == "RGB" else base[..., 0]))
    if image.mode == "RGBa":  # premultiplied: the colours of opaque pixels are as stored
        as_base = image.convert("RGBA").convert("RGB")
    if alpha.min() == 255:
        return as_base
    flat = base.reshape(-1, base.shape[-1])
    if (flat == flat[0]).all():
        return Image.fromarray(np.ascontiguousarray(alpha))
    hidden = alpha == 0
    if not base[hidden].any():
        return as_base
    coloured = int(base[hidden].any(axis=-1).sum())
    raise SegpipeError(
        f"{path}: a {image.mode} mask whose colours and transparency disagree ({coloured} fully "
        "transparent pixels are not black), so which marks the objects is unclear; save it "
        "without transparency, or with the objects in the alpha channel alone"
    )


def _float_values(image: Image.Image, path: Path, *, colours: bool) -> tuple[np.ndarray, bool]:
    """A floating-point (mode F) mask's values, which must be whole numbers: soft values (0.6)
    are no class and no convention, and truncating them would drop the objects."""
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise SegpipeError(
            f"{path}: a floating-point mask holding NaN or infinite values; save class indices "
            "(whole numbers, e.g. 0/1 or 0/255)"
        )
    soft = values != np.round(values)
    if soft.any():
        raise SegpipeError(
            f"{path}: a floating-point mask with values between whole numbers (e.g. "
            f"{values[soft][0]:g}, {soft.mean():.1%} of the pixels): soft masks are not read; "
            "threshold them and save class indices (whole numbers, e.g. 0/1 or 0/255)"
        )
    whole = values.astype(np.int64)
    if not colours:
        return whole, False
    if whole.min() < 0 or whole.max() > 255:
        raise SegpipeError(
            f"{path}: a floating-point mask with values outside 0..255, which are no grey "
            "colour of data.mask_colours; save it as an 8-bit greyscale or RGB PNG"
        )
    return whole * 0x010101, True


@dataclasses.dataclass(frozen=True)
class MaskRule:
    """How raw mask values become class indices: the same for every mask of a dataset.

    ``rule`` is one of :data:`RULES`. Pixels of value ``ignore_index`` (with colours: of the
    colour ``ignore_colour``, or else the grey [v, v, v]) become
    :data:`~segpipe.constants.IGNORE`.
    """

    rule: str
    num_classes: int
    ignore_index: int | None = None
    colours: tuple[Colour, ...] | None = None
    ignore_colour: Colour | None = None

    @classmethod
    def predictions(cls, num_classes: int) -> MaskRule:
        """How the evaluate stage's predicted masks read back: 0/255 or class-index PNGs."""
        return cls("0/255" if num_classes == 2 else "indices", num_classes)

    def to_classes(
        self, values: np.ndarray, path: Path, counts: np.ndarray | None = None
    ) -> np.ndarray:
        """Raw values (see :func:`mask_values`) as uint8 class indices, :data:`IGNORE` where
        ignored. ``values`` may be a mask's pixels or the distinct values of its histogram
        (``counts``: pixels of each, for error messages).

        Raises:
            SegpipeError: naming ``path``, for a value or colour that fits no class.
        """
        left_out = self.left_out()
        ignored = None if left_out is None else values == left_out
        if self.rule == "colours":
            labels = self._colour_classes(values, ignored, path, counts)
        elif self.rule in ("0/255", "grey"):
            labels = (values >= FOREGROUND_FROM).astype(np.uint8)
        else:
            labels = self._index_classes(values, ignored, path)
        if ignored is not None:
            labels[ignored] = IGNORE
        return labels

    def _index_classes(
        self, values: np.ndarray, ignored: np.ndarray | None, path: Path
    ) -> np.ndarray:
        kept = values[~ignored] if ignored is not None else values
        n = self.num_classes
        if kept.size and (kept.min() < 0 or kept.max() >= n):
            found = np.unique(kept)
            bad = found[(found < 0) | (found >= n)]
            hint = (
                "; if it marks pixels to leave out, set data.ignore_index to it"
                if bad.size == 1 and self.ignore_index is None
                else ""
            )
            raise SegpipeError(
                f"{path}: mask values [{short_list(bad.tolist())}] fit none of the "
                f"{n} classes of data.classes (expected 0..{n - 1}; the mask "
                f"holds [{short_list(np.unique(values).tolist())}]){hint}"
            )
        return values.astype(np.uint8)

    def _colour_classes(
        self,
        codes: np.ndarray,
        ignored: np.ndarray | None,
        path: Path,
        counts: np.ndarray | None,
    ) -> np.ndarray:
        table = np.array([_code(c) for c in self.colours or ()], dtype=np.int64)
        order = np.argsort(table)
        at = np.searchsorted(table[order], codes).clip(max=len(table) - 1)
        known = table[order][at] == codes
        if ignored is not None:
            known |= ignored
        if not known.all():
            if counts is None:  # pixels: count each colour
                bad, pixels = np.unique(codes[~known], return_counts=True)
            else:  # a histogram's distinct values and their counts
                bad, pixels = codes[~known], counts[~known]
            raise SegpipeError(self._undeclared(bad, pixels, path))
        return order[at].astype(np.uint8)

    def _undeclared(self, codes: np.ndarray, pixels: np.ndarray, path: Path) -> str:
        """The error for colours of ``path`` that are not in ``data.mask_colours``."""
        most = np.argsort(-pixels, kind="stable")
        found = [f"{colour_text(int(codes[i]))} ({int(pixels[i])} px)" for i in most]
        lossy = (
            " (JPEG is lossy: save colour masks as PNG)"
            if Path(path).suffix.lower() in (".jpg", ".jpeg")
            else ""
        )
        declared = ", ".join(colour_text(_code(c)) for c in self.colours or ())
        top = colour_text(int(codes[most[0]]))
        border = (
            f", or, if it marks borders or unlabelled pixels, data.ignore_colour: {top}"
            if self.ignore_colour is None and len(codes) == 1
            else ""
        )
        return (
            f"{path}: colours {short_list(found, 3)} are not in data.mask_colours "
            f"({declared}){lossy}; add each with its class to data.classes, or fix the mask"
            f"{border}"
        )

    def read(self, path: Path) -> np.ndarray:
        """A mask file as HxW uint8 class indices, read as stored: masks are drawn on the photo
        as shown, so no EXIF orientation applies to them."""
        values, colour = mask_values(open_mask(path), path, colours=self.rule == "colours")
        if colour and self.rule != "colours":  # changed since the split stage decided
            raise SegpipeError(
                f"{path}: a colour mask, but the split stage read the masks as {self.rule}; "
                "rerun it (dvc repro)"
            )
        return self.to_classes(values, path)

    def left_out(self) -> int | None:
        """The raw value (with colours, the colour code) that becomes :data:`IGNORE`:
        ``ignore_colour`` if set, else ``ignore_index`` (with colours, its grey)."""
        if self.colours and self.ignore_colour is not None:
            return _code(self.ignore_colour)
        if self.ignore_index is None:
            return None
        return self.ignore_index * 0x010101 if self.colours else self.ignore_index

    def describe(self) -> str:
        """One sentence for the split report and logs."""
        n = self.num_classes
        text = {
            "0/1": "0/1 masks: 1 is foreground",
            "0/255": "0/255 masks: 255 is foreground",
            "grey": (
                "grey levels clustered at 0 and 255, as in JPEG-compressed 0/255 masks: values "
                f">= {FOREGROUND_FROM} are foreground"
            ),
            "indices": f"class-index masks: value k is class k (0..{n - 1})",
            "colours": "colour masks (data.mask_colours): "
            + ", ".join(
                f"{colour_text(_code(c))} is class {i}" for i, c in enumerate(self.colours or ())
            ),
        }[self.rule]
        left_out = self.left_out()
        if self.colours and self.ignore_colour is not None:
            text += f"; colour {colour_text(_code(self.ignore_colour))} is left out "
            text += "(data.ignore_colour)"
        elif left_out is not None:
            what = f"colour {colour_text(left_out)}" if self.colours else f"value {left_out}"
            text += f"; {what} is left out (data.ignore_index)"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "colours": [list(c) for c in self.colours] if self.colours else None,
            "ignore_colour": list(self.ignore_colour) if self.ignore_colour else None,
            "description": self.describe(),
        }

    @classmethod
    def from_json(cls, data: Any, path: Path) -> MaskRule:
        """The rule :meth:`to_json` wrote; a file of other content is an error naming it."""
        try:
            colours, ignore_colour = data["colours"], data["ignore_colour"]
            rule = cls(
                data["rule"],
                int(data["num_classes"]),
                data["ignore_index"],
                tuple(_colour(c) for c in colours) if colours else None,
                _colour(ignore_colour) if ignore_colour else None,
            )
            ok = rule.rule in RULES and (rule.rule == "colours") == (rule.colours is not None)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise SegpipeError(f"{path}: not a mask rule written by the split stage; rerun it")
        return rule

    def require_params(self, data: DataConfig, path: Path) -> None:
        """Stop if ``params.yaml`` changed what the split stage decided with."""
        for key, decided, now in (
            ("data.classes (count)", self.num_classes, data.num_classes),
            ("data.ignore_index", self.ignore_index, data.ignore_index),
            ("data.mask_colours", self.colours, data.mask_colours),
            ("data.ignore_colour", self.ignore_colour, data.ignore_colour),
        ):
            if decided != now:
                raise SegpipeError(
                    f"{path}: decided with {key} {_yaml(decided)}, but params.yaml has "
                    f"{_yaml(now)}; rerun the split stage (dvc repro)"
                )


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, tuple):
        return json.dumps([list(v) if isinstance(v, tuple) else v for v in value])
    return str(value)


def load_rule(path: Path, data: DataConfig | None = None) -> MaskRule:
    """The rule the split stage wrote to ``path``, checked against ``data`` if given."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SegpipeError(f"{path}: mask rule not found (run the split stage first)") from None
    except (OSError, ValueError):
        raw = None
    rule = MaskRule.from_json(raw, path)
    if data is not None:
        rule.require_params(data, path)
    return rule


def label_pixels(labels: np.ndarray) -> np.ndarray:
    """Pixels per class index (length IGNORE + 1) of a label map, as
    :meth:`MaskValues.class_pixels` gives them for a mask file."""
    return np.bincount(labels.ravel(), minlength=IGNORE + 1)


def foreground_fraction(class_pixels: np.ndarray) -> float:
    """The share of the labelled pixels (all but :data:`IGNORE`) that hold any foreground
    class; 0.0 when none is labelled.

    Args:
        class_pixels: pixels per class index, length IGNORE + 1 (:func:`label_pixels`).
    """
    labelled = int(class_pixels.sum() - class_pixels[IGNORE])
    return (labelled - int(class_pixels[0])) / labelled if labelled else 0.0


def size_mismatch(
    image_path: Path, image_hw: tuple[int, int], mask_hw: tuple[int, int]
) -> str | None:
    """Why a mask of ``mask_hw`` (height, width) does not fit its image of ``image_hw``, as a
    sentence (the split stage's skip reason, the readers' error); None when the sizes agree."""
    if tuple(mask_hw) == tuple(image_hw):
        return None
    (mask_h, mask_w), (image_h, image_w) = mask_hw, image_hw
    return (
        f"mask size {mask_w}x{mask_h} differs from image size {image_w}x{image_h} of "
        f"{image_path} (width x height)"
    )


def read_pair(image_path: Path, mask_path: Path, rule: MaskRule) -> tuple[np.ndarray, np.ndarray]:
    """An image (RGB, upright) and its mask (class indices by ``rule``), checked to have the
    same size."""
    image = read_image(image_path)
    return image, read_mask_for(image_path, image.shape[:2], mask_path, rule)


def read_mask_for(
    image_path: Path, image_hw: tuple[int, int], mask_path: Path, rule: MaskRule
) -> np.ndarray:
    """The mask of an image of ``image_hw`` (height, width, as shown), checked to fit it."""
    mask = rule.read(mask_path)
    reason = size_mismatch(image_path, image_hw, mask.shape)
    if reason:
        raise SegpipeError(f"{mask_path}: {reason}")
    return mask


# --- the split stage's decision --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MaskValues:
    """One mask file's histogram: its distinct raw values (colour codes if ``colour``) and the
    pixels of each; for a palette image read by index, the palette colour of each value (for
    hints). The split stage keeps one per mask instead of the decoded mask."""

    path: Path
    values: np.ndarray
    counts: np.ndarray
    colour: bool
    palette: dict[int, Colour] | None = None

    @classmethod
    def of(
        cls, path: Path, raw: np.ndarray, *, colour: bool, image: Image.Image | None = None
    ) -> MaskValues:
        """The histogram of ``raw`` (from :func:`mask_values` of ``image``)."""
        if raw.dtype == np.uint8:  # bincount: far faster than sorting the pixels
            counts = np.bincount(raw.ravel(), minlength=256)
            values = np.flatnonzero(counts)
            counts = counts[values]
        else:
            values, counts = np.unique(raw, return_counts=True)
            values = values.astype(np.int64)
        flat = image.getpalette() if image is not None and image.mode == "P" else None
        palette = None
        if flat and not colour:
            shown = [v for v in values.tolist() if 3 * v + 3 <= len(flat)]
            palette = {v: _colour(flat[3 * v : 3 * v + 3]) for v in shown}
        return cls(Path(path), values, counts, colour=colour, palette=palette)

    @classmethod
    def read(cls, path: Path, *, colours: bool = False) -> MaskValues:
        """The histogram of a mask file (see :func:`mask_values`)."""
        image = open_mask(path)
        raw, colour = mask_values(image, path, colours=colours)
        return cls.of(path, raw, colour=colour, image=image)

    def kept(self, ignore_index: int | None) -> dict[int, int]:
        """Pixels per value, without the ignored value."""
        return {
            v: c
            for v, c in zip(self.values.tolist(), self.counts.tolist(), strict=True)
            if v != ignore_index
        }

    def class_pixels(self, rule: MaskRule) -> np.ndarray:
        """Pixels per class index (length IGNORE + 1) by ``rule``; raises as it does."""
        classes = rule.to_classes(self.values, self.path, self.counts)
        return np.bincount(classes, weights=self.counts, minlength=IGNORE + 1).astype(np.int64)


def decide_rule(
    masks: Sequence[MaskValues],
    num_classes: int,
    ignore_index: int | None = None,
    colours: Sequence[Sequence[int]] | None = None,
    folder: Path = Path("masks"),
    ignore_colour: Sequence[int] | None = None,
) -> MaskRule:
    """The one rule that reads every mask of ``masks`` (see the module's docstring).

    Raises:
        SegpipeError: one line naming the values (or colours) found, the files holding them
            and what to set: no rule fits, the masks disagree, or a mask holds a value or colour
            that fits no class (naming that file).
    """
    if colours is not None:
        declared = tuple(_colour(c) for c in colours)
        left_out = _colour(ignore_colour) if ignore_colour is not None else None
        rule = MaskRule("colours", num_classes, ignore_index, declared, left_out)
    elif any(m.colour for m in masks):
        raise SegpipeError(_colour_masks_error(masks, num_classes, folder))
    elif num_classes > 2:
        rule = MaskRule("indices", num_classes, ignore_index)
    else:
        rule = MaskRule(_two_class_rule(masks, ignore_index, folder), 2, ignore_index)
    for mask in masks:  # every value must fit: the first one that does not names its file
        rule.to_classes(mask.values, mask.path, mask.counts)
    return rule


def rule_of_files(
    paths: Sequence[Path],
    num_classes: int,
    ignore_index: int | None = None,
    colours: Sequence[Sequence[int]] | None = None,
) -> MaskRule:
    """The rule the split stage would decide for these mask files (for scripts and tests)."""
    masks = [MaskValues.read(p, colours=colours is not None) for p in paths]
    folder = Path(paths[0]).parent if paths else Path("masks")
    return decide_rule(masks, num_classes, ignore_index, colours, folder)


def _two_class_rule(masks: Sequence[MaskValues], ignore_index: int | None, folder: Path) -> str:
    """``0/1``, ``0/255`` or ``grey`` for the values of all ``masks`` together."""
    kept = [m.kept(ignore_index) for m in masks]
    total: Counter[int] = Counter()
    for values in kept:
        total.update(values)
    if set(total) <= {0, 1}:
        return "0/1"
    if set(total) <= {0, 255, 65535}:
        return "0/255"
    if _grey_levels(total):
        ones = [
            (mask, values.get(1, 0) / sum(values.values()))
            for mask, values in zip(masks, kept, strict=True)
            if set(values) <= {0, 1} and values.get(1, 0) > NOISE_ONES * sum(values.values())
        ]
        if ones:
            raise SegpipeError(_ones_among_grey_error(ones, folder))
        return "grey"
    raise SegpipeError(_no_rule_error(masks, kept, total, folder, ignore_index))


def _middle_share(total: dict[int, int]) -> float:
    """Share of the pixels between 64 and 191: far from both 0 and 255."""
    middle = sum(c for v, c in total.items() if 64 <= v < 192)
    return middle / max(1, sum(total.values()))


def _grey_levels(total: dict[int, int]) -> bool:
    """Whether the values look like 0/255 masks with JPEG noise (or smoothed edges): at least
    :data:`GREY_MIN_LEVELS` distinct 8-bit values with at most :data:`GREY_MAX_MIDDLE` of the
    pixels between 64 and 191, or at least 3 values with none there (the light noise of JPEG at
    high quality); the white side varies too (values 128..254 occur: a lone 255 beside small
    values is a border or ignore value, as in VOC masks); and the most frequent value from 128
    up is at least 192 (class indices 128.. are not white)."""
    if len(total) < 3 or min(total) < 0 or max(total) > 255:
        return False
    high = {v: c for v, c in total.items() if v >= FOREGROUND_FROM}
    if not any(v < 255 for v in high):
        return False
    white = max(high, key=lambda v: (high[v], v))
    middle = _middle_share(total)
    if len(total) < GREY_MIN_LEVELS and middle > 0:
        return False
    return white >= 192 and middle <= GREY_MAX_MIDDLE


def _hold(n: int, noun: str = " mask") -> str:
    """``1 mask holds``, ``3 masks hold`` (``noun=''``: ``3 hold``)."""
    plural = "s" if n != 1 and noun else ""
    return f"{n}{noun}{plural} {'holds' if n == 1 else 'hold'}"


def _files(paths: list[Path], total: int) -> str:
    """``3 files`` or, for one or two, their names."""
    text = f"{len(paths)} file{'s' if len(paths) != 1 else ''}"
    if len(paths) <= 2 and len(paths) < total:
        text += ": " + ", ".join(p.as_posix() for p in paths)
    return text


def _no_rule_error(
    masks: Sequence[MaskValues],
    kept: list[dict[int, int]],
    total: dict[int, int],
    folder: Path,
    ignore_index: int | None = None,
) -> str:
    """What was found, and what to set, when no two-class rule fits the values."""
    ones = [m for m, v in zip(masks, kept, strict=True) if set(v) <= {0, 1} and 1 in v]
    high = [m for m, v in zip(masks, kept, strict=True) if max(v, default=0) >= FOREGROUND_FROM]
    if ones and high:
        highs = sorted(v for v in total if v >= FOREGROUND_FROM)
        # 0/1 objects with a border value: every mask that holds it holds 1 too
        border = len(highs) == 1 and all(
            set(v) <= {0, 1, highs[0]} and (highs[0] not in v or 1 in v) for v in kept
        )
        fix = (
            f"if {highs[0]} marks borders or unlabelled pixels, set data.ignore_index: {highs[0]}"
            if border
            else "one rule reads every mask: make them all 0/1 or all 0/255"
        )
        return (
            f"{folder}: the masks disagree: {_hold(len(ones))} only 0 and 1 (e.g. "
            f"{ones[0].path.as_posix()}), {_hold(len(high), '')} values up to {max(total)} (e.g. "
            f"{high[0].path.as_posix()}); {fix}"
        )
    holders: dict[int, list[Path]] = {}
    for mask, values in zip(masks, kept, strict=True):
        for v in values:
            holders.setdefault(v, []).append(mask.path)
    found = [f"{v} ({_files(holders[v], len(masks))})" for v in sorted(holders)]
    return (
        f"{folder}: mask values {short_list(found, 6)} fit no two-class rule (0/1, 0/255, or "
        f"grey levels near 0 and 255 as in JPEG masks); "
        + "; ".join(_hints(total, _palette_of(masks), ignore_index))
    )


def _palette_of(masks: Sequence[MaskValues]) -> dict[int, Colour] | None:
    """The colours of the masks' values if every one is a palette image and they agree."""
    merged: dict[int, Colour] = {}
    for mask in masks:
        if mask.palette is None:
            return None
        for value, colour in mask.palette.items():
            if merged.setdefault(value, colour) != colour:
                return None
    return merged or None


def _hints(
    total: dict[int, int],
    palette: dict[int, Colour] | None = None,
    ignore_index: int | None = None,
) -> list[str]:
    """What to set for values that fit no two-class rule (``palette``: the masks' palette,
    if they are palette images read by index)."""
    values = sorted(total)
    rest = [v for v in values if v != 255]
    soft = 255 in total and any(FOREGROUND_FROM <= v < 255 for v in values)
    hints = []
    if 255 in total and max(rest, default=0) < FOREGROUND_FROM:
        hints.append("if 255 marks borders or unlabelled pixels, set data.ignore_index: 255")
    if len(rest) >= 3 and max(rest) < 255 and not soft:
        hints.append(
            f"for class-index masks, list {max(rest) + 1} classes in data.classes (background "
            "first)"
        )
    elif len(values) == 2 and values[0] == 0 and not hints:
        hints.append(_single_value_hint(values[1], palette, ignore_index))
    if soft:
        hints.append(_soft_hint(total))
    return hints or ["save two-class masks as 0/1 or 0/255"]


def _single_value_hint(
    v: int, palette: dict[int, Colour] | None = None, ignore_index: int | None = None
) -> str:
    """For masks of 0 and one other value ``v``: for palette masks, their palette colours (a
    grey [v, v, v] is no colour of theirs); a grey colour when 8-bit; else resave."""
    if palette is not None and v in palette and 0 in palette:
        colours = f"[{list(palette[0])}, {list(palette[v])}]"
        border = ignore_index is not None and ignore_index in palette
        also = f" and data.ignore_colour: {list(palette[ignore_index])}" if border else ""
        return (
            f"the masks are palette images whose values are class indices (as in Pascal VOC), "
            f"and {v} is beyond the 2 classes: to read index {v} as the foreground by its "
            f"colour, set data.mask_colours: {colours}{also} (the palette's colours); or list "
            f"the classes up to index {v} in data.classes (Pascal VOC: its 21 classes)"
        )
    if v <= 255:
        return f"if {v} marks the foreground, set data.mask_colours: [[0, 0, 0], [{v}, {v}, {v}]]"
    return (
        f"{v} is beyond 8 bits (16-bit masks): if it marks the foreground, save the masks as "
        "0/1 or 0/255 (8 or 16 bits), or as 0/65535"
    )


def _soft_hint(total: dict[int, int]) -> str:
    """For values near 0 and 255 that are not JPEG noise: too many, or few but in the middle."""
    share = _middle_share(total)
    middle = [v for v in total if 64 <= v < 192]
    if share > GREY_MAX_MIDDLE:
        return (
            f"{share:.0%} of the pixels lie between 64 and 191, too many for JPEG noise: "
            "save the masks as 0/255 (thresholded)"
        )
    lone = (
        f"; if {middle[0]} marks pixels to leave out, set data.ignore_index: {middle[0]}"
        if len(middle) == 1
        else ""
    )
    return (
        f"{len(total)} levels, {sum(total[v] for v in middle)} pixel(s) between 64 and 191 "
        f"(values {short_list(sorted(middle), 4)}): too few levels for JPEG noise; save the "
        f"masks as 0/255 (thresholded){lone}"
    )


def _ones_among_grey_error(ones: list[tuple[MaskValues, float]], folder: Path) -> str:
    """0/1 masks (more 1s than JPEG noise leaves) among grey-level 0/255 ones."""
    mask, share = ones[0]
    return (
        f"{folder}: the masks disagree: {_hold(len(ones))} only 0 and 1 (e.g. "
        f"{mask.path.as_posix()}, {share:.0%} ones), the others grey levels near 0 and 255, "
        f"read as values >= {FOREGROUND_FROM} are foreground, which would leave the 0/1 masks "
        "empty; one rule reads every mask: make them all 0/255"
    )


def _colour_masks_error(masks: Sequence[MaskValues], num_classes: int, folder: Path) -> str:
    """The masks are colour images but ``data.mask_colours`` is not set."""
    coloured = [m for m in masks if m.colour]
    pixels: Counter[int] = Counter()
    for mask in coloured:
        pixels.update(dict(zip(mask.values.tolist(), mask.counts.tolist(), strict=True)))
    total = sum(pixels.values())
    common = pixels.most_common()
    found = [f"{colour_text(c)} {n / total:.1%}" for c, n in common]
    example = ", ".join(colour_text(c) for c, _ in common[:num_classes])
    return (
        f"{folder}: {len(coloured)} of {len(masks)} masks are colour images (e.g. "
        f"{coloured[0].path.as_posix()}; colours by pixels: {short_list(found, 4)}); set "
        f"data.mask_colours to one [r, g, b] per class of data.classes, in class order, e.g. "
        f"[{example}]"
    )
