"""Typed, strict loading of ``params.yaml``: the only place that parses it.

Every section becomes a frozen dataclass. Unknown keys, missing keys, wrong types and
out-of-range values raise :class:`SegpipeError` naming the key, so a typo in an
experiment (``dvc exp run -S train.lrr=1e-4``) stops before any work is done.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML, YAMLError

from segpipe.errors import SegpipeError

Source = Literal["synthetic", "folder", "kaggle"]
Format = Literal["masks", "coco", "voc"]
ExtraCategories = Literal["error", "background", "ignore_index"]
ExifFrame = Literal["shown", "stored"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Resize = Literal["squash", "longest_side"]
Tta = Literal["none", "flip"]
Scheduler = Literal["none", "cosine", "plateau"]
Optimizer = Literal["adam", "adamw", "sgd"]
Decode = Literal["exact", "reduced"]
Backend = Literal["torch", "openvino"]
Postprocess = Literal["none", "auto"]


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    seed: int
    n_images: int
    min_size: int
    max_size: int
    empty_fraction: float


@dataclasses.dataclass(frozen=True)
class CocoConfig:
    """``data.format: coco``: where the export's parts are, and what to do with categories
    that ``data.classes`` does not name. Paths are relative to ``data.path``; null finds them."""

    annotations: str | None
    images: str | None
    extra_categories: ExtraCategories
    exif: ExifFrame
    """Which pixels annotations of an EXIF-turned photo were drawn on when its stored and shown
    sizes are equal (a square photo turned by 90 degrees, any photo turned by 180 or
    mirrored), so the JSON's size cannot tell: as shown, or as stored."""


@dataclasses.dataclass(frozen=True)
class VocConfig:
    """``data.format: voc``: whether ``ImageSets/Segmentation`` lists make the split."""

    image_sets: bool


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: Source
    format: Format
    path: str
    mask_suffix: str
    kaggle_dataset: str
    classes: tuple[str, ...]
    ignore_index: int | None
    mask_colours: tuple[tuple[int, ...], ...] | None
    ignore_colour: tuple[int, ...] | None
    synthetic: SyntheticConfig
    coco: CocoConfig
    voc: VocConfig

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclasses.dataclass(frozen=True)
class SplitLists:
    """``split.lists`` as files: text files of stems, one per line, relative to the
    repository. Without ``val``, the validation split is carved from ``train``."""

    train: str
    test: str
    val: str | None


SPLIT_LISTS_FOLDERS = "folders"
"""``split.lists: folders``: a dataset laid out as ``train/``, ``val/``, ``test/`` keeps it."""


Lists = SplitLists | Literal["folders"] | None
"""``split.lists``: null (a random split), ``folders`` or :class:`SplitLists`."""


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    seed: int
    val_fraction: float
    test_fraction: float
    lists: Lists = None
    folds: int | None = None  # k-fold cross-validation: null (off) or k >= 2
    fold: int | None = None  # with folds: the fold (0..k-1) that is the validation split


@dataclasses.dataclass(frozen=True)
class Normalisation:
    """``model.normalisation``: the per-channel (RGB, 0..1) mean and std of the model's input."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


WEIGHTS_SUFFIXES = (".pth", ".pt", ".safetensors")
"""``model.encoder_weights`` ending in one of these is a file; anything else a hub name."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str
    encoder: str
    encoder_weights: str | None
    normalisation: Normalisation | None = None
    init_from: str | None = None

    @property
    def weights_file(self) -> str | None:
        """``encoder_weights`` if it names a file (by its suffix), else None."""
        w = self.encoder_weights
        return w if w is not None and w.lower().endswith(WEIGHTS_SUFFIXES) else None


@dataclasses.dataclass(frozen=True)
class AugmentStep:
    """One albumentations transform of ``train.augment``: its class name and its arguments
    (``(name, value)`` pairs in the order written; lists become tuples)."""

    name: str
    args: tuple[tuple[str, Any], ...]


DEFAULT_AUGMENT = (
    AugmentStep("HorizontalFlip", (("p", 0.5),)),
    AugmentStep(
        "ColorJitter",
        (("brightness", 0.2), ("contrast", 0.2), ("saturation", 0.2), ("hue", 0.05), ("p", 0.5)),
    ),
)
"""``train.augment: true``: horizontal flip + colour jitter, the tutorial's augmentation."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    image_size: int
    resize: Resize
    crop: int | None
    scale: float
    epochs: int
    batch_size: int
    lr: float
    optimizer: Optimizer
    weight_decay: float
    momentum: float
    warmup_epochs: int
    scheduler: Scheduler
    plateau_patience: int
    plateau_factor: float
    early_stopping: int | None
    loss: str  # names and weights: segpipe.training.losses.loss_terms
    class_weights: tuple[float, ...] | None
    augment: tuple[AugmentStep, ...]
    precision: Precision
    channels_last: bool
    num_workers: int
    sync_bn: bool
    val_images_every: int
    freeze_encoder_epochs: int = 0


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    threshold: float
    batch_size: int
    include_background: bool
    tile: int | None
    overlap: float
    tta: Tta
    decode: Decode
    backend: Backend
    boundary_tolerance: float
    postprocess: Postprocess
    ensemble: tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class PlotConfig:
    n_samples: int
    n_worst: int


@dataclasses.dataclass(frozen=True)
class Params:
    seed: int
    data: DataConfig
    split: SplitConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    plot: PlotConfig


MAX_SEED = 2**32 - 1
"""Seeds are 32-bit: numpy's global seed takes no more."""


def _parser() -> YAML:
    """The YAML parser DVC reads ``params.yaml`` with (``dvc.utils.serialize.parse_yaml``:
    ruamel.yaml, ``typ="safe"``, YAML 1.2), so that every value segpipe uses is the value
    ``dvc params diff`` and ``dvc exp show`` display: ``1e-05`` is a float, ``010`` is 10,
    ``yes`` is a string."""
    return YAML(typ="safe")


def read_yaml(path: Path) -> Any:
    """Read a YAML file as DVC reads it (:func:`_parser`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SegpipeError(f"{path}: file not found") from None
    try:
        return _parser().load(text)
    except YAMLError as e:
        raise SegpipeError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None


def yaml_value(text: str) -> Any:
    """One YAML value (or document) as DVC reads it (:func:`_parser`)."""
    try:
        return _parser().load(text)
    except YAMLError as e:
        raise SegpipeError(f"{text!r}: not a YAML value ({' '.join(str(e).split())})") from None


def load_params(path: Path | str = "params.yaml") -> Params:
    """Load and validate ``params.yaml``.

    Raises:
        SegpipeError: naming the first bad key and what is expected there.
    """
    return parse_params(read_yaml(Path(path)))


def load_evaluate(path: Path) -> EvaluateConfig | None:
    """The ``evaluate`` section of a params file alone, checked as :func:`load_params` checks
    it; None when the file has no such section (another project's ``params.yaml``). Commands
    that read only these settings (predict, export) use it, so a key they never read cannot
    stop them.

    Raises:
        SegpipeError: naming ``path`` and the first bad key of the section.
    """
    raw = read_yaml(path)
    if not isinstance(raw, dict) or "evaluate" not in raw:
        return None
    try:
        section = read_strict(EvaluateConfig, raw["evaluate"], PARAMS, "evaluate.")
        check_evaluate(section)
    except SegpipeError as e:
        raise SegpipeError(f"{path}: {e}") from None
    return section


def parse_params(raw: Any) -> Params:
    """Validate params already read (a ``params.yaml`` mapping), as :func:`load_params`."""
    params = read_strict(Params, raw, PARAMS)
    _check_values(params)
    return params


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


Reader = Callable[[Any, Any, str], Any]
"""``read(type, value, key)``: ``value`` read strictly as ``type`` (see :func:`read_strict`)."""


@dataclasses.dataclass(frozen=True)
class Strictness:
    """How one kind of file is read into frozen dataclasses by :func:`read_strict`: how it
    words each error (every message names the key), and what it allows.

    Args:
        not_mapping: ``(where, value)`` -> the message for a section that is no mapping.
        fields: ``(missing, unknown, where, valid)`` -> the message for missing or unknown
            keys (prefixed keys; ``where``: the section, "" at the top).
        wrong: ``(key, value, type)`` -> the message for a value not of its type (or, with
            ``finite``, a float that is NaN or infinite).
        hooks: types read by a function of their own, ``hook(value, key, read)``.
        optional_defaults: fields with a default may be absent (files written before them).
        finite: floats must be finite.
    """

    not_mapping: Callable[[str, Any], str]
    fields: Callable[[list[str], list[str], str, list[str]], str]
    wrong: Callable[[str, Any, Any], str]
    hooks: Mapping[Any, Callable[[Any, str, Reader], Any]] = dataclasses.field(default_factory=dict)
    optional_defaults: bool = False
    finite: bool = True


def read_strict(cls: type, raw: Any, strict: Strictness, prefix: str = "") -> Any:
    """``raw`` (nested mappings of plain values) as the frozen dataclass ``cls``: every field
    present (or, with ``optional_defaults``, defaulted), none unknown, each of its type; ints
    are taken for floats, never bools for ints. The one strict reader of ``params.yaml`` and of
    checkpoints (:mod:`segpipe.model.checkpoint`).

    Raises:
        SegpipeError: worded by ``strict``, naming the first key at fault.
    """

    def build(cls: type, raw: Any, prefix: str) -> Any:
        where = prefix.rstrip(".")
        if not isinstance(raw, dict):
            raise SegpipeError(strict.not_mapping(where, raw))
        fields = dataclasses.fields(cls)
        names = [f.name for f in fields]
        missing = [prefix + f.name for f in fields if f.name not in raw and not _optional(f)]
        unknown = [prefix + k for k in sorted(str(k) for k in raw if k not in names)]
        if missing or unknown:
            raise SegpipeError(strict.fields(missing, unknown, where, names))
        hints = typing.get_type_hints(cls)
        return cls(**{n: read(hints[n], raw[n], prefix + n) for n in names if n in raw})

    def _optional(f: dataclasses.Field) -> bool:
        defaulted = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        return strict.optional_defaults and defaulted

    def read(tp: Any, value: Any, key: str) -> Any:
        origin = typing.get_origin(tp)
        if tp in strict.hooks:
            return strict.hooks[tp](value, key, read)
        if dataclasses.is_dataclass(tp):
            return build(tp, value, key + ".")
        if origin in (typing.Union, types.UnionType):  # X | None
            if value is None and type(None) in typing.get_args(tp):
                return None
            return read(next(a for a in typing.get_args(tp) if a is not type(None)), value, key)
        if origin is Literal and value in typing.get_args(tp):
            return value
        if origin is tuple and isinstance(value, list | tuple):
            inner = typing.get_args(tp)[0]
            return tuple(read(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if tp is float and number and (math.isfinite(value) or not strict.finite):
            return float(value)
        plain = origin is None and tp is not float and isinstance(tp, type)
        if plain and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise SegpipeError(strict.wrong(key, value, tp))

    return build(cls, raw, prefix)


def _params_fields(missing: list[str], unknown: list[str], where: str, valid: list[str]) -> str:
    if unknown:
        where = where or "params"
        return f"unknown parameter '{unknown[0]}' (valid keys in {where}: {', '.join(valid)})"
    return f"missing parameter '{missing[0]}' in params.yaml"


def _params_wrong(key: str, value: Any, tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return f"{key}: got {value!r}, expected one of {_type_name(tp)}"
    if typing.get_origin(tp) is tuple:
        return f"{key}: expected a list, got {value!r}"
    if tp is float and isinstance(value, float):
        return f"{key}: must be a finite number, got {value!r}"
    return f"{key}: expected {_type_name(tp)}, got {value!r}"


def _read_split_lists(value: Any, key: str, read: Reader) -> SplitLists | str | None:
    """``split.lists``: null, ``folders`` or ``{train: FILE, test: FILE, val: FILE or null}``."""
    if value is None or value == SPLIT_LISTS_FOLDERS:
        return value
    if not isinstance(value, dict):
        raise SegpipeError(
            f"{key}: expected null (a random split), {SPLIT_LISTS_FOLDERS} (keep a train/ val/ "
            "test/ layout) or {train: FILE, test: FILE, val: FILE or null}, got "
            f"{value!r}"
        )
    return read(SplitLists, value, key)


PARAMS = Strictness(
    not_mapping=lambda where, raw: (
        f"{where or 'params'}: expected a mapping of keys, got {type(raw).__name__}"
    ),
    fields=_params_fields,
    wrong=_params_wrong,
    hooks={
        tuple[AugmentStep, ...]: lambda value, key, _: parse_augment(value, key),
        Lists: _read_split_lists,
    },
)
"""How ``params.yaml`` is read: every key present, floats finite."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SegpipeError(message)


def _check_seed(seed: int, key: str) -> None:
    _require(
        0 <= seed <= MAX_SEED,
        f"{key}: must be an integer in 0..{MAX_SEED} (2**32 - 1), got {seed}",
    )


def _check_values(p: Params) -> None:
    for seed, key in (
        (p.seed, "seed"),
        (p.data.synthetic.seed, "data.synthetic.seed"),
        (p.split.seed, "split.seed"),
    ):
        _check_seed(seed, key)
    _check_data(p.data)
    _check_format(p.data)
    _check_synthetic(p.data)
    _check_split(p.split)
    _require(
        not (p.data.format == "voc" and p.data.voc.image_sets and p.split.lists is not None),
        "split.lists: data.voc.image_sets already makes the split from VOC's lists; set one of "
        "them (split.lists: null, or data.voc.image_sets: false)",
    )
    _check_model(p.model)
    _check_train(p.train, p.data.num_classes)
    _check_freeze(p.train, p.model)
    check_evaluate(p.evaluate)
    _require(p.plot.n_samples >= 1, f"plot.n_samples: must be >= 1, got {p.plot.n_samples}")
    _require(p.plot.n_worst >= 1, f"plot.n_worst: must be >= 1, got {p.plot.n_worst}")


def check_classes(classes: tuple[str, ...], key: str = "data.classes") -> None:
    """Class names, background first: 2..255 unique, non-empty names without '/'."""
    _require(len(classes) >= 2, f"{key}: list at least two classes (background first)")
    _require(len(set(classes)) == len(classes), f"{key}: names must be unique")
    _require(len(classes) <= 255, f"{key}: at most 255 classes, got {len(classes)}")
    for name in classes:
        _require(
            bool(name.strip()) and "/" not in name,
            f"{key}: class names must be non-empty and hold no '/', got {name!r}",
        )


def _check_data(data: DataConfig) -> None:
    check_classes(data.classes)
    suffix = data.mask_suffix
    _require(
        not any(c in suffix for c in "/\\") and suffix == suffix.strip(),
        "data.mask_suffix: the end of a mask's file name before its extension (e.g. _mask); "
        f"no '/', '\\' or surrounding spaces, got {suffix!r}",
    )
    n = data.num_classes
    ignore = data.ignore_index
    _require(
        ignore is None or ignore >= n,
        f"data.ignore_index: {ignore} is a class index (data.classes has {n} classes: 0..{n - 1})",
    )
    if data.mask_colours is not None:
        _check_mask_colours(data)
    _require(
        data.ignore_colour is None or data.mask_colours is not None,
        "data.ignore_colour: the colour left out of colour masks, read with data.mask_colours, "
        "which is null; set data.mask_colours too, or data.ignore_colour: null (for other "
        "masks, data.ignore_index names the value left out)",
    )


def _check_format(data: DataConfig) -> None:
    """``data.format`` and the keys it reads: coco and voc read a dataset folder and write
    class-index masks named like their images."""
    fmt = data.format
    if fmt == "masks":
        return
    _require(
        data.source != "synthetic",
        f"data.format: {fmt} reads a dataset folder; set data.source to folder (data.path) or "
        "kaggle (the synthetic source makes masks itself)",
    )
    _require(
        data.mask_suffix == "",
        f"data.mask_suffix: names mask files of data.format masks; with {fmt} the download "
        f'stage names each mask after its image: set it to "", got {data.mask_suffix!r}',
    )
    if fmt == "voc":
        _require(
            data.ignore_index == 255,
            "data.ignore_index: VOC masks mark object borders and unlabelled pixels 255; set "
            f"data.ignore_index: 255, got {_null(data.ignore_index)}",
        )
        return
    _require(
        data.mask_colours is None,
        "data.mask_colours: the coco format writes class-index masks, read by index; set it to "
        "null",
    )
    _require(
        data.ignore_index is None or data.ignore_index <= 255,
        "data.ignore_index: the coco format writes it into 8-bit masks: it must be in "
        f"{data.num_classes}..255, got {data.ignore_index}",
    )
    _require(
        data.coco.extra_categories != "ignore_index" or data.ignore_index is not None,
        "data.coco.extra_categories: ignore_index leaves their pixels out as data.ignore_index, "
        "which is null; set data.ignore_index (e.g. 255) or use background",
    )
    for key in ("annotations", "images"):
        value = getattr(data.coco, key)
        _require(
            value is None or (value.strip() == value and value != "" and _inside(value)),
            f"data.coco.{key}: a path relative to data.path, inside it (it is the download "
            f"stage's dependency), or null to find it; got {value!r}",
        )


def _inside(path: str) -> bool:
    """Whether ``path`` is relative and stays below the folder it is relative to."""
    parts = path.replace("\\", "/").split("/")
    return not path.startswith(("/", "\\")) and ".." not in parts and ":" not in parts[0]


def _null(value: object) -> str:
    return "null" if value is None else repr(value)


def _check_synthetic(data: DataConfig) -> None:
    n, s = data.num_classes, data.synthetic
    if data.source == "synthetic":
        _require(
            n <= 5,
            f"data.classes: synthetic data draws at most 4 shape classes (+ background), got {n}",
        )
    _require(s.n_images >= 1, f"data.synthetic.n_images: must be >= 1, got {s.n_images}")
    _require(
        16 <= s.min_size <= s.max_size,
        f"data.synthetic: need 16 <= min_size <= max_size, got {s.min_size} and {s.max_size}",
    )
    _require(
        0.0 <= s.empty_fraction <= 1.0,
        f"data.synthetic.empty_fraction: must be in [0, 1], got {s.empty_fraction}",
    )


def _check_split(split: SplitConfig) -> None:
    for name in ("val_fraction", "test_fraction"):
        value = getattr(split, name)
        _require(0.0 < value < 1.0, f"split.{name}: must be in (0, 1), got {value}")
    total = split.val_fraction + split.test_fraction
    _require(
        total < 1.0,
        f"split: val_fraction + test_fraction must be below 1 (leave training images), got {total}",
    )
    _check_split_lists(split)
    _check_folds(split)


def _check_folds(split: SplitConfig) -> None:
    """``split.folds`` and ``split.fold``: both null, or k >= 2 and a fold in 0..k-1."""
    k, fold = split.folds, split.fold
    if k is None:
        _require(
            fold is None,
            f"split.fold: {fold} names a fold of a cross-validation, but split.folds is null; set "
            "split.folds (k >= 2), or split.fold: null",
        )
        return
    _require(k >= 2, f"split.folds: null (no cross-validation) or at least 2, got {k}")
    _require(
        fold is not None and 0 <= fold < k,
        f"split.fold: the fold held out for validation, 0..{k - 1} (fold must be < split.folds "
        f"{k}), got {_null(fold)}",
    )
    _require(
        not (isinstance(split.lists, SplitLists) and split.lists.val is not None),
        "split.folds: the folds rotate the train list into val, but split.lists.val gives the "
        "val list; set split.lists.val: null, or split.folds: null",
    )


def _check_repo_file(value: str | None, key: str, what: str) -> None:
    """A path in params.yaml that a stage depends on: relative to the repository, inside it."""
    _require(
        value is None or (value.strip() == value and value != "" and _inside(value)),
        f"{key}: {what}, a path relative to the repository and inside it (a dependency in "
        f"dvc.yaml), got {value!r}",
    )


def _check_split_lists(split: SplitConfig) -> None:
    lists = split.lists
    if not isinstance(lists, SplitLists):
        return
    files = {"train": lists.train, "test": lists.test, "val": lists.val}
    for name, value in files.items():
        _check_repo_file(value, f"split.lists.{name}", "a text file of stems, one per line")
    given = [v for v in files.values() if v is not None]
    _require(
        len(set(given)) == len(given),
        f"split.lists: each split needs its own file, got {files}",
    )


def _check_model(m: ModelConfig) -> None:
    """``model.encoder_weights`` as a file, ``model.normalisation`` and ``model.init_from``."""
    w = m.encoder_weights
    _require(
        w is None or (w.strip() == w and w != ""),
        f"model.encoder_weights: null, a hub name (imagenet) or a file "
        f"({', '.join(WEIGHTS_SUFFIXES)}), got {w!r}",
    )
    if m.weights_file is not None:
        _check_repo_file(m.weights_file, "model.encoder_weights", "a state dict of the encoder")
    _check_repo_file(m.init_from, "model.init_from", "a segpipe checkpoint or smp model folder")
    _require(
        m.init_from is None or m.encoder_weights is None,
        "model.init_from: it sets every weight, the encoder's included; set "
        "model.encoder_weights: null (or model.init_from: null)",
    )
    n = m.normalisation
    if n is not None:
        for name in ("mean", "std"):
            values = getattr(n, name)
            low = 0.0 if name == "mean" else 1e-6
            _require(
                len(values) == 3 and all(low <= v <= 1.0 for v in values),
                f"model.normalisation.{name}: expected 3 numbers (R, G, B) in "
                f"{'[0, 1]' if name == 'mean' else '(0, 1]'}, got {list(values)}",
            )


def _check_freeze(t: TrainConfig, m: ModelConfig) -> None:
    f = t.freeze_encoder_epochs
    _require(
        0 <= f < t.epochs,
        f"train.freeze_encoder_epochs: must be in 0..train.epochs - 1 ({t.epochs - 1}), got {f}",
    )
    _require(
        f == 0 or m.encoder_weights is not None or m.init_from is not None,
        "train.freeze_encoder_epochs: freezes pretrained encoder weights, and the encoder "
        "starts random; set model.encoder_weights or model.init_from, or set it to 0",
    )


def _check_train(t: TrainConfig, n: int) -> None:
    check_geometry(t.resize, t.image_size, t.crop, t.scale, prefix="train.")
    _require(t.epochs >= 1, f"train.epochs: must be >= 1, got {t.epochs}")
    _require(t.batch_size >= 1, f"train.batch_size: must be >= 1, got {t.batch_size}")
    _require(t.lr > 0, f"train.lr: must be > 0, got {t.lr}")
    _require(t.num_workers >= 0, f"train.num_workers: must be >= 0, got {t.num_workers}")
    _require(
        t.val_images_every >= 1,
        "train.val_images_every: log the validation images of the first epoch and of every "
        f"N-th after it: must be >= 1, got {t.val_images_every}",
    )
    _check_optimisation(t)
    if t.class_weights is not None:
        _require(
            len(t.class_weights) == n,
            f"train.class_weights: expected {n} weights (one per class of data.classes), "
            f"got {len(t.class_weights)}",
        )
        _require(
            all(w >= 0 for w in t.class_weights) and sum(t.class_weights) > 0,
            f"train.class_weights: must be >= 0 and not all 0, got {list(t.class_weights)}",
        )


MAX_SCALE = 4.0
"""The largest ``train.scale``: beyond it crops would come from upsampled pixels only."""


def check_geometry(
    resize: Resize, image_size: int, crop: int | None, scale: float, *, prefix: str
) -> None:
    """How images become model inputs: ``resize`` at ``image_size``, or crops at ``scale``.
    The same rules hold for ``train.*`` and for a checkpoint's ``model_config.*`` (``prefix``
    names the keys)."""
    _require(
        image_size >= 32 and image_size % 32 == 0,
        f"{prefix}image_size: must be a multiple of 32 and >= 32, got {image_size}",
    )
    if crop is not None:
        _require(
            crop >= 32 and crop % 32 == 0,
            f"{prefix}crop: must be null or a multiple of 32 and >= 32, got {crop}",
        )
        _require(
            resize == "squash",
            f"{prefix}resize: with {prefix}crop, images keep their aspect at {prefix}scale of "
            f"their size and are not resized to {prefix}image_size; set {prefix}resize: squash "
            f"(the default) or {prefix}crop: null",
        )
    _require(
        0.0 < scale <= MAX_SCALE,
        f"{prefix}scale: must be in (0, {MAX_SCALE:g}] (1.0 = original resolution), got {scale}",
    )
    _require(
        scale == 1.0 or crop is not None,
        f"{prefix}scale: applies to crop training; set {prefix}crop (e.g. 256) or leave "
        f"{prefix}scale at 1.0, got {scale}",
    )


def check_evaluate(e: EvaluateConfig) -> None:
    """The ``evaluate`` section's ranges (also what predict and export read of it)."""
    check_threshold(e.threshold, "evaluate.threshold")
    _require(e.batch_size >= 1, f"evaluate.batch_size: must be >= 1, got {e.batch_size}")
    check_tile(e.tile, "evaluate.tile")
    check_overlap(e.overlap, "evaluate.overlap")
    _require(
        e.boundary_tolerance >= 0,
        f"evaluate.boundary_tolerance: must be >= 0 (pixels), got {e.boundary_tolerance}",
    )
    _check_ensemble(e.ensemble)


def _check_ensemble(ensemble: tuple[str, ...] | None) -> None:
    """``evaluate.ensemble``: null, or checkpoint files, each listed once."""
    if ensemble is None:
        return
    _require(
        len(ensemble) >= 1,
        "evaluate.ensemble: null (score models/model.pt) or a list of checkpoint files, got []",
    )
    for i, name in enumerate(ensemble):
        _require(
            name not in ensemble[:i],
            f"evaluate.ensemble: lists {name} twice (it would count double); list each once",
        )


def check_threshold(threshold: float, key: str) -> None:
    """A foreground probability cut-off: in (0, 1), finite."""
    _require(
        math.isfinite(threshold) and 0.0 < threshold < 1.0,
        f"{key}: must be in (0, 1), got {threshold}",
    )


def check_tile(tile: int | None, key: str) -> None:
    """A sliding window's side: None (whole image) or a multiple of 32 of at least 32."""
    _require(
        tile is None or (tile >= 32 and tile % 32 == 0),
        f"{key}: must be null (whole image) or a multiple of 32 and >= 32, got {tile}",
    )


MAX_OVERLAP = 0.75
"""The largest ``evaluate.overlap``: a pixel is then in at most 16 windows (4 per axis), 16
forward passes' worth; at 0.99 a 128 px input took 4,225 windows of 64 px."""


def check_overlap(overlap: float, key: str) -> None:
    """The share of a sliding window its neighbour repeats: in [0, :data:`MAX_OVERLAP`]."""
    _require(
        0.0 <= overlap <= MAX_OVERLAP,
        f"{key}: must be in [0, {MAX_OVERLAP:g}] (the share of a tile its neighbour repeats; "
        f"at {MAX_OVERLAP:g} each pixel is in up to {round(1 / (1 - MAX_OVERLAP)) ** 2} "
        f"windows), got {overlap}",
    )


def _check_optimisation(t: TrainConfig) -> None:
    """The optimizer, warm-up, scheduler and early-stopping keys of ``train``."""
    _require(t.weight_decay >= 0, f"train.weight_decay: must be >= 0, got {t.weight_decay}")
    _require(0 <= t.momentum < 1, f"train.momentum: must be in [0, 1), got {t.momentum}")
    _require(
        0 <= t.warmup_epochs < t.epochs,
        f"train.warmup_epochs: must be in 0..train.epochs - 1 ({t.epochs - 1}), "
        f"got {t.warmup_epochs}",
    )
    _require(
        t.plateau_patience >= 1, f"train.plateau_patience: must be >= 1, got {t.plateau_patience}"
    )
    _require(
        0 < t.plateau_factor < 1, f"train.plateau_factor: must be in (0, 1), got {t.plateau_factor}"
    )
    _require(
        t.early_stopping is None or t.early_stopping >= 1,
        f"train.early_stopping: epochs without a better validation Dice before training stops: "
        f"must be >= 1 or null (off), got {t.early_stopping}",
    )


def parse_augment(value: Any, key: str = "train.augment") -> tuple[AugmentStep, ...]:
    """``train.augment``: true (:data:`DEFAULT_AUGMENT`), false (none) or a list of
    ``{TransformName: {argument: value}}`` mappings (``{TransformName: {}}`` for its defaults).
    Names and arguments are checked against albumentations by the check and train stages
    (:func:`segpipe.data.augment.build_augmentations`).

    Raises:
        SegpipeError: naming the entry that is not of that shape.
    """
    if isinstance(value, bool):
        return DEFAULT_AUGMENT if value else ()
    if not isinstance(value, list):
        raise SegpipeError(
            f"{key}: expected true, false or a list of {{Transform: {{argument: value}}}} "
            f"mappings, got {value!r}"
        )
    steps = []
    for i, entry in enumerate(value):
        ok = isinstance(entry, dict) and len(entry) == 1
        name, args = next(iter(entry.items())) if ok else (None, None)
        args = {} if args is None else args
        if not (ok and isinstance(name, str) and isinstance(args, dict)):
            raise SegpipeError(
                f"{key}[{i}]: expected one {{Transform: {{argument: value}}}} mapping such as "
                f"{{HorizontalFlip: {{p: 0.5}}}}, got {entry!r}"
            )
        steps.append(AugmentStep(name, tuple((str(k), _frozen(v)) for k, v in args.items())))
    return tuple(steps)


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _check_mask_colours(data: DataConfig) -> None:
    """One distinct [r, g, b] (0..255) per class; ``ignore_index`` v is the grey [v, v, v]."""
    colours, n = data.mask_colours or (), data.num_classes
    _require(
        len(colours) == n,
        f"data.mask_colours: expected {n} colours, one [r, g, b] per class of data.classes in "
        f"class order, got {len(colours)}",
    )
    for i, colour in enumerate(colours):
        _require(
            len(colour) == 3 and all(0 <= v <= 255 for v in colour),
            f"data.mask_colours[{i}]: expected [r, g, b] with values in 0..255 (the colour of "
            f"class {data.classes[i]!r}), got {list(colour)}",
        )
    for i, colour in enumerate(colours):
        j = colours.index(colour)
        _require(
            j == i,
            f"data.mask_colours: classes {data.classes[j]!r} and {data.classes[i]!r} have the "
            f"same colour {list(colour)}; each class needs its own",
        )
    if data.ignore_colour is not None:
        left_out = data.ignore_colour
        _require(
            len(left_out) == 3 and all(0 <= v <= 255 for v in left_out),
            f"data.ignore_colour: expected [r, g, b] with values in 0..255, got {list(left_out)}",
        )
        _require(
            left_out not in colours,
            f"data.ignore_colour: {list(left_out)} is the colour of class "
            f"{data.classes[colours.index(left_out)]!r} in data.mask_colours; choose another",
        )
        return
    v = data.ignore_index
    if v is not None:
        _require(
            v <= 255 and (v, v, v) not in colours,
            f"data.ignore_index: with data.mask_colours it leaves out the grey colour [{v}, {v}, "
            f"{v}], which must be in 0..255 and no class's colour",
        )


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass config as plain JSON-friendly data, in the form ``params.yaml`` writes it
    (tuples become lists, ``train.augment`` a list of ``{Transform: {argument: value}}``)."""
    return _plain(obj)


def _plain(value: Any) -> Any:
    if isinstance(value, AugmentStep):
        return {value.name: {k: _plain(v) for k, v in value.args}}
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
