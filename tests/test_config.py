"""params.yaml loading: YAML 1.2 floats, strict keys and types, value checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from segpipe.config import DEFAULT_AUGMENT, AugmentStep, load_params, read_yaml
from segpipe.errors import SegpipeError

from .helpers import REPO, write_params


def edited(tmp_path: Path, edit) -> Path:
    """The repository's params.yaml with ``edit`` applied to its raw mapping, in ``tmp_path``."""
    raw = read_yaml(REPO / "params.yaml")
    edit(raw)
    return write_params(tmp_path / "params.yaml", raw)


def test_repository_params_load():
    p = load_params(REPO / "params.yaml")
    assert p.model.arch == "Unet"
    assert p.model.encoder == "efficientnet-b3"
    assert p.model.encoder_weights is None
    assert p.data.classes == ("background", "foreground")
    assert isinstance(p.train.lr, float)


@pytest.mark.parametrize("text", ["1e-05", "1e-4", "1E-3", "1.5e-4", "+1e-05", "5e+2"])
def test_exponent_floats_are_floats(tmp_path, text):
    # `dvc exp run -S train.lr=1e-5` writes `lr: 1e-05`; plain PyYAML reads it as a string
    # (YAML 1.1 wants a dot in a float).
    if "." not in text:
        assert isinstance(yaml.safe_load(f"lr: {text}")["lr"], str)
    path = tmp_path / "x.yaml"
    path.write_text(f"lr: {text}\n")
    assert read_yaml(path)["lr"] == float(text)


@pytest.mark.parametrize(
    "text",
    [
        "010",
        "017",
        "0o17",
        "0x1f",
        "1:20",
        "1e-5",
        "1e-05",
        ".inf",
        "-.inf",
        "yes",
        "no",
        "on",
        "~",
        "null",
        "true",
        "False",
        "1_000",
        "+1",
        "2001-12-14",
        "'010'",
    ],
)
def test_every_value_reads_as_dvc_reads_it(tmp_path, text):
    """segpipe uses the value `dvc params diff` and `dvc exp show` display."""
    from dvc.utils.serialize import parse_yaml

    path = tmp_path / "params.yaml"
    path.write_text(f"value: {text}\n")
    assert read_yaml(path) == parse_yaml(path.read_text(), str(path))
    assert repr(read_yaml(path)["value"]) == repr(parse_yaml(path.read_text(), str(path))["value"])


def test_octal_looking_and_sexagesimal_values_follow_yaml_1_2(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("a: 010\nb: 017\nc: 0o17\nd: 1:20\ne: yes\nf: ~\ng: 1e-5\nh: .inf\n")
    assert read_yaml(path) == {
        "a": 10,
        "b": 17,
        "c": 15,
        "d": "1:20",
        "e": "yes",
        "f": None,
        "g": 1e-5,
        "h": math.inf,
    }


def test_dvc_written_lr_reaches_config_as_float(tmp_path):
    text = (REPO / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("lr: 0.001", "lr: 1e-05"))
    assert "lr: 1e-05" in path.read_text()
    assert load_params(path).train.lr == pytest.approx(1e-5)


def test_ints_still_ints_and_strings_still_strings(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("a: 10\nb: efficientnet-b3\nc: 1_000\nd: 'e5'\n")
    assert read_yaml(path) == {"a": 10, "b": "efficientnet-b3", "c": 1000, "d": "e5"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["train"].update(lrr=0.1), "unknown parameter 'train.lrr'"),
        (lambda r: r.update(extra=1), "unknown parameter 'extra'"),
        (lambda r: r["train"].pop("epochs"), "missing parameter 'train.epochs'"),
        (lambda r: r["train"].update(epochs="ten"), "train.epochs: expected int"),
        (lambda r: r["train"].update(epochs=2.5), "train.epochs: expected int"),
        (
            lambda r: r["train"].update(augment="yes"),
            "train.augment: expected true, false or a list",
        ),
        (
            lambda r: r["train"].update(augment=[["HorizontalFlip"]]),
            "train.augment[0]: expected one",
        ),
        (
            lambda r: r["train"].update(optimizer="lamb"),
            "train.optimizer: got 'lamb', expected one of 'adam' | 'adamw' | 'sgd'",
        ),
        (lambda r: r["train"].update(scheduler="step"), "'none' | 'cosine' | 'plateau'"),
        (lambda r: r["train"].update(weight_decay=-1), "train.weight_decay: must be >= 0"),
        (lambda r: r["train"].update(momentum=1.0), "train.momentum: must be in [0, 1)"),
        (
            lambda r: r["train"].update(epochs=8, warmup_epochs=8),
            "train.warmup_epochs: must be in 0..train.epochs - 1 (7), got 8",
        ),
        (lambda r: r["train"].update(plateau_patience=0), "train.plateau_patience: must be >= 1"),
        (
            lambda r: r["train"].update(plateau_factor=1.0),
            "train.plateau_factor: must be in (0, 1)",
        ),
        (
            lambda r: r["train"].update(early_stopping=0),
            "train.early_stopping: epochs without a better",
        ),
        (lambda r: r["train"].update(early_stopping=1.5), "train.early_stopping: expected int"),
        (lambda r: r["train"].update(lr="fast"), "train.lr: expected float"),
        (lambda r: r["train"].update(lr=-0.1), "train.lr: must be > 0"),
        (lambda r: r["train"].update(batch_size=0), "train.batch_size: must be >= 1"),
        (lambda r: r["train"].update(image_size=100), "train.image_size: must be a multiple of 32"),
        (
            lambda r: r["train"].update(class_weights=[1.0]),
            "train.class_weights: expected 2 weights (one per class of data.classes), got 1",
        ),
        (
            lambda r: r["train"].update(class_weights=[0, 0]),
            "train.class_weights: must be >= 0 and not all 0",
        ),
        (lambda r: r["data"].update(ignore_index=1), "data.ignore_index: 1 is a class index"),
        (lambda r: r["data"].update(ignore_index="x"), "data.ignore_index: expected int"),
        (lambda r: r["data"].update(classes=["bg", "a/b"]), "hold no '/', got 'a/b'"),
        (lambda r: r["data"].update(classes=["bg", "bg"]), "data.classes: names must be unique"),
        (
            lambda r: r["data"].update(classes=["bg", *"abcde"]),
            "data.classes: synthetic data draws at most 4 shape classes (+ background), got 6",
        ),
        (lambda r: r["plot"].update(n_worst=0), "plot.n_worst: must be >= 1, got 0"),
        (lambda r: r["evaluate"].update(include_background=1), "evaluate.include_background"),
        (lambda r: r["train"].update(precision="fp8"), "train.precision"),
        (lambda r: r["data"].update(source="s3"), "data.source: got 's3'"),
        (lambda r: r["data"].update(classes=["only"]), "data.classes"),
        (lambda r: r["data"]["synthetic"].update(n_images=0), "data.synthetic.n_images"),
        (lambda r: r["split"].update(val_fraction=0.6, test_fraction=0.4), "must be below 1"),
        (lambda r: r["split"].update(test_fraction=0), "split.test_fraction: must be in (0, 1)"),
        (lambda r: r["evaluate"].update(threshold=1.5), "evaluate.threshold"),
        (lambda r: r["evaluate"].update(decode="draft"), "evaluate.decode: got 'draft'"),
        (lambda r: r["evaluate"].update(backend="onnx"), "evaluate.backend: got 'onnx'"),
        (
            lambda r: r["evaluate"].update(boundary_tolerance=-1),
            "evaluate.boundary_tolerance: must be >= 0 (pixels), got -1",
        ),
        (lambda r: r["evaluate"].update(boundary_tolerance=".5"), "evaluate.boundary_tolerance"),
        (
            lambda r: r["evaluate"].update(postprocess="always"),
            "evaluate.postprocess: got 'always', expected one of 'none' | 'auto'",
        ),
        (lambda r: r.update(model=[1, 2]), "model: expected a mapping"),
        (lambda r: r["model"].update(encoder_weights=3), "model.encoder_weights: expected str"),
        (
            lambda r: r["model"].update(encoder_weights="../lite0.pth"),
            "model.encoder_weights: a state dict of the encoder, a path relative to the "
            "repository and inside it",
        ),
        (
            lambda r: r["model"].update(init_from="/abs/model.pt"),
            "model.init_from: a segpipe checkpoint or smp model folder, a path relative",
        ),
        (
            lambda r: r["model"].update(init_from="weights/a.pt", encoder_weights="imagenet"),
            "model.init_from: it sets every weight, the encoder's included; set "
            "model.encoder_weights: null",
        ),
        (
            lambda r: r["model"].update(normalisation={"mean": [0.5, 0.5], "std": [1, 1, 1]}),
            "model.normalisation.mean: expected 3 numbers (R, G, B) in [0, 1], got [0.5, 0.5]",
        ),
        (
            lambda r: r["model"].update(normalisation={"mean": [0, 0, 0], "std": [0, 1, 1]}),
            "model.normalisation.std: expected 3 numbers (R, G, B) in (0, 1]",
        ),
        (
            lambda r: r["model"].update(normalisation={"mean": [0, 0, 0]}),
            "missing parameter 'model.normalisation.std'",
        ),
        (
            lambda r: r["train"].update(freeze_encoder_epochs=2),
            "train.freeze_encoder_epochs: freezes pretrained encoder weights, and the encoder "
            "starts random",
        ),
        (
            lambda r: r["train"].update(epochs=8, freeze_encoder_epochs=8),
            "train.freeze_encoder_epochs: must be in 0..train.epochs - 1 (7), got 8",
        ),
        (lambda r: r["split"].update(lists="random"), "split.lists: expected null (a random"),
        (
            lambda r: r["split"].update(lists={"train": "data/lists/a.txt", "test": "b.txt"}),
            "missing parameter 'split.lists.val'",
        ),
        (
            lambda r: r["split"].update(lists={"train": "a.txt", "test": "a.txt", "val": None}),
            "split.lists: each split needs its own file",
        ),
        (
            lambda r: r["split"].update(lists={"train": "/a.txt", "test": "b.txt", "val": None}),
            "split.lists.train: a text file of stems, one per line, a path relative",
        ),
        (
            lambda r: (
                r["data"].update(source="folder", format="voc", ignore_index=255),
                r["data"]["voc"].update(image_sets=True),
                r["split"].update(lists="folders"),
            ),
            "split.lists: data.voc.image_sets already makes the split",
        ),
        (
            lambda r: r["split"].update(fold=1),
            "split.fold: 1 names a fold of a cross-validation, but split.folds is null",
        ),
        (
            lambda r: r["split"].update(folds=1, fold=0),
            "split.folds: null (no cross-validation) or at least 2, got 1",
        ),
        (
            lambda r: r["split"].update(folds=5, fold=5),
            "split.fold: the fold held out for validation, 0..4 (fold must be < split.folds 5), "
            "got 5",
        ),
        (lambda r: r["split"].update(folds=5), "split.fold: the fold held out for validation"),
        (lambda r: r["split"].update(folds=5, fold=-1), "0..4 (fold must be < split.folds 5)"),
        (lambda r: r["split"].update(folds=5.0, fold=0), "split.folds: expected int, got 5.0"),
        (
            lambda r: r["split"].update(
                folds=5, fold=0, lists={"train": "a.txt", "test": "b.txt", "val": "c.txt"}
            ),
            "split.folds: the folds rotate the train list into val, but split.lists.val",
        ),
    ],
)
def test_bad_params_name_the_key(tmp_path, edit, message):
    with pytest.raises(SegpipeError) as err:
        load_params(edited(tmp_path, edit))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def _export(fmt: str, coco: dict | None = None, **data: object):
    """An edit to read a ``fmt`` export from a folder, with ``data`` and ``data.coco`` edits."""

    def edit(raw: dict) -> None:
        raw["data"].update(source="folder", format=fmt, **data)
        raw["data"]["coco"].update(coco or {})

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda r: r["data"].update(format="yolo"),
            "data.format: got 'yolo', expected one of 'masks' | 'coco' | 'voc'",
        ),
        (
            lambda r: r["data"].update(format="coco"),
            "data.format: coco reads a dataset folder; set data.source to folder (data.path) or "
            "kaggle (the synthetic source makes masks itself)",
        ),
        (
            _export("voc", mask_suffix="_mask"),
            "data.mask_suffix: names mask files of data.format masks; with voc the download stage "
            "names each mask after its image: set it to \"\", got '_mask'",
        ),
        (
            _export("voc"),
            "data.ignore_index: VOC masks mark object borders and unlabelled pixels 255; set "
            "data.ignore_index: 255, got null",
        ),
        (
            _export("coco", mask_colours=[[0, 0, 0], [255, 0, 0]]),
            "data.mask_colours: the coco format writes class-index masks, read by index; set it "
            "to null",
        ),
        (
            _export("coco", ignore_index=300),
            "data.ignore_index: the coco format writes it into 8-bit masks: it must be in 2..255, "
            "got 300",
        ),
        (
            _export("coco", {"extra_categories": "ignore_index"}),
            "data.coco.extra_categories: ignore_index leaves their pixels out as "
            "data.ignore_index, which is null; set data.ignore_index (e.g. 255) or use background",
        ),
        (
            _export("coco", {"extra_categories": "drop"}),
            "data.coco.extra_categories: got 'drop', expected one of 'error' | 'background' | "
            "'ignore_index'",
        ),
        (
            _export("coco", {"annotations": "../elsewhere/instances.json"}),
            "data.coco.annotations: a path relative to data.path, inside it (it is the download "
            "stage's dependency), or null to find it; got '../elsewhere/instances.json'",
        ),
        (_export("coco", {"images": "/data/images"}), "data.coco.images: a path relative to"),
        (_export("coco", {"images": ""}), "data.coco.images: a path relative to"),
        (_export("coco", {"annotation": "a.json"}), "unknown parameter 'data.coco.annotation'"),
        (lambda r: r["data"]["voc"].update(image_sets="yes"), "data.voc.image_sets: expected bool"),
    ],
)
def test_bad_format_params_name_the_key(tmp_path, edit, message):
    with pytest.raises(SegpipeError) as err:
        load_params(edited(tmp_path, edit))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_export_params_load(tmp_path):
    p = load_params(edited(tmp_path, _export("coco", {"images": "train2017"}, ignore_index=255)))
    assert (p.data.format, p.data.coco.images, p.data.coco.annotations) == (
        "coco",
        "train2017",
        None,
    )
    p = load_params(edited(tmp_path, _export("voc", ignore_index=255)))
    assert p.data.format == "voc" and p.data.voc.image_sets is False


def _colours(value: object, **data: object):
    return lambda r: r["data"].update(mask_colours=value, **data)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _colours([[0, 0, 0]]),
            "data.mask_colours: expected 2 colours, one [r, g, b] per class of data.classes in "
            "class order, got 1",
        ),
        (
            _colours([[0, 0, 0], [255, 0, 0], [0, 0, 255]]),
            "data.mask_colours: expected 2 colours, one [r, g, b] per class of data.classes in "
            "class order, got 3",
        ),
        (
            _colours([[0, 0, 0], [256, 0, 0]]),
            "data.mask_colours[1]: expected [r, g, b] with values in 0..255 (the colour of class "
            "'foreground'), got [256, 0, 0]",
        ),
        (
            _colours([[0, 0, -1], [255, 0, 0]]),
            "data.mask_colours[0]: expected [r, g, b] with values in 0..255 (the colour of class "
            "'background'), got [0, 0, -1]",
        ),
        (
            _colours([[0, 0, 0], [255, 0]]),
            "data.mask_colours[1]: expected [r, g, b] with values in 0..255",
        ),
        (_colours([[0, 0, 0], "red"]), "data.mask_colours[1]: expected a list, got 'red'"),
        (_colours([[0, 0, 0], [255, 0.5, 0]]), "data.mask_colours[1][1]: expected int, got 0.5"),
        (_colours([[0, 0, 0], [255, True, 0]]), "data.mask_colours[1][1]: expected int, got True"),
        (_colours("red"), "data.mask_colours: expected a list, got 'red'"),
        (
            _colours([[255, 0, 0], [255, 0, 0]]),
            "data.mask_colours: classes 'background' and 'foreground' have the same colour "
            "[255, 0, 0]; each class needs its own",
        ),
        (
            _colours([[0, 0, 0], [255, 255, 255]], ignore_index=255),
            "data.ignore_index: with data.mask_colours it leaves out the grey colour "
            "[255, 255, 255], which must be in 0..255 and no class's colour",
        ),
        (
            _colours([[0, 0, 0], [255, 0, 0]], ignore_index=300),
            "data.ignore_index: with data.mask_colours it leaves out the grey colour",
        ),
    ],
)
def test_bad_mask_colours_name_the_key(tmp_path, edit, message):
    with pytest.raises(SegpipeError) as err:
        load_params(edited(tmp_path, edit))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_mask_colours_load_as_tuples(tmp_path):
    p = load_params(edited(tmp_path, _colours([[0, 0, 0], [255, 0, 0]], ignore_index=255)))
    assert p.data.mask_colours == ((0, 0, 0), (255, 0, 0)) and p.data.ignore_index == 255
    assert load_params(REPO / "params.yaml").data.mask_colours is None


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(
        SegpipeError, match=r"valid keys in train: image_size, resize, crop, scale, epochs"
    ):
        load_params(edited(tmp_path, lambda r: r["train"].update(epoch=1)))


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(SegpipeError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(SegpipeError, match="not valid YAML"):
        load_params(bad)


def test_params_are_frozen():
    p = load_params(REPO / "params.yaml")
    with pytest.raises(AttributeError):
        p.train.lr = 1.0  # type: ignore[misc]


def _set(*keys: str, value: object):
    def edit(raw: dict) -> None:
        node = raw
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("keys", "value", "message"),
    [
        (("seed",), -1, r"seed: must be an integer in 0\.\.4294967295 \(2\*\*32 - 1\), got -1"),
        (("seed",), 2**64 + 1, r"seed: must be an integer in 0\.\.4294967295"),
        (("train", "lr"), float("inf"), r"train\.lr: must be a finite number, got inf"),
        (("train", "class_weights"), [1.0, float("nan")], r"train\.class_weights\[1\]: must"),
        (("evaluate", "threshold"), float("-inf"), r"evaluate\.threshold: must be a finite"),
    ],
)
def test_out_of_range_seeds_and_non_finite_numbers(tmp_path, keys, value, message):
    """Caught before any work (a seed of -1 used to fail after the split validated every
    pair; an infinite lr trained a NaN model and saved it as the best)."""
    with pytest.raises(SegpipeError, match=message):
        load_params(edited(tmp_path, _set(*keys, value=value)))


def test_yes_and_no_are_strings_as_in_dvc(tmp_path):
    """YAML 1.2 (DVC) reads yes/no/on/off as strings; only true/false are booleans."""
    text = (REPO / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("classes: [background, foreground]", "classes: [background, yes]"))
    assert load_params(path).data.classes == ("background", "yes")
    path.write_text(text.replace("augment: true", "augment: yes"))
    with pytest.raises(
        SegpipeError, match=r"train\.augment: expected true, false or a list .*, got 'yes'"
    ):
        load_params(path)
    assert read_yaml(path)["train"]["channels_last"] is True


def test_augment_true_is_the_default_list_and_a_list_loads_in_order(tmp_path):
    """``true`` is flip + colour jitter (today's transforms); a list keeps its order and
    arguments (YAML lists become tuples) and ``{Name: {}}`` or ``{Name: null}`` its defaults."""
    default = load_params(REPO / "params.yaml").train.augment
    assert default == DEFAULT_AUGMENT
    assert [step.name for step in default] == ["HorizontalFlip", "ColorJitter"]
    steps = [{"Affine": {"rotate": [-15, 15], "p": 0.5}}, {"VerticalFlip": {}}, {"CLAHE": None}]
    loaded = load_params(edited(tmp_path, lambda r: r["train"].update(augment=steps)))
    assert loaded.train.augment == (
        AugmentStep("Affine", (("rotate", (-15, 15)), ("p", 0.5))),
        AugmentStep("VerticalFlip", ()),
        AugmentStep("CLAHE", ()),
    )
    off = load_params(edited(tmp_path, lambda r: r["train"].update(augment=False)))
    assert off.train.augment == ()


def test_pretrained_and_split_list_params_parse(tmp_path):
    def edit(raw: dict) -> None:
        raw["model"].update(
            encoder="tu-efficientnet_lite0",
            encoder_weights="weights/lite0.safetensors",
            normalisation={"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        )
        raw["train"].update(freeze_encoder_epochs=2)
        raw["split"].update(lists={"train": "data/lists/t.txt", "test": "data/lists/e.txt"})
        raw["split"]["lists"]["val"] = None
        raw["split"].update(folds=5, fold=4)

    p = load_params(edited(tmp_path, edit))
    assert (p.split.folds, p.split.fold) == (5, 4)
    assert p.model.weights_file == "weights/lite0.safetensors"
    assert p.model.normalisation.mean == (0.5, 0.5, 0.5)
    assert p.train.freeze_encoder_epochs == 2
    assert p.split.lists.train == "data/lists/t.txt" and p.split.lists.val is None
    hub = load_params(edited(tmp_path, lambda r: r["model"].update(encoder_weights="imagenet")))
    assert hub.model.weights_file is None
    folders = load_params(edited(tmp_path, lambda r: r["split"].update(lists="folders")))
    assert folders.split.lists == "folders"
