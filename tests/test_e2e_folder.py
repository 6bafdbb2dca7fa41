"""End to end on a folder dataset as users bring one: `dvc repro` and `predict` keep every
file name exactly, and EXIF-rotated phone photos line up with masks drawn on them as shown."""

from __future__ import annotations

import json
import shutil
import sys
import time

import numpy as np
import pytest
from PIL import Image

from segpipe.constants import SPLITS
from segpipe.data.tables import read_split, read_table

from .helpers import TINY, copy_repo, dvc, run
from .realdata import AWKWARD_STEMS, dice, write_folder_dataset

pytestmark = pytest.mark.slow

STEMS = [*AWKWARD_STEMS, *(f"{i:04d}" for i in range(10, 22))]
ROTATED = ("0042", "0043")  # stored sideways with EXIF Orientation 6: 64x48, then 64x64
EDITS = {**TINY, "data__source": "folder", "train__epochs": 4}


def read_mask_file(path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """A copy of the repository whose folder dataset has awkward names and two rotated photos,
    after `dvc repro`: its root, environment, dataset folder and the output of `dvc repro`."""
    root = tmp_path_factory.mktemp("e2e_folder") / "repo"
    env = copy_repo(root, EDITS)
    external = write_folder_dataset(root / "data" / "external", [*STEMS, *ROTATED], rotated=ROTATED)
    return root, env, external, dvc(["repro"], root, env)


def test_awkward_names_and_rotated_photos_end_to_end(tmp_path, reproduced):
    root, env, external, out = reproduced

    # Every name, byte for byte, in the split CSVs; both rotated photos kept and counted.
    report = json.loads((root / "data" / "splits" / "report.json").read_text())
    assert report["exif_turned_images"] == 2 and report["skipped_count"] == 0
    splits = {name: read_split(root / "data" / "splits" / f"{name}.csv") for name in SPLITS}
    assert sorted(s for f in splits.values() for s in f["stem"]) == sorted([*STEMS, *ROTATED])
    test = sorted(splits["test"]["stem"])

    # Evaluate's predictions and per-image scores carry the test stems exactly.
    predictions = root / "data" / "predictions"
    assert sorted(p.name for p in predictions.iterdir()) == sorted(f"{s}.png" for s in test)
    per_image = read_table(root / "metrics" / "per_image.csv", ("stem", "dice"), "scores", "")
    assert sorted(per_image["stem"]) == test
    worst = per_image.sort_values(["dice", "stem"], kind="stable").head(6)["stem"]
    assert f"the {len(worst)} worst ({', '.join(worst)})" in out  # the plot stage's log line

    # predict on the user's folder, plus a WebP in a subfolder and a stray file.
    photos = tmp_path / "photos"
    shutil.copytree(external / "images", photos)
    (photos / "extra").mkdir()
    Image.open(external / "images" / "0010.jpg").save(photos / "extra" / "0010.webp")
    (photos / "notes.txt").write_text("not an image")
    predicted = tmp_path / "predicted"
    predicted_by = run(
        [
            sys.executable,
            root / "stages" / "predict.py",
            "--model",
            root / "models" / "model.pt",
            "--input",
            photos,
            "--output",
            predicted,
        ],
        root,
        env,
    )
    log = predicted_by.stdout + predicted_by.stderr
    assert "ignored 1 file(s) that are not supported images" in log and "notes.txt" in log
    written = sorted(p.relative_to(predicted).as_posix() for p in predicted.rglob("*.png"))
    assert written == sorted([*(f"{s}.png" for s in [*STEMS, *ROTATED]), "extra/0010.png"])
    for stem in test:  # the very masks evaluate scored
        assert (predicted / f"{stem}.png").read_bytes() == (
            predictions / f"{stem}.png"
        ).read_bytes()

    # Rotated photos: masks at the shown size, scoring like the other photos.
    scores = {}
    for stem in [*STEMS, *ROTATED]:
        pred = read_mask_file(predicted / f"{stem}.png")
        truth = read_mask_file(external / "masks" / f"{stem}.png")
        assert pred.shape == truth.shape, stem
        scores[stem] = dice(pred, truth)
    typical = float(np.median([scores[s] for s in STEMS]))
    assert typical > 0.7, scores
    for stem in ROTATED:
        assert scores[stem] > typical - 0.15, scores
    # Read as stored (sideways), the square photo's mask would miss the disc.
    square = ROTATED[1]
    truth = read_mask_file(external / "masks" / f"{square}.png")
    sideways = dice(read_mask_file(predicted / f"{square}.png"), np.rot90(truth, k=1))
    assert sideways < scores[square] - 0.4, (sideways, scores[square])


def dvc_fails(args: list[str], root, env) -> str:
    """Run dvc, assert it failed, return its output."""
    result = run([sys.executable, "-m", "dvc", *args], root, env, check=False)
    assert result.returncode != 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_misspelt_section_and_temporary_copies(reproduced):
    """A section no stage reads stops `dvc repro`; `dvc exp run --temp` explains the missing
    git-ignored data folder, and works with --copy-paths as the README says."""
    root, env, _, _ = reproduced

    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params + "modle:\n  arch: Unet\n")
    out = dvc_fails(["repro"], root, env)
    assert "error: unknown parameter 'modle'" in out
    (root / "params.yaml").write_text(params)
    assert "Running stage" not in dvc(["repro"], root, env)

    out = dvc_fails(["exp", "run", "--temp", "-S", "train.lr=0.002"], root, env)
    assert "DVC's temporary copy of the repository" in out
    assert "dvc exp run --temp -C data/external/images -C data/external/masks" in out
    copied = ["exp", "run", "--temp", "-C", "data/external/images", "-C", "data/external/masks"]
    copied += ["-S", "train.lr=0.002"]
    out = dvc(copied, root, env)
    assert "Running stage 'train'" in out
    shown = dvc(["exp", "show", "--json"], root, env)
    assert "0.002" in shown

    # The queue runs from the last commit, in a copy of its own: the same -C options.
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "baseline"], root, env)
    queued = ["exp", "run", "--queue", "-C", "data/external/images", "-C", "data/external/masks"]
    dvc([*queued, "-S", "train.lr=0.003"], root, env)
    dvc(["queue", "start", "-j", "1"], root, env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = dvc(["queue", "status"], root, env)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert "Success" in status and "Failed" not in status, status
    assert "0.003" in dvc(["exp", "show", "--json"], root, env)
