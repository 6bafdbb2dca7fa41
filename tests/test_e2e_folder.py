"""End to end on a folder dataset as users bring one, set up as the README says (`dvc add` of
its folders): `dvc repro` and `predict` keep every file name exactly, EXIF-rotated phone photos
line up with masks drawn on them as shown, the data is stored once, and a clone, `dvc exp run
--temp`, the queue, the run cache and `dvc artifacts get` all work on it."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import time

import numpy as np
import pytest
from PIL import Image

from segpipe.constants import SPLITS
from segpipe.data.tables import read_split, read_table

from .helpers import TINY, collect_runs, copy_repo, dvc, run, run_queue
from .realdata import AWKWARD_STEMS, dice, write_folder_dataset

pytestmark = pytest.mark.slow

STEMS = [*AWKWARD_STEMS, *(f"{i:04d}" for i in range(10, 22))]
ROTATED = ("0042", "0043")  # stored sideways with EXIF Orientation 6: 64x48, then 64x64
EDITS = {
    **TINY,
    "data__source": "folder",
    "train__epochs": 4,
    "model__encoder": "tu-mobilenetv3_small_050",
}
"""The tiny settings on the folder dataset with the 2.2M-parameter encoder (resnet18 has 14M):
every run here writes, hashes and copies its checkpoints (the temporary copy, the queue, the
run cache, push, pull, `dvc artifacts get`), and four epochs still learn the disc."""


def read_mask_file(path) -> np.ndarray:
    return np.asarray(Image.open(path))


TRACK = ["add", "data/external/images", "data/external/masks"]
"""The README's set-up: DVC tracks the dataset's folders (git keeps the .dvc files)."""


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """A copy of the repository whose folder dataset has awkward names and two rotated photos,
    tracked with `dvc add` and committed, after `dvc repro`: its root, environment, dataset
    folder and the output of `dvc repro`."""
    root = tmp_path_factory.mktemp("e2e_folder") / "repo"
    env = copy_repo(root, EDITS)
    external = write_folder_dataset(root / "data" / "external", [*STEMS, *ROTATED], rotated=ROTATED)
    dvc(TRACK, root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "track the dataset"], root, env)
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
    """A section no stage reads stops `dvc repro`; `dvc exp run --temp` and a grid through the
    queue run in copies of the repository that get the DVC-tracked data as they are, no -C
    needed."""
    root, env, _, _ = reproduced

    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params + "modle:\n  arch: Unet\n")
    out = dvc_fails(["repro"], root, env)
    assert "error: unknown parameter 'modle'" in out
    (root / "params.yaml").write_text(params)
    assert "Running stage" not in dvc(["repro"], root, env)

    # data.classes is a download parameter: the temporary copy reruns download on its data.
    renamed = "data.classes=[background,polyp]"
    out = dvc(["exp", "run", "--temp", "-S", "train.lr=0.002", "-S", renamed], root, env)
    assert "Running stage 'download'" in out and "Running stage 'train'" in out
    assert "not tracked by DVC" not in out
    assert "0.002" in dvc(["exp", "show", "--json"], root, env)

    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "baseline", "--allow-empty"], root, env)
    # A grid through the queue: both experiments run, each from a copy of the last commit.
    dvc(["exp", "run", "--queue", "-S", "train.lr=0.003,0.01"], root, env)
    status = run_queue(root, env)
    assert "Success" in status and "Failed" not in status, status
    runs = collect_runs(json.loads(dvc(["exp", "show", "--json"], root, env)))
    queued = {lr: dice for name, lr, dice in runs if name and lr in (0.003, 0.01)}
    assert set(queued) == {0.003, 0.01}, runs
    assert queued[0.003] != queued[0.01]


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324 - DVC's content address


def test_the_dataset_is_stored_once(reproduced):
    """The user's files, data/imported and DVC's cache are one file on disk (hard links),
    read-only so that an edit in place cannot change the cache."""
    root, _, external, _ = reproduced
    for kind, name in (("images", "0010.jpg"), ("masks", "0010.png")):
        mine, raw = external / kind / name, root / "data" / "imported" / kind / name
        digest = md5(mine)
        cached = root / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]
        assert mine.stat().st_ino == raw.stat().st_ino == cached.stat().st_ino
        assert mine.stat().st_nlink == 3 and not mine.stat().st_mode & 0o222


def test_clone_pull_is_up_to_date_and_artifact_get(reproduced, tmp_path):
    """Repository A pushes to a shared remote; clone B pulls and `dvc repro` has nothing to
    do, with A's metrics and model. `dvc artifacts get` of the model from A's git remote."""
    root, env, external, _ = reproduced
    dvc(["remote", "add", "--default", "shared", tmp_path / "remote"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "shared remote"], root, env)
    dvc(["push"], root, env)
    run(["gto", "register", "segmentation-model", "--version", "v1.0.0"], root, env)
    bare = tmp_path / "origin.git"
    run(["git", "clone", "-q", "--bare", root, bare], tmp_path, env)

    clone = tmp_path / "b"
    run(["git", "clone", "-q", bare, clone], tmp_path, env)
    dvc(["pull"], clone, env)
    out = dvc(["repro"], clone, env)
    assert "Running stage" not in out and "Data and pipelines are up to date." in out
    for name in ("images/0010.jpg", "masks/0042.png"):
        assert (clone / "data" / "external" / name).read_bytes() == (external / name).read_bytes()
    assert (clone / "models" / "model.pt").read_bytes() == (
        root / "models" / "model.pt"
    ).read_bytes()
    shown = [json.loads(dvc(["metrics", "show", "--json"], where, env)) for where in (root, clone)]
    assert shown[0] == shown[1] and "metrics/evaluate.json" in json.dumps(shown[1])

    # The registered version of the model, from the git remote and the DVC remote alone.
    got = tmp_path / "got"
    got.mkdir()
    model = (root / "models" / "model.pt").read_bytes()
    dvc(["artifacts", "get", bare, "segmentation-model", "-o", got / "latest.pt"], got, env)
    assert (got / "latest.pt").read_bytes() == model
    get = ["artifacts", "get", bare, "segmentation-model", "--rev", "v1.0.0", "-o", got / "v1.pt"]
    dvc(get, got, env)
    assert (got / "v1.pt").read_bytes() == model


def test_earlier_params_restore_the_model_from_the_run_cache(reproduced):
    """Back at earlier params (params.yaml reverted), `dvc repro` restores the trained model
    from DVC's run cache without training; `dvc exp apply` brings an experiment's back."""
    root, env, _, _ = reproduced
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "before the experiment", "--allow-empty"], root, env)
    assert "Running stage" not in dvc(["repro"], root, env)
    baseline = (root / "models" / "model.pt").read_bytes()
    history = (root / "metrics" / "train" / "metrics.json").read_bytes()

    out = dvc(["exp", "run", "-n", "lr-high", "-S", "train.lr=0.005"], root, env)
    assert "Running stage 'train'" in out and "epoch 1/4" in out
    changed = (root / "models" / "model.pt").read_bytes()
    assert changed != baseline

    run(["git", "checkout", "--", "params.yaml"], root, env)
    started = time.monotonic()
    out = dvc(["repro"], root, env)
    seconds = time.monotonic() - started
    assert "Stage 'train' is cached - skipping run, checking out outputs" in out
    assert not re.search(r"epoch \d+/\d+", out), "no training"
    assert (root / "models" / "model.pt").read_bytes() == baseline
    assert (root / "metrics" / "train" / "metrics.json").read_bytes() == history
    print(f"restored from the run cache in {seconds:.1f} s")

    dvc(["exp", "apply", "lr-high"], root, env)
    assert (root / "models" / "model.pt").read_bytes() == changed
    assert "lr: 0.005" in (root / "params.yaml").read_text()
    run(["git", "checkout", "--", "params.yaml", "dvc.lock", "metrics"], root, env)
    dvc(["checkout"], root, env)
