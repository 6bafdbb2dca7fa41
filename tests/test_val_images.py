"""The validation images training logs through DVCLive: which images, when, what each row shows,
and that logging them changes nothing in the trained model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from segpipe.config import load_params
from segpipe.data.cache import cache_paths
from segpipe.data.colours import colourize
from segpipe.data.dataset import CachedDataset
from segpipe.errors import SegpipeError
from segpipe.model.checkpoint import load_checkpoint
from segpipe.training import train, val_images

from .helpers import TRAINING_THREADS, tiny_params, torch_threads, write_params


def test_the_same_images_spread_over_the_split():
    assert val_images.chosen(6) == [0, 2, 3, 5]
    assert val_images.chosen(100) == [0, 33, 66, 99]
    assert val_images.chosen(3) == [0, 1, 2]
    assert val_images.chosen(1) == [0]


def test_logged_after_the_first_epoch_and_every_nth_after_it():
    assert [e for e in range(1, 9) if val_images.due(e, 1)] == list(range(1, 9))
    assert [e for e in range(1, 9) if val_images.due(e, 3)] == [1, 4, 7]
    assert [e for e in range(1, 9) if val_images.due(e, 10)] == [1]


def test_every_must_be_at_least_one(tmp_path):
    path = write_params(tmp_path / "params.yaml", train__val_images_every=0)
    with pytest.raises(SegpipeError, match=r"train\.val_images_every: .*must be >= 1, got 0"):
        load_params(path)


def test_each_row_is_the_cached_image_its_truth_and_the_prediction(tiny_run):
    """The tiny run (one epoch) logged step 0: one row per chosen validation image, the image
    as cached, its true mask and a binary prediction in class colours."""
    logged = tiny_run / "live" / "plots" / "images" / val_images.FOLDER
    assert sorted(p.name for p in logged.iterdir()) == ["0.png"]
    pixels = np.asarray(Image.open(logged / "0.png").convert("RGB"))
    size = tiny_params().train.image_size  # 64: no shrinking
    gap = val_images.GAP
    assert pixels.shape == (4 * size + 3 * gap, 3 * size, 3)
    dataset = CachedDataset(*cache_paths(tiny_run / "cache", "val"), transform=None)
    for row, index in enumerate(val_images.chosen(len(dataset))):
        image, truth = dataset.cached(index)
        top = row * (size + gap)
        shown = pixels[top : top + size]
        assert np.array_equal(shown[:, :size], image)
        assert np.array_equal(shown[:, size : 2 * size], colourize(truth, 2))
        predicted = shown[:, 2 * size :].reshape(-1, 3)
        assert set(map(tuple, np.unique(predicted, axis=0).tolist())) <= {
            (0, 0, 0),
            (255, 255, 255),
        }
        assert not pixels[top + size : top + size + gap].any()  # black between two rows


def test_rows_of_other_sizes_are_padded_and_large_panels_shrunk():
    """Crop training validates whole images of their own sizes: rows are padded on the right;
    panels above MAX_SIDE are shrunk by a whole factor."""
    rows = [np.full((100, 3 * 80, 3), 255, np.uint8), np.full((60, 3 * 40, 3), 255, np.uint8)]
    small = np.asarray(val_images.picture(rows))
    assert small.shape == (100 + val_images.GAP + 60, 240, 3)
    assert (
        not small[100 + val_images.GAP :, 120:].any() and small[100 + val_images.GAP :, :120].all()
    )
    large = [np.full((300, 3 * 600, 3), 255, np.uint8)]
    assert val_images.picture(large).size == (3 * 200, 100)  # 600 px panels: a third


def test_logging_the_images_changes_nothing_in_training(tmp_path, monkeypatch, tiny_run):
    """Two epochs with the images of epoch 1 logged, and without any: the same weights."""
    params = dataclasses.replace(
        tiny_params(), train=dataclasses.replace(tiny_params().train, epochs=2)
    )
    with torch_threads(TRAINING_THREADS):
        train.run(params, tiny_run / "cache", tmp_path / "with.pt", tmp_path / "with")
        monkeypatch.setattr(val_images, "due", lambda epoch, every: False)
        train.run(params, tiny_run / "cache", tmp_path / "without.pt", tmp_path / "without")
    assert (tmp_path / "with" / "plots" / "images" / "val" / "1.png").is_file()
    assert not (tmp_path / "without" / "plots" / "images").exists()
    state_a = load_checkpoint(tmp_path / "with.pt")[0].state_dict()
    state_b = load_checkpoint(tmp_path / "without.pt")[0].state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
