"""End to end on annotation exports: `dvc exp run -S data.format=coco` on a COCO export and
`-S data.format=voc` on a Pascal VOC tree, each ending with per-class metrics."""

from __future__ import annotations

import json

import pytest

from segpipe.data.tables import read_split

from .annotations import write_coco_export, write_voc_tree
from .helpers import TINY, copy_repo, dvc

pytestmark = pytest.mark.slow

CLASSES = ["background", "disc", "square"]
EDITS = {
    **TINY,
    "data__source": "folder",
    "data__path": "data/external/coco",
    "data__classes": CLASSES,
    "data__ignore_index": 255,
    "train__epochs": 2,
}
VOC_TRAIN, VOC_VAL = list(range(12)), list(range(12, 18))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple:
    """A copy of the repository whose git-ignored data/external holds a COCO export (20
    photos, a few crowd regions, one unannotated) and a VOC tree (18 masked photos)."""
    root = tmp_path_factory.mktemp("e2e_exports") / "repo"
    env = copy_repo(root, EDITS)
    write_coco_export(root / "data" / "external" / "coco", 20, crowd_every=6)
    write_voc_tree(
        root / "data" / "external" / "voc", 18, lists={"train": VOC_TRAIN, "val": VOC_VAL}
    )
    return root, env


def per_class(root) -> dict[str, float]:
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    for name in CLASSES[1:]:
        for key in ("dice", "iou", "precision", "recall"):
            value = metrics[f"{key}/{name}"]
            assert value is None or 0.0 <= value <= 1.0, (key, name, value)
    return metrics


def test_coco_export_trains_end_to_end(repo):
    root, env = repo
    out = dvc(["exp", "run", "-S", "data.format=coco"], root, env)
    for stage in ("download", "split", "cache", "train", "evaluate", "plot"):
        assert f"Running stage '{stage}'" in out
    report = json.loads((root / "data" / "splits" / "report.json").read_text())
    assert report["valid_pairs"] == 20 and report["source"]["format"] == "coco"
    assert report["source"]["problems"] == []
    assert report["source"]["counts"]["background_only"] == 1
    assert report["source"]["counts"]["crowd_regions"] == 4
    assert report["ignored_pixels"] > 0  # the crowd regions
    metrics = per_class(root)
    assert metrics["dice/disc"] is not None and metrics["n_images"] == 5
    card = (root / "metrics" / "model_card.md").read_text()
    assert "image folder `data/external/coco` (a COCO export)" in card


def test_voc_tree_trains_end_to_end_split_by_its_lists(repo):
    root, env = repo
    args = ["-S", "data.format=voc", "-S", "data.path=data/external/voc"]
    out = dvc(["exp", "run", *args, "-S", "data.voc.image_sets=true"], root, env)
    assert "Running stage 'download'" in out and "Running stage 'evaluate'" in out
    test = sorted(read_split(root / "data" / "splits" / "test.csv")["stem"])
    assert test == [f"2007_{i:06d}" for i in VOC_VAL]  # val.txt is the test split
    metrics = per_class(root)
    assert metrics["n_images"] == len(VOC_VAL) and metrics["dice/square"] is not None
    report = json.loads((root / "data" / "splits" / "report.json").read_text())
    assert report["source"]["counts"]["images_without_mask"] == 1
    assert report["ignored_pixels"] > 0  # the 255 borders
