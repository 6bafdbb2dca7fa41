"""Ensembles of checkpoints (predict, the Python Predictor, the evaluate stage) and the class
probabilities predict writes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segpipe.commands import predict
from segpipe.errors import SegpipeError
from segpipe.evaluation import evaluate
from segpipe.inference.predictor import Predictor
from segpipe.inference.tiling import InferenceOptions
from segpipe.model.outputs import class_probabilities

from .helpers import call, tiny_params, untrained_checkpoint

OPTIONS = InferenceOptions(tile=32, overlap=0.5, tta="flip")
"""Windows and flip averaging: each member runs both before the probabilities are averaged."""

FLOAT16_STEP = 2.0**-11
"""float16's spacing in [0.5, 1): a stored probability is within half of it of the exact one."""


def photos(folder: Path, sizes=((50, 70), (90, 41))) -> list[Path]:
    """Random RGB photos of odd sizes (height, width)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def models(tmp_path: Path, classes: int, n: int = 2) -> list[Path]:
    """``n`` different untrained checkpoints of ``classes`` classes."""
    torch.manual_seed(classes)
    return [untrained_checkpoint(tmp_path / f"m{i}.pt", classes) for i in range(n)]


def read_probabilities(path: Path) -> tuple[np.ndarray, list[str]]:
    with np.load(path) as saved:  # no pickle needed: plain arrays
        return saved["probabilities"], list(saved["classes"])


@pytest.mark.parametrize("classes", [2, 3])
def test_an_ensemble_of_one_is_its_model_byte_for_byte(tmp_path, classes):
    (model,) = models(tmp_path, classes, n=1)
    images = photos(tmp_path / "in")
    alone = Predictor(model, device="cpu", options=OPTIONS)
    ensemble = Predictor([model], device="cpu", options=OPTIONS)
    for a, b in zip(alone.predict_files(images), ensemble.predict_files(images), strict=True):
        assert np.array_equal(a, b)
    batch = torch.stack([alone.prepare(np.asarray(Image.open(images[0])))[0]])
    assert torch.equal(alone.logits(batch), ensemble.logits(batch))

    for name, given in (("alone", model), ("ensemble", [model])):
        predict.run(given, tmp_path / "in", tmp_path / name, with_probabilities=True, tile=32)
    for path in images:
        stem = path.stem
        mask = (tmp_path / "alone" / f"{stem}.png").read_bytes()
        assert mask == (tmp_path / "ensemble" / f"{stem}.png").read_bytes()
        single, _ = read_probabilities(tmp_path / "alone" / f"{stem}.npz")
        averaged, _ = read_probabilities(tmp_path / "ensemble" / f"{stem}.npz")
        assert np.array_equal(single, averaged)


@pytest.mark.parametrize("classes", [2, 3])
def test_an_ensemble_averages_its_members_probabilities(tmp_path, classes):
    paths = models(tmp_path, classes)
    ensemble = Predictor(paths, device="cpu", options=OPTIONS)
    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    members = [Predictor(p, device="cpu", options=OPTIONS).logits(batch) for p in paths]
    expected = torch.stack([class_probabilities(m) for m in members]).mean(0)
    got = class_probabilities(ensemble.logits(batch))
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(class_probabilities(members[0]), expected, atol=1e-3)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"classes": 3}, "classes"),
        ({"image_size": 96}, "image_size"),
        ({"crop": 64}, "crop"),
        ({"mean": (0.5, 0.5, 0.5)}, "mean"),
    ],
)
def test_mismatched_members_are_one_line_naming_both_files_and_the_field(tmp_path, change, field):
    first = untrained_checkpoint(tmp_path / "first.pt")
    classes = change.pop("classes", 2)
    other = untrained_checkpoint(tmp_path / "other.pt", classes, **change)
    with pytest.raises(SegpipeError) as err:
        Predictor([first, other], device="cpu")
    message = str(err.value)
    assert message.startswith(f"{first}, {other}: {field} differs (")
    assert "\n" not in message


def test_a_member_given_twice_is_refused(tmp_path):
    (model,) = models(tmp_path, 2, n=1)
    with pytest.raises(SegpipeError, match="given twice"):
        Predictor([model, model], device="cpu")
    with pytest.raises(SegpipeError, match="no checkpoint given"):
        Predictor([], device="cpu")


def test_predict_takes_several_models_and_writes_their_ensembles_masks(tmp_path):
    paths = models(tmp_path, 2)
    images = photos(tmp_path / "in")
    args = ["--model", paths[0], "--model", paths[1], "--input", tmp_path / "in"]
    result = call(predict.main, *args, "--output", tmp_path / "out", "--threshold", "0.5")
    assert result.returncode == 0, result.stderr
    assert "ensemble of 2 models (probabilities averaged)" in result.stderr
    expected = Predictor(paths, device="cpu").predict_files(images)
    for path, labels in zip(images, expected, strict=True):
        written = np.asarray(Image.open(tmp_path / "out" / f"{path.stem}.png")) > 0
        assert np.array_equal(written, labels.astype(bool))

    mismatched = untrained_checkpoint(tmp_path / "three.pt", 3)
    result = call(predict.main, "--model", paths[0], "--model", mismatched, *args[4:], "--output",
                  tmp_path / "bad")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {paths[0]}, {mismatched}: classes differs")
    )


@pytest.mark.parametrize("classes", [2, 3])
def test_written_probabilities_reproduce_the_masks(tmp_path, classes):
    """Thresholding (two classes) or the argmax of ``<stem>.npz`` gives ``<stem>.png``, except
    where float16 rounding puts a pixel within one step of the threshold (or of a tie)."""
    paths = models(tmp_path, classes)
    images = photos(tmp_path / "in")
    threshold = 0.5 if classes == 2 else None
    out = tmp_path / "out"
    predict.run(paths, tmp_path / "in", out, with_probabilities=True, threshold=threshold)
    names = ["background", *(f"class{i}" for i in range(1, classes))]
    for path in images:
        mask = np.asarray(Image.open(out / f"{path.stem}.png"))
        probabilities, saved_names = read_probabilities(out / f"{path.stem}.npz")
        h, w = np.asarray(Image.open(path)).shape[:2]
        assert probabilities.shape == (classes, h, w) and probabilities.dtype == np.float16
        assert saved_names == names
        assert np.allclose(probabilities.astype(np.float32).sum(0), 1.0, atol=2e-3)
        p = probabilities.astype(np.float32)
        if classes == 2:
            labels, margin = p[1] > 0.5, np.abs(p[1] - 0.5)
            mask = mask > 0
        else:
            labels = p.argmax(0)
            top2 = np.sort(p, axis=0)[-2:]
            margin = top2[1] - top2[0]
        differ = labels != mask
        assert np.all(margin[differ] <= FLOAT16_STEP)
        assert differ.mean() < 0.01

    with pytest.raises(SegpipeError, match=r"\.npz: already exists"):
        for path in images:  # only the probabilities left: still refused without --overwrite
            (out / f"{path.stem}.png").unlink()
        predict.run(paths, tmp_path / "in", out, with_probabilities=True, threshold=threshold)


def noisy_copy(source: Path, target: Path, seed: int) -> Path:
    """``source``'s checkpoint with its weights perturbed: another model, same classes and
    geometry."""
    payload = torch.load(source, weights_only=True)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in payload["state_dict"].items():
        if tensor.is_floating_point() and "weight" in name:
            tensor += 0.05 * torch.randn(tensor.shape, generator=generator)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, target)
    return target


def score(tiny_run: Path, out: Path, ensemble: list[str] | None, folder: Path) -> dict:
    params = tiny_params()
    params = dataclasses.replace(
        params, evaluate=dataclasses.replace(params.evaluate, ensemble=ensemble)
    )
    metrics = evaluate.run(
        params,
        tiny_run / "model.pt",
        tiny_run / "splits",
        out / "evaluate.json",
        out / "per_image.csv",
        out / "predictions",
        card_path=out / "card.md",
        ensemble_dir=folder,
    )
    assert json.loads((out / "evaluate.json").read_text()) == metrics
    return metrics


def test_evaluate_scores_an_ensemble_and_says_so(tmp_path, tiny_run):
    folder = tmp_path / "ensemble"
    folder.mkdir()
    copy = Path(shutil.copy2(tiny_run / "model.pt", folder / "a.pt"))
    other = noisy_copy(tiny_run / "model.pt", folder / "b.pt", seed=3)
    single = score(tiny_run, tmp_path / "single", None, folder)
    of_one = score(tiny_run, tmp_path / "one", [str(copy)], folder)
    assert {k: v for k, v in of_one.items() if k != "ensemble_size"} == single
    assert of_one["ensemble_size"] == 1 and "ensemble_size" not in single
    for mask in (tmp_path / "single" / "predictions").iterdir():
        assert mask.read_bytes() == (tmp_path / "one" / "predictions" / mask.name).read_bytes()

    pair = score(tiny_run, tmp_path / "pair", [str(tiny_run / "model.pt"), str(other)], folder)
    assert pair["ensemble_size"] == 2
    card = (tmp_path / "pair" / "card.md").read_text()
    assert "## Ensemble" in card and f"`{other.as_posix()}`" in card
    assert "## Ensemble" not in (tmp_path / "single" / "card.md").read_text()

    outside = noisy_copy(tiny_run / "model.pt", tmp_path / "elsewhere.pt", seed=4)
    with pytest.raises(SegpipeError, match=r"^evaluate.ensemble: .*elsewhere.pt is outside"):
        score(tiny_run, tmp_path / "bad", [str(copy), str(outside)], folder)
