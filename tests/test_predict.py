"""The predict command reproduces evaluate's masks and scores, at each input's own size."""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segpipe import files
from segpipe.commands import predict
from segpipe.config import load_params
from segpipe.data.masks import RULE_FILE, MaskRule, load_rule
from segpipe.data.tables import read_split
from segpipe.errors import SegpipeError
from segpipe.evaluation import evaluate
from segpipe.inference import memory
from segpipe.metrics import SegmentationMetrics
from segpipe.training.resume import save as save_resume_state

from .helpers import REPO, call, run_stage, tiny_params, untrained_checkpoint, write_params


@pytest.fixture
def model_path(tiny_run):
    return tiny_run / "model.pt"


@pytest.fixture
def splits_dir(tiny_run):
    """The splits ``model_path`` was trained on."""
    return tiny_run / "splits"


def predict_cmd(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python stages/predict.py ARGS`` through its ``main``, in this process; the first run
    of :func:`test_predict_single_file_and_errors` is the real script."""
    return call(predict.main, *args, cwd=cwd)


def test_predict_reproduces_evaluate_exactly(tmp_path, params, splits_dir, model_path):
    scores = evaluate.run(
        params,
        model_path,
        splits_dir,
        tmp_path / "eval.json",
        tmp_path / "per_image.csv",
        tmp_path / "eval_pred",
    )
    test = read_split(splits_dir / "test.csv")
    inputs = tmp_path / "new_images"
    inputs.mkdir()
    for image in test["image"]:
        shutil.copy2(image, inputs)
    (inputs / "broken.png").write_bytes(b"")  # unreadable: reported and skipped
    (inputs / "notes.txt").write_text("not an image")  # ignored

    result = predict_cmd(
        "--model",
        str(model_path),
        "--input",
        str(inputs),
        "--output",
        str(tmp_path / "out"),
        "--overlay",
        "--batch-size",
        "4",
    )
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "broken.png" in result.stderr

    metrics = SegmentationMetrics(2)
    for _, row in test.iterrows():
        mask_file = tmp_path / "out" / f"{row['stem']}.png"
        assert (
            mask_file.read_bytes() == (tmp_path / "eval_pred" / f"{row['stem']}.png").read_bytes()
        )
        pred = MaskRule.predictions(2).read(mask_file)
        assert pred.shape == (row["height"], row["width"])  # the input's own resolution
        truth = load_rule(splits_dir / RULE_FILE).read(row["mask"])
        metrics.update(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])
        assert Image.open(tmp_path / "out" / f"{row['stem']}_overlay.png").size == (
            row["width"],
            row["height"],
        )
    assert metrics.compute()["dice"] == scores["dice"]  # exactly, not approximately
    assert json.loads((tmp_path / "eval.json").read_text())["dice"] == scores["dice"]
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert len(names) == 2 * len(test) and not any(n.startswith(".") for n in names)


@pytest.mark.slow  # the real script: a Python start and the torch imports
def test_predict_single_file_and_errors(tmp_path, splits_dir, model_path):
    image = read_split(splits_dir / "test.csv")["image"][0]
    result = run_stage(
        "predict.py", "--model", model_path, "--input", image, "--output", tmp_path / "one",
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "one").iterdir())) == 1

    missing = predict_cmd(
        "--model",
        str(model_path),
        "--input",
        str(tmp_path / "nope"),
        "--output",
        str(tmp_path / "x"),
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("nope: no such file or folder")
    bad_model = predict_cmd(
        "--model", str(tmp_path / "none.pt"), "--input", image, "--output", str(tmp_path / "x")
    )
    assert bad_model.returncode == 1
    assert "none.pt: checkpoint not found" in bad_model.stderr
    assert "Traceback" not in bad_model.stderr


# --- safety: inputs, existing outputs, the threshold, bad checkpoints, a full disk -------------


@pytest.fixture
def trained(tiny_run):
    """The session's tiny run: splits and the checkpoint (read only)."""
    return tiny_run


def photos(folder, trained, n: int = 3):
    """``n`` test images copied into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    images = read_split(trained / "splits" / "test.csv")["image"][:n]
    return [shutil.copy2(image, folder) for image in images]


def refusal(*args, **kwargs) -> str:
    """The message of the SegpipeError that ``predict.run(*args, **kwargs)`` raises."""
    with pytest.raises(SegpipeError) as err:
        predict.run(*args, **kwargs)
    return str(err.value)


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")}


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a failed run (exit 1, no traceback)."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(ln.startswith("error") for ln in lines) == 1
    return lines[-1]


def test_predict_never_writes_over_its_inputs(tmp_path, trained):
    folder = tmp_path / "photos"
    first = photos(folder, trained)[0]
    before = snapshot(folder)
    model = str(trained / "model.pt")
    same = predict_cmd("--model", model, "--input", str(folder), "--output", str(folder))
    assert error_line(same) == (
        f"error: {folder}: --output is the --input folder, so masks would replace or mix with "
        "the images; choose another --output"
    )
    for overwrite in (False, True):  # not even when asked to overwrite
        assert refusal(
            Path(model), Path(first), folder, with_overlay=True, overwrite=overwrite
        ) == (
            f"{first}: an input image, and a mask would replace it; choose an --output "
            "folder that holds no input"
        )
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, trained):
    inputs = photos(tmp_path / "photos", trained)
    truth = tmp_path / "masks"  # say data/external/masks: hand-drawn masks of the same names
    truth.mkdir()
    stems = sorted(p.rsplit("/", 1)[-1].removesuffix(".png") for p in inputs)
    for stem in stems[:2]:
        (truth / f"{stem}.png").write_bytes(b"hand-drawn")
    before = snapshot(truth)
    args = ["--model", str(trained / "model.pt"), "--input", str(tmp_path / "photos")]
    refused = predict_cmd(*args, "--output", str(truth), "--overlay")
    assert error_line(refused) == (
        f"error: {truth / stems[0]}.png: already exists (2 of the 6 files to write exist); "
        "pass --overwrite to replace them, or choose another --output"
    )
    assert snapshot(truth) == before

    (truth / f"{stems[2]}_overlay.png").mkdir()  # a folder is never replaced
    model, photo_dir = trained / "model.pt", tmp_path / "photos"
    assert refusal(model, photo_dir, truth, with_overlay=True, overwrite=True) == (
        f"{truth / stems[2]}_overlay.png: a folder where a mask or overlay goes; move "
        "it or choose another --output"
    )
    (truth / f"{stems[2]}_overlay.png").rmdir()
    assert snapshot(truth) == before

    predict.run(model, photo_dir, truth, overwrite=True)
    assert sorted(p.name for p in truth.iterdir()) == [f"{s}.png" for s in stems]
    assert (truth / f"{stems[0]}.png").read_bytes().startswith(b"\x89PNG")


def test_an_input_named_like_an_overlay_keeps_its_mask(tmp_path, trained):
    folder = tmp_path / "photos"
    image = photos(folder, trained, n=1)[0]
    shutil.copy2(read_split(trained / "splits" / "val.csv")["image"][0], folder / "x_overlay.png")
    shutil.copy2(image, folder / "x.png")
    out = tmp_path / "out"
    result = predict_cmd(
        "--model", str(trained / "model.pt"), "--input", str(folder), "--output", str(out),
        "--overlay",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        f"no overlay for {folder / 'x.png'}: {out / 'x_overlay.png'} is the mask of "
        f"{folder / 'x_overlay.png'}" in result.stderr
    )
    stem = Path(image).stem
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{stem}.png", f"{stem}_overlay.png", "x.png", "x_overlay.png", "x_overlay_overlay.png"]
    )
    mask = Image.open(out / "x_overlay.png")  # the mask of x_overlay.png, not an overlay
    assert mask.mode == "L" and mask.size == Image.open(folder / "x_overlay.png").size


def test_default_threshold_is_the_one_evaluate_used(tmp_path, trained, monkeypatch, caplog):
    params = dataclasses.replace(
        tiny_params(), evaluate=dataclasses.replace(tiny_params().evaluate, threshold=0.3)
    )
    evaluate.run(
        params,
        trained / "model.pt",
        trained / "splits",
        tmp_path / "eval.json",
        tmp_path / "per_image.csv",
        tmp_path / "eval_pred",
    )
    project = tmp_path / "project"  # predict run from the project folder, as the README shows
    project.mkdir()
    write_params(project / "params.yaml", params)
    inputs = photos(project / "photos", trained, n=6)
    args = ["--model", str(trained / "model.pt"), "--input", "photos", "--output"]
    result = predict_cmd(*args, "masks", cwd=project)
    given = predict_cmd(*args, "masks_05", "--threshold", "0.5", cwd=project)
    assert result.returncode == 0 and given.returncode == 0, result.stderr + given.stderr
    differ = 0
    for name in (Path(p).name for p in inputs):
        expected = (tmp_path / "eval_pred" / name).read_bytes()
        assert (project / "masks" / name).read_bytes() == expected
        differ += (project / "masks_05" / name).read_bytes() != expected
    assert differ > 0, "at 0.5 the masks must differ, or this test proves nothing"
    assert (
        "settings: threshold 0.3, tile null, overlap 0.25, tta none, decode exact, backend torch "
        "(evaluate section of params.yaml, as the evaluate stage used)"
    ) in result.stderr
    assert "settings: threshold 0.5 (--threshold); tile null, overlap 0.25" in given.stderr

    monkeypatch.chdir(tmp_path)  # no params.yaml here
    caplog.set_level("INFO")
    predict.run(trained / "model.pt", Path(inputs[0]), tmp_path / "x", params_path=None)
    assert (
        "settings: threshold 0.5, tile null, overlap 0, tta none, decode exact, backend torch "
        "(the default: no params.yaml here to read evaluate settings from)"
    ) in caplog.text
    other = Path("other.yaml")
    message = refusal(trained / "model.pt", Path(inputs[0]), tmp_path / "y", params_path=other)
    assert message == "other.yaml: --params file not found"


def test_resume_state_and_inconsistent_checkpoints_are_one_line(tmp_path, trained):
    image = photos(tmp_path / "photos", trained, n=1)[0]
    resume = tmp_path / "state.pt"  # what training saves after each epoch
    save_resume_state(resume, {"fingerprint": "a run", "epoch": 1, "optimizer": {}})
    result = predict_cmd("--model", str(resume), "--input", image, "--output", str(tmp_path / "o"))
    assert error_line(result) == (
        f"error: {resume}: a training-resume state (saved after each epoch to continue an "
        "interrupted run), not a model checkpoint; use the train stage's checkpoint, "
        "models/model.pt"
    )
    payload = torch.load(trained / "model.pt", weights_only=True)
    payload["model_config"]["encoder"] = "resnet18"  # weights of a timm mobilenet
    torch.save(payload, tmp_path / "edited.pt")
    edited = refusal(tmp_path / "edited.pt", Path(image), tmp_path / "o")
    assert edited.startswith(
        f"{tmp_path / 'edited.pt'}: its weights do not fit its model_config (Unet, "
        "resnet18, 2 classes): 120 missing, 240 unexpected and 4 wrongly shaped tensor(s)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.pt", "photos", "state.pt"]


def test_output_that_is_a_file_or_cannot_be_written(tmp_path, trained, monkeypatch):
    image = photos(tmp_path / "photos", trained, n=1)[0]
    (tmp_path / "notes.txt").write_text("keep me")
    args = ["--model", str(trained / "model.pt"), "--input", image, "--output"]
    result = predict_cmd(*args, str(tmp_path / "notes.txt"))
    assert error_line(result) == (
        f"error: {tmp_path / 'notes.txt'}: an existing file, where --output needs a folder; "
        "choose another --output"
    )
    below = tmp_path / "notes.txt" / "masks"
    assert refusal(trained / "model.pt", Path(image), below) == (
        f"{below}: {tmp_path / 'notes.txt'} is an existing file, where --output needs a folder; "
        "choose another --output"
    )
    assert (tmp_path / "notes.txt").read_text() == "keep me"

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files.tempfile, "TemporaryFile", denied)  # as a read-only folder does
    with pytest.raises(SegpipeError) as err:
        predict.run(trained / "model.pt", tmp_path / "photos", tmp_path / "ro")
    assert str(err.value) == (
        f"{tmp_path / 'ro'}: cannot write to this folder (permission denied); choose another "
        "--output"
    )


def test_full_disk_during_predict_is_one_line_and_leaves_whole_files(
    tmp_path, trained, monkeypatch
):
    stems = sorted(Path(p).stem for p in photos(tmp_path / "photos", trained, n=5))
    save = Image.Image.save
    calls = []

    def fills_the_disk(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:  # the second image's mask, after the first's mask and overlay
            Path(fp).write_bytes(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", fills_the_disk)
    out = tmp_path / "out"
    with pytest.raises(SegpipeError) as err:
        predict.run(trained / "model.pt", tmp_path / "photos", out, with_overlay=True)
    assert str(err.value) == (
        f"{out / stems[1]}.png: cannot write (no space left on device); 1 of 5 image(s) were "
        "done before it, each file complete; free some space and run again with --overwrite"
    )
    # no temporary file left, and each file there is a whole PNG
    assert sorted(p.name for p in out.iterdir()) == [f"{stems[0]}.png", f"{stems[0]}_overlay.png"]
    for path in out.iterdir():
        Image.open(path).load()  # a cut-off PNG raises here


def test_python_api_predicts_arrays_and_files_on_a_chosen_device(tmp_path, trained):
    """The README's example: Predictor with a device, on arrays and on files (EXIF applied),
    giving the same label maps as the predict command; a device the machine lacks is one line."""
    from segpipe.api import Predictor

    photo = sorted((trained / "raw" / "images").iterdir())[0]
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    predictor = Predictor(trained / "model.pt", device="cpu")
    assert predictor.runtime.device == torch.device("cpu")
    (from_array,) = predictor.predict([rgb])
    assert from_array.shape == rgb.shape[:2] and from_array.dtype == np.uint8
    assert set(np.unique(from_array)) <= {0, 1}

    turned = tmp_path / "turned.jpg"  # stored sideways, EXIF says: turn it upright
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90).save(turned, exif=exif, quality=100)
    (from_file,) = predictor.predict_files([turned])
    assert from_file.shape == rgb.shape[:2]

    predict.run(trained / "model.pt", photo, tmp_path / "cmd", threshold=0.5, params_path=None)
    written = np.asarray(Image.open(tmp_path / "cmd" / f"{photo.stem}.png")) > 0
    assert np.array_equal(written, from_array.astype(bool))

    for device, expected in (("gpu", "not a device name"), ("cuda:7", "CUDA GPU")):
        with pytest.raises(SegpipeError, match=expected):
            Predictor(trained / "model.pt", device=device)


# --- settings, multi-class threshold, output subfolders, unreadable inputs, memory ----------


def test_another_projects_params_yaml_is_not_read_beyond_evaluate(tmp_path, trained):
    project = tmp_path / "other"
    project.mkdir()
    (project / "params.yaml").write_text("epochs: 10\nlr: 0.1\n")  # not segpipe's
    image = photos(project / "photos", trained, n=1)[0]
    args = ["--model", str(trained / "model.pt"), "--input", image]
    result = predict_cmd(*args, "--output", "a", "--threshold", "0.4", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "threshold 0.4 (--threshold)" in result.stderr
    assert "(the default: params.yaml has no evaluate section (another project's file?))" in (
        result.stderr
    )
    result = predict_cmd(*args, "--output", "b", cwd=project)  # no flag: defaults, said so
    assert result.returncode == 0, result.stderr
    (project / "other.yaml").write_text("epochs: 10\n")
    named = predict_cmd(*args, "--output", "c", "--params", "other.yaml", cwd=project)
    assert error_line(named) == (
        "error: other.yaml: has no evaluate section to read predict's settings from; pass a "
        "segpipe params file, or give the settings as flags (--threshold, --tile, ...)"
    )
    (project / "params.yaml").write_text("evaluate: {threshold: 0.4, epochs: 3}\n")
    bad = predict_cmd(*args, "--output", "d", cwd=project)
    assert error_line(bad).startswith("error: params.yaml: unknown parameter 'evaluate.epochs'")
    flags = ["--threshold", "0.4", "--tile", "0", "--overlap", "0", "--tta", "none"]
    flags += ["--decode", "exact", "--backend", "torch"]
    every = predict_cmd(*args, "--output", "e", *flags, cwd=project)
    assert every.returncode == 0, every.stderr  # every setting given: the file is not read
    assert sorted(p.name for p in project.iterdir()) == [
        "a", "b", "e", "other.yaml", "params.yaml", "photos"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--threshold", "1.5"], "--threshold: must be in (0, 1), got 1.5"),
        (["--threshold", "nan"], "--threshold: must be in (0, 1), got nan"),
        (["--tile", "100"], "--tile: must be null (whole image) or a multiple of 32"),
        (["--tile", "-32"], "--tile: must be null (whole image) or a multiple of 32"),
        (["--tile", "64", "--overlap", "0.99"], "--overlap: must be in [0, 0.75]"),
        (["--overlap", "-0.1"], "--overlap: must be in [0, 0.75]"),
    ],
)
def test_bad_setting_flags_are_one_line(tmp_path, trained, flags, message):
    image = photos(tmp_path / "photos", trained, n=1)[0]
    args = ["--model", str(trained / "model.pt"), "--input", image, "--output", "out"]
    result = predict_cmd(*args, *flags, cwd=tmp_path)
    assert error_line(result).startswith(f"error: {message}")
    assert not (tmp_path / "out").exists()


def test_threshold_on_a_multi_class_model_is_refused(tmp_path, trained):
    model = untrained_checkpoint(tmp_path / "three.pt", classes=3)
    image = photos(tmp_path / "photos", trained, n=1)[0]
    args = ["--model", str(model), "--input", image, "--output", str(tmp_path / "out")]
    result = predict_cmd(*args, "--threshold", "0.3")
    assert error_line(result) == (
        f"error: --threshold: {model} has 3 classes and gives each pixel its most likely one "
        "(argmax); a threshold applies to two-class models only, drop --threshold"
    )
    assert not (tmp_path / "out").exists()
    plain = predict_cmd(*args)  # evaluate.threshold of params.yaml: not the user's ask, unused
    assert plain.returncode == 0, plain.stderr
    assert "class of each pixel by argmax over 3 classes" in plain.stderr


def test_a_file_where_an_output_subfolder_goes_is_refused_before_loading(tmp_path, trained):
    photos(tmp_path / "in" / "a", trained, n=2)
    photos(tmp_path / "in" / "b" / "c", trained, n=1)
    out = tmp_path / "out"
    for blocker in (out / "a", out / "b"):
        out.mkdir(exist_ok=True)
        blocker.write_text("keep me")
        # a missing model: the refusal must come first, before the model is read
        message = refusal(tmp_path / "missing.pt", tmp_path / "in", out, overwrite=True)
        name = blocker.name
        count = 2 if name == "a" else 1
        assert message == (
            f"{blocker}: a file where the subfolder for {count} output(s) goes (inputs in the "
            f"subfolder {name} of --input); move or rename it, or choose another --output"
        )
        assert blocker.read_text() == "keep me"
        blocker.unlink()


def test_an_unreadable_single_input_fails(tmp_path, trained):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    args = ["--model", str(trained / "model.pt"), "--output", str(tmp_path / "out")]
    result = predict_cmd(*args, "--input", str(tmp_path / "broken.jpg"))
    line = error_line(result)
    assert line.startswith(f"error: {tmp_path / 'broken.jpg'}: ")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    result = predict_cmd(*args, "--input", str(folder))
    assert error_line(result).startswith(
        f"error: {folder}: none of its 2 image(s) could be read, e.g. {folder / 'a.png'}"
    )


def test_an_input_too_large_for_memory_is_refused_with_a_tile_that_fits(
    tmp_path, trained, monkeypatch
):
    """A crop-trained model sees images whole: the estimate is checked before any work."""
    model = untrained_checkpoint(tmp_path / "crops.pt", crop=64)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (96, 64)).save(folder / "small.png")
    Image.new("RGB", (1000, 600)).save(folder / "large.png")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 200 * 2**20)
    message = refusal(model, folder, tmp_path / "out")
    assert message.startswith(
        f"{folder / 'large.png'}: a 1000x600 image is one 1024x608 input to this model (each "
        "image at 1 of its size (trained on 64x64 crops)): about "
    )
    assert "GiB free (1 of 2 input(s) are too large); predict in windows: pass --tile " in message
    tile = int(message.split("pass --tile ")[1].split()[0])
    assert tile % 32 == 0 and 32 <= tile <= 1024
    assert not (tmp_path / "out").exists()
    done = predict.run(model, folder, tmp_path / "out", tile=tile)
    assert done["written"] == 2


def test_the_evaluate_stage_checks_memory_before_any_work(tmp_path, trained, monkeypatch):
    """The same estimate guards the evaluate stage, which suggests the parameter to set."""
    model = untrained_checkpoint(tmp_path / "crops.pt", crop=64)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    test = read_split(trained / "splits" / "test.csv")
    largest = max(test.itertuples(), key=lambda row: row.height * row.width)
    with pytest.raises(SegpipeError) as refused:
        evaluate.run(
            load_params(write_params(tmp_path / "p.yaml", data__classes=["background", "class1"])),
            model,
            trained / "splits",
            tmp_path / "evaluate.json",
            tmp_path / "per_image.csv",
            tmp_path / "predictions",
        )
    message = str(refused.value)
    assert message.startswith(f"{largest.image}: a {largest.width}x{largest.height} image is ")
    assert message.endswith("predict in windows: set evaluate.tile: 32 in params.yaml")
    assert not (tmp_path / "predictions").exists() and not (tmp_path / "evaluate.json").exists()


def test_the_memory_estimate_grows_with_the_input(tmp_path):
    from segpipe.inference.predictor import Predictor

    predictor = Predictor(untrained_checkpoint(tmp_path / "c.pt", crop=64), device="cpu")
    small, large = predictor.memory_needed(256, 256), predictor.memory_needed(1024, 1024)
    assert large == pytest.approx(16 * small, rel=0.01)
    assert predictor.memory_needed(1024, 1024, tile=256) == small
