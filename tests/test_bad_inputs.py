"""Bad input through the real stage scripts: what the user sees, and what is left on disk.

Fatal problems exit 1 with exactly one ``error: ...`` line naming the file or parameter and
leave an earlier output folder byte-identical; skippable ones succeed with a warning.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segpipe.data.kaggle_source import CREDENTIALS_HELP

from .helpers import REPO, TINY, run, run_stage, stage_in_process, write_params

N_PAIRS = 8
TINY_SPLIT = {key: value for key, value in TINY.items() if key.startswith("split__")}


def make_pairs(root: Path, n: int = N_PAIRS) -> Path:
    """``n`` random 16x16 RGB images with 0/255 square masks, as the download stage writes."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            root / "images" / f"p{i}.png"
        )
        mask = np.zeros((16, 16), dtype=np.uint8)
        mask[2 : 4 + i, 3:9] = 255
        Image.fromarray(mask).save(root / "masks" / f"p{i}.png")
    return root


def error_line(result: subprocess.CompletedProcess, *names: object) -> str:
    """Check a fatal run: exit 1, no traceback, one ``error:`` line (the last) naming ``names``."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for name in names:
        assert str(name) in errors[0], errors[0]
    return errors[0]


def warnings_of(result: subprocess.CompletedProcess) -> list[str]:
    """The WARNING lines of a successful run."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "error:" not in result.stderr
    return [line for line in result.stderr.splitlines() if " WARNING " in line]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


class Case:
    """A tiny dataset, a params file and a split output folder in ``tmp_path``."""

    def __init__(self, tmp_path: Path, **edits: object) -> None:
        self.tmp = tmp_path
        self.raw = make_pairs(tmp_path / "raw")
        self.out = tmp_path / "splits"
        self.params = tmp_path / "params.yaml"
        self.write_params(**edits)

    def write_params(self, **edits: object) -> None:
        """(Re)write the params file: the repository's, split as the tiny settings split (8
        pairs leave 2 each for val and test), with ``section__key=value`` edits."""
        write_params(self.params, **{**TINY_SPLIT, **edits})

    def split(self, *, real_script: bool = False):
        """The split stage in this process (see ``stage_in_process``), or as DVC runs it."""
        args = ("--params", self.params, "--raw", self.raw, "--out", self.out)
        if real_script:
            return run_stage("split.py", *args, check=False)
        return stage_in_process("split.py", *args)

    def first_run(self) -> dict[str, bytes]:
        """A successful split; returns the output folder's content."""
        result = self.split()
        assert result.returncode == 0, result.stderr
        assert sorted(snapshot(self.out)) == sorted(
            ["mask_rule.json", "report.json", "report.md", "test.csv", "train.csv", "val.csv"]
        )
        return snapshot(self.out)

    def assert_unchanged(self, before: dict[str, bytes]) -> None:
        assert snapshot(self.out) == before
        assert sorted(p.name for p in self.tmp.iterdir()) == ["params.yaml", "raw", "splits"]

    def report(self) -> dict:
        return json.loads((self.out / "report.json").read_text())


@pytest.fixture
def case(tmp_path: Path) -> Case:
    return Case(tmp_path)


# --- split: skipped inputs -------------------------------------------------------------------


def test_unpaired_files_are_skipped(case: Case) -> None:
    (case.raw / "masks" / "p0.png").unlink()
    Image.new("L", (16, 16)).save(case.raw / "masks" / "orphan.png")
    warnings = warnings_of(case.split(real_script=True))  # the real script, once
    image, orphan = case.raw / "images" / "p0.png", case.raw / "masks" / "orphan.png"
    assert f"skipped {image}: no mask with the same stem" in warnings[0]
    assert f"skipped {orphan}: no image with the same stem" in warnings[1]
    assert "skipped 2 file(s); see" in warnings[-1]
    report = case.report()
    assert report["valid_pairs"] == N_PAIRS - 1
    assert report["skipped_by_kind"] == {"no_image": 1, "no_mask": 1}


def test_mask_of_another_size_is_skipped(case: Case) -> None:
    mask = case.raw / "masks" / "p3.png"
    Image.new("L", (20, 16)).save(mask)
    warnings = warnings_of(case.split())
    image = case.raw / "images" / "p3.png"
    assert (
        f"skipped {mask}: mask size 20x16 differs from image size 16x16 of {image} "
        "(width x height)" in warnings[0]
    )
    report = case.report()
    assert report["valid_pairs"] == N_PAIRS - 1
    assert report["skipped"][0]["kind"] == "size_mismatch"
    assert "p3" not in (case.out / "train.csv").read_text() + (case.out / "test.csv").read_text()


def test_unreadable_truncated_and_empty_files_are_skipped(case: Case) -> None:
    images, masks = case.raw / "images", case.raw / "masks"
    (images / "p0.png").write_bytes(b"")
    data = (images / "p1.png").read_bytes()
    (images / "p1.png").write_bytes(data[: len(data) // 2])
    assert Image.open(images / "p1.png").size == (16, 16)  # the header alone looks fine
    data = (masks / "p2.png").read_bytes()
    (masks / "p2.png").write_bytes(data[: len(data) // 2])
    (masks / "p3.png").write_text("<html>not an image</html>")
    (masks / "p4.png").write_bytes(b"")
    text = "\n".join(warnings_of(case.split()))
    for line in (
        f"skipped {images / 'p0.png'}: cannot read image (empty file, 0 bytes)",
        f"skipped {images / 'p1.png'}: cannot read image (truncated or corrupt: ",
        f"skipped {masks / 'p2.png'}: cannot read mask (truncated or corrupt: ",
        f"skipped {masks / 'p3.png'}: cannot read mask (not a recognised image format)",
        f"skipped {masks / 'p4.png'}: cannot read mask (empty file, 0 bytes)",
    ):
        assert line in text
    report = case.report()
    assert report["valid_pairs"] == N_PAIRS - 5
    assert report["skipped_by_kind"] == {"unreadable_image": 2, "unreadable_mask": 3}


def test_grayscale_rgba_and_palette_images_are_converted(case: Case) -> None:
    for stem, mode in (("p0", "L"), ("p1", "RGBA"), ("p2", "P"), ("p3", "LA")):
        path = case.raw / "images" / f"{stem}.png"
        Image.open(path).convert(mode).save(path)
    assert warnings_of(case.split()) == []
    report = case.report()
    assert report["valid_pairs"] == N_PAIRS and report["skipped"] == []
    assert report["image_modes"] == {"L": 1, "LA": 1, "P": 1, "RGB": 4, "RGBA": 1}


# --- split: fatal inputs ---------------------------------------------------------------------


def test_duplicate_stems_are_fatal(case: Case) -> None:
    before = case.first_run()
    Image.new("RGB", (16, 16)).save(case.raw / "images" / "p1.jpg")
    line = error_line(case.split(), case.raw / "images", "p1.jpg", "p1.png")
    assert line == (
        f"error: {case.raw / 'images'}: two files share the stem 'p1' (p1.jpg, p1.png); keep one"
    )
    case.assert_unchanged(before)


def test_mask_values_outside_the_classes_are_fatal(tmp_path: Path) -> None:
    case = Case(tmp_path, data__classes=["background", "road", "car"])
    for mask in (case.raw / "masks").iterdir():  # 0/255 -> valid class indices 0/2
        Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint8) * 2).save(mask)
    before = case.first_run()
    assert case.report()["mask_values"].keys() == {"0", "2"}
    bad = case.raw / "masks" / "p5.png"
    values = np.zeros((16, 16), dtype=np.uint8)
    values[0, :6] = [0, 2, 3, 7, 255, 1]
    Image.fromarray(values).save(bad)
    line = error_line(case.split(), bad)
    assert line == (
        f"error: {bad}: mask values [3, 7, 255] fit none of the 3 classes of data.classes "
        "(expected 0..2; the mask holds [0, 1, 2, 3, 7, 255])"
    )
    case.assert_unchanged(before)


# --- split: masks that no one rule reads ------------------------------------------------------
# The split stage decides one mask rule from all masks (data/splits/mask_rule.json); before, each
# file was read by a rule of its own and these datasets lost objects without a word.


def recolour(case: Case, colour: tuple[int, int, int], stems: range = range(N_PAIRS)) -> None:
    """The 0/255 masks of ``stems`` as RGB files: the object in ``colour`` on black."""
    for i in stems:
        path = case.raw / "masks" / f"p{i}.png"
        grey = np.asarray(Image.open(path))
        rgb = np.zeros((*grey.shape, 3), dtype=np.uint8)
        rgb[grey == 255] = colour
        Image.fromarray(rgb).save(path)


def rewrite_masks(case: Case, values: dict[int, int], stems: range = range(N_PAIRS)) -> None:
    """Map the mask values of ``stems`` through ``values`` (e.g. {255: 1} for 0/1 masks)."""
    for i in stems:
        path = case.raw / "masks" / f"p{i}.png"
        grey = np.asarray(Image.open(path)).copy()
        Image.fromarray(np.vectorize(lambda v: values.get(v, v))(grey).astype(np.uint8)).save(path)


OBJECT_PIXELS = sum((2 + i) * 6 for i in range(N_PAIRS))  # make_pairs' squares
ALL_PIXELS = N_PAIRS * 16 * 16


@pytest.mark.parametrize("colour", [(255, 0, 0), (0, 0, 255)], ids=["red", "blue"])
def test_colour_masks_need_data_mask_colours(case: Case, colour) -> None:
    before = case.first_run()
    recolour(case, colour)
    masks, name = case.raw / "masks", f"[{colour[0]}, {colour[1]}, {colour[2]}]"
    line = error_line(case.split(), masks, "data.mask_colours")
    assert line == (
        f"error: {masks}: 8 of 8 masks are colour images (e.g. {(masks / 'p0.png').as_posix()}; "
        f"colours by pixels: [0, 0, 0] {1 - OBJECT_PIXELS / ALL_PIXELS:.1%}, {name} "
        f"{OBJECT_PIXELS / ALL_PIXELS:.1%}); set data.mask_colours to one [r, g, b] per class of "
        f"data.classes, in class order, e.g. [[0, 0, 0], {name}]"
    )
    case.assert_unchanged(before)
    case.write_params(data__mask_colours=[[0, 0, 0], list(colour)])
    assert warnings_of(case.split()) == []
    report = case.report()
    assert report["class_pixels"]["1"] == OBJECT_PIXELS  # before: every mask read as empty
    assert (
        f"colour masks (data.mask_colours): [0, 0, 0] is class 0, {name} is class 1"
        in (case.out / "report.md").read_text()
    )


def test_a_colour_outside_data_mask_colours_is_fatal(case: Case) -> None:
    case.write_params(data__mask_colours=[[0, 0, 0], [255, 0, 0]])
    recolour(case, (255, 0, 0))
    before = case.first_run()
    bad = case.raw / "masks" / "p3.png"
    rgb = np.asarray(Image.open(bad)).copy()
    rgb[rgb[..., 0] == 255] = (0, 0, 255)
    Image.fromarray(rgb).save(bad)
    assert error_line(case.split(), bad) == (
        f"error: {bad}: colours [0, 0, 255] (30 px) are not in data.mask_colours ([0, 0, 0], "
        "[255, 0, 0]); add each with its class to data.classes, or fix the mask, or, if it "
        "marks borders or unlabelled pixels, data.ignore_colour: [0, 0, 255]"
    )
    case.assert_unchanged(before)


def test_voc_style_borders_need_ignore_index(case: Case) -> None:
    before = case.first_run()
    for i in range(N_PAIRS):  # 0/1 objects with a 255 border
        path = case.raw / "masks" / f"p{i}.png"
        inside = np.asarray(Image.open(path)) == 255
        border = np.zeros_like(inside)
        border[1 : 5 + i, 2:10] = True
        Image.fromarray(np.where(inside, 1, np.where(border, 255, 0)).astype(np.uint8)).save(path)
    masks = case.raw / "masks"
    assert error_line(case.split(), masks, "data.ignore_index: 255") == (
        f"error: {masks}: mask values 0 (8 files), 1 (8 files), 255 (8 files) fit no two-class "
        "rule (0/1, 0/255, or grey levels near 0 and 255 as in JPEG masks); if 255 marks "
        "borders or unlabelled pixels, set data.ignore_index: 255"
    )
    case.assert_unchanged(before)
    case.write_params(data__ignore_index=255)
    assert warnings_of(case.split()) == []
    report = case.report()
    assert report["class_pixels"]["1"] == OBJECT_PIXELS  # before: 0 object pixels kept
    assert report["mask_rule"]["rule"] == "0/1"


@pytest.mark.parametrize(
    ("values", "stems", "found", "hint"),
    [
        (
            {255: 1, 0: 0},
            None,
            "0 (8 files), 1 (8 files), 2 (1 file: {p5})",
            "for class-index masks, list 3 classes in data.classes (background first)",
        ),
        (
            {255: 2},
            range(0, 8, 2),
            "0 (8 files), 1 (4 files), 2 (4 files)",
            "for class-index masks, list 3 classes in data.classes (background first)",
        ),
        (
            {255: 76},
            range(8),
            "0 (8 files), 76 (8 files)",
            "if 76 marks the foreground, set data.mask_colours: [[0, 0, 0], [76, 76, 76]]",
        ),
    ],
    ids=["stray-2", "0-1-2", "grey-76"],
)
def test_mask_values_no_two_class_rule_reads(case: Case, values, stems, found, hint) -> None:
    before = case.first_run()
    rewrite_masks(case, {255: 1})  # 0/1 masks
    if stems is None:  # one stray 2
        path = case.raw / "masks" / "p5.png"
        mask = np.asarray(Image.open(path)).copy()
        mask[15, 15] = 2
        Image.fromarray(mask).save(path)
    else:
        rewrite_masks(case, {1: values[255]}, stems)
    masks = case.raw / "masks"
    found = found.format(p5=(masks / "p5.png").as_posix())
    assert error_line(case.split(), masks) == (
        f"error: {masks}: mask values {found} fit no two-class rule (0/1, 0/255, or grey levels "
        f"near 0 and 255 as in JPEG masks); {hint}"
    )
    case.assert_unchanged(before)


def test_masks_that_disagree_are_fatal(case: Case) -> None:
    before = case.first_run()
    rewrite_masks(case, {255: 1}, range(0, 8, 2))  # half 0/1, half 0/255
    masks = case.raw / "masks"
    assert error_line(case.split(), masks) == (
        f"error: {masks}: the masks disagree: 4 masks hold only 0 and 1 (e.g. "
        f"{(masks / 'p0.png').as_posix()}), 4 hold values up to 255 (e.g. "
        f"{(masks / 'p1.png').as_posix()}); one rule reads every mask: make them all 0/1 or all "
        "0/255"
    )
    case.assert_unchanged(before)


def test_binary_masks_accept_any_8bit_values(case: Case) -> None:
    noisy = np.zeros((16, 16), dtype=np.uint8)
    noisy[:, 8:] = np.arange(120, 248, 16, dtype=np.uint8)  # JPEG-like noise around 128
    Image.fromarray(noisy).save(case.raw / "masks" / "p0.png")
    assert warnings_of(case.split()) == []
    assert list(case.report()["mask_values"]) == ["0", *map(str, range(120, 248, 16)), "255"]


def test_no_valid_pairs_left_is_fatal(case: Case) -> None:
    before = case.first_run()
    for path in (case.raw / "images").iterdir():
        path.write_bytes(b"")
    line = error_line(case.split(), case.raw)
    assert line == (
        f"error: {case.raw}: no valid image/mask pairs left "
        f"({N_PAIRS} file(s) skipped, see the warnings above)"
    )
    case.assert_unchanged(before)
    for path in (case.raw / "masks").iterdir():
        path.rename(path.with_name("m_" + path.name))
    line = error_line(case.split(), case.raw)
    assert line == f"error: {case.raw}: no image/mask pairs with matching file stems"
    case.assert_unchanged(before)


def test_too_few_valid_pairs_is_fatal(case: Case) -> None:
    before = case.first_run()
    for i in range(6):  # 2 valid pairs left: too few for val 0.25 + test 0.25
        (case.raw / "masks" / f"p{i}.png").write_bytes(b"")
    line = error_line(case.split(), "val_fraction=0.25", "test_fraction=0.25")
    assert line.startswith("error: split: 2 image(s) are too few")
    assert line.endswith(
        "each split needs at least one image); 6 file(s) skipped, see the warnings above"
    )
    case.assert_unchanged(before)


# --- download --------------------------------------------------------------------------------


def download(params: Path, out: Path, env: dict[str, str] | None = None):
    """The download stage: in this process, or as DVC runs it where ``env`` is set."""
    if env is None:
        return stage_in_process("download.py", "--params", params, "--out", out)
    return run_stage("download.py", "--params", params, "--out", out, env=env, check=False)


def test_folder_source_path_missing_or_without_images_and_masks(tmp_path: Path) -> None:
    good = make_pairs(tmp_path / "good", n=3)
    out = tmp_path / "raw"
    result = download(
        write_params(tmp_path / "p.yaml", data__source="folder", data__path=str(good)), out
    )
    assert result.returncode == 0, result.stderr
    before = snapshot(out)
    assert len(before) == 6

    missing = tmp_path / "missing"
    params = write_params(tmp_path / "p.yaml", data__source="folder", data__path=str(missing))
    line = error_line(download(params, out), "data.path", missing)
    assert line == f"error: data.path: {missing} not found (it must hold images/ and masks/)"
    assert snapshot(out) == before

    flat = tmp_path / "flat"
    (flat / "pictures").mkdir(parents=True)
    params = write_params(tmp_path / "p.yaml", data__source="folder", data__path=str(flat))
    line = error_line(download(params, out), "data.path", flat)
    assert "no folder with images/ and masks/ subfolders found" in line
    assert snapshot(out) == before

    (flat / "images").mkdir()
    (flat / "masks").mkdir()
    line = error_line(download(params, out), "data.path", flat / "images")
    assert line.endswith("holds no image files (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp, .gif)")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat", "good", "p.yaml", "raw"]


def test_kaggle_without_credentials(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    home = tmp_path / "home"
    home.mkdir()
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        KAGGLE_CONFIG_DIR=str(tmp_path / "kaggle-config"),
    )
    params = write_params(tmp_path / "p.yaml", data__source="kaggle")
    result = download(params, tmp_path / "raw", env=env)
    assert result.stderr.strip() == f"error: {CREDENTIALS_HELP}"
    assert result.returncode == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "p.yaml"]


# --- params.yaml -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ({"train__lrr": 0.1}, "unknown parameter 'train.lrr' (valid keys in train: image_size,"),
        ({"train__epochs": "ten"}, "train.epochs: expected int, got 'ten'"),
        ({"train__lr": -0.001}, "train.lr: must be > 0, got -0.001"),
        (
            {"split__val_fraction": 0.5, "split__test_fraction": 0.5},
            "split: val_fraction + test_fraction must be below 1 (leave training images), got 1.0",
        ),
        ({"train__batch_size": 0}, "train.batch_size: must be >= 1, got 0"),
    ],
    ids=["unknown-key", "wrong-type", "negative-lr", "fractions-sum", "batch-size-0"],
)
def test_params_errors_are_one_line(case: Case, edits: dict, message: str) -> None:
    case.write_params(**edits)
    result = case.split()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert not case.out.exists()


def test_check_command_reports_a_misspelt_section(tmp_path: Path) -> None:
    """A section no stage reads (`modle:`) is reported by the check stage and command."""
    good = write_params(tmp_path / "p.yaml")
    result = stage_in_process("check.py", "--params", good)  # the pipeline runs the real script
    assert result.returncode == 0 and f"{good}: valid" in result.stderr
    raw = yaml.safe_load(good.read_text())
    raw["modle"] = {"arch": "Unet"}
    good.write_text(yaml.safe_dump(raw))
    line = error_line(stage_in_process("check.py", "--params", good), "modle")
    assert line.startswith("error: unknown parameter 'modle' (valid keys in params: seed, data")
    bad = write_params(tmp_path / "q.yaml", model__encoder="x")
    line = error_line(stage_in_process("check.py", "--params", bad))
    assert line.startswith("error: model.encoder: unknown encoder 'x' (valid: ")


def test_the_check_stage_names_a_bad_loss_in_one_line(tmp_path: Path) -> None:
    """Names (loss terms, encoders, transforms) are checked by the module that uses them: the
    check stage runs every such check, so `dvc repro` stops on a misspelt loss."""
    bad = write_params(tmp_path / "p.yaml", train__loss="focus")
    line = error_line(stage_in_process("check.py", "--params", bad))
    assert line.startswith("error: train.loss: unknown loss 'focus' in 'focus' (valid: ce, bce,")


def test_params_changed_while_a_stage_ran(tmp_path: Path, capsys) -> None:
    """Two `dvc exp run` in one workspace: the second rewrites params.yaml under the first."""
    from segpipe.cli import run_stage

    params = write_params(tmp_path / "params.yaml")
    assert run_stage(lambda: None, params=params) == 0

    def edit() -> None:
        params.write_text(params.read_text().replace("lr: 0.001", "lr: 0.01"))

    assert run_stage(edit, params=params) == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: {params}: changed while this stage ran (another `dvc exp run`")


def test_data_path_missing_in_dvc_temporary_copy(tmp_path: Path) -> None:
    """`dvc exp run --temp` and `dvc queue` run in a copy that lacks the git-ignored data."""
    for sub in ("images", "masks"):  # the user's workspace has the data
        (tmp_path / "repo" / "data" / "external" / sub).mkdir(parents=True)
    work = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc"
    (work / "data" / "external").mkdir(parents=True)
    (work / "data" / "external" / "README.md").write_text("put your data here")
    params = write_params(work / "params.yaml", data__source="folder")
    result = run_stage("download.py", "--params", params, "--out", "raw", cwd=work, check=False)
    line = error_line(result, "data.path", "data/external")
    assert "DVC's temporary copy of the repository" in line
    assert "dvc add data/external/images data/external/masks` and commit the .dvc files" in line
    assert "dvc exp run --temp -C data/external/images -C data/external/masks" in line


# --- a full disk -----------------------------------------------------------------------------


def run_on_full_disk(script: str, patch: str, *args: object) -> subprocess.CompletedProcess:
    """Run ``stages/<script>`` with ``patch`` (Python) applied first, to fail its writes with
    ENOSPC as a full disk does."""
    code = (
        "import errno, os, runpy, sys\n"
        "def full(*args, **kwargs):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        f"{patch}\n"
        f"sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    return run([sys.executable, "-c", code, REPO / "stages" / script, *args], REPO, check=False)


def test_full_disk_during_split(case: Case) -> None:
    before = case.first_run()
    result = run_on_full_disk(
        "split.py",
        "import pandas; pandas.DataFrame.to_csv = full",
        "--params", case.params, "--raw", case.raw, "--out", case.out,
    )  # fmt: skip
    assert error_line(result, case.out) == (
        f"error: {case.out}: cannot write (no space left on device); nothing in it was "
        "changed; free some space and run again"
    )
    case.assert_unchanged(before)  # and no staging folder left next to it


def test_full_disk_during_cache_is_an_error_not_a_bus_error(case: Case, monkeypatch) -> None:
    case.first_run()
    cache = case.tmp / "cache"
    args = ("--params", case.params, "--splits", case.out, "--out", cache)
    assert stage_in_process("cache.py", *args).returncode == 0
    before = snapshot(cache)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    result = stage_in_process("cache.py", *args)
    line = error_line(result, cache)
    assert line.startswith(  # the train and val arrays: the test split is not cached
        f"error: {cache}: cannot write (no space left on device); the arrays need 0.4 MiB and "
    )
    assert line.endswith("MiB is free; nothing in it was changed; free some space and run again")
    assert snapshot(cache) == before
    assert sorted(p.name for p in case.tmp.iterdir()) == ["cache", "params.yaml", "raw", "splits"]
