"""End to end on a folder dataset as users bring one, set up as the README says (`dvc add` of
its folders): `dvc repro` and `predict` keep every file name exactly, EXIF-rotated phone photos
line up with masks drawn on them as shown, the data is stored once, and a clone, `dvc exp run
--temp` and `dvc artifacts get` work on it. (The queue, the run cache and `dvc exp apply` are
tested on the synthetic repository: tests/test_e2e_compare.py, tests/test_e2e.py and
tests/test_remote_s3.py.)"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

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
"""The tiny settings on the folder dataset, for four epochs: enough to learn the disc."""


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
    """A section no stage reads stops `dvc repro`; `dvc exp run --temp` runs in a copy of the
    repository that gets the DVC-tracked data as it is, no -C needed (the queue runs in such
    copies too: tests/test_e2e_compare.py)."""
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
