"""The streamed predict path: the same masks as the reference path, in order, from any number
of threads; reduced-scale JPEG decoding within its stated tolerance; FLOPs counted right."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.flops import forward_flops
from segpipe.data.images import read_image, read_image_reduced
from segpipe.data.masks import RULE_FILE, load_rule
from segpipe.data.tables import read_split
from segpipe.errors import SegpipeError
from segpipe.evaluation import evaluate
from segpipe.inference.predictor import Predictor, full_resolution
from segpipe.inference.stream import MaskStream, labels_at, read_prepared

from .helpers import REPO, tiny_params
from .realdata import write_folder_dataset

KVASIR = REPO.parent / "shared" / "data" / "kvasir_seg"
REDUCED_INPUT_TOLERANCE = 3.0
"""Stated tolerance of reduced-scale decoding: mean absolute difference of the model input
from the exact path's, in 0..255 pixel units (measured: 1.8 on 20 Kvasir-SEG photos at 256 px)."""


@pytest.mark.parametrize("channels", [1, 3])
def test_labels_match_the_reference_path_exactly(channels):
    torch.manual_seed(0)
    logits = torch.randn(3, channels, 32, 32).contiguous(memory_format=torch.channels_last)
    sizes = [(97, 61), (32, 32), (200, 333)]
    reference = full_resolution(logits, sizes, 0.3)
    for i, size in enumerate(sizes):
        fast = labels_at(logits, i, size, 0.3)
        assert fast.dtype == np.uint8 and fast.shape == size
        assert np.array_equal(fast, reference[i].numpy().astype(np.uint8))


def test_threads_give_the_serial_outcomes_in_order(tiny_run, tmp_path):
    predictor = Predictor(tiny_run / "model.pt", 0.5, device="cpu")
    paths = [Path(p) for p in read_split(tiny_run / "splits" / "test.csv")["image"]]
    (tmp_path / "empty.png").write_bytes(b"")
    items = [*paths[:3], tmp_path / "empty.png", *paths[3:]]

    def outcomes(threads: int) -> list:
        def read(path: Path):
            return read_prepared(predictor, path, decode="exact")

        with MaskStream(predictor, 2, threads=threads) as stream:
            return list(stream.labels(items, read))

    serial, threaded = outcomes(0), outcomes(3)
    assert [o.item for o in threaded] == items
    assert "empty file" in str(threaded[3].error) and threaded[3].labels is None
    for a, b in zip(serial, threaded, strict=True):
        assert (a.labels is None) == (b.labels is None)
        if a.labels is not None:
            assert np.array_equal(a.labels, b.labels)
    # and what the Python API (the reference path) gives, pixel for pixel
    reference = predictor.predict([read_image(p) for p in paths])
    read_ones = serial[:3] + serial[4:]
    assert all(np.array_equal(r, o.labels) for r, o in zip(reference, read_ones, strict=True))


def test_a_failed_read_of_another_kind_is_raised(tiny_run):
    predictor = Predictor(tiny_run / "model.pt", 0.5, device="cpu")

    def read(item):
        raise ValueError("not a read error")

    with MaskStream(predictor, 2) as stream, pytest.raises(ValueError):
        list(stream.labels([1, 2, 3], read))


def test_evaluate_masks_and_scores_are_the_same_with_and_without_threads(tiny_run, tmp_path):
    p = tiny_params()
    predictor = Predictor(tiny_run / "model.pt", p.evaluate.threshold, device="cpu")
    test = read_split(tiny_run / "splits" / "test.csv")
    rule = load_rule(tiny_run / "splits" / RULE_FILE, p.data)
    results = {}
    for threads in (0, 2):
        out = tmp_path / str(threads)
        metrics, rows, _ = evaluate.score_test_split(
            predictor, test, rule, p.evaluate, out, threads=threads
        )
        files = {f.name: f.read_bytes() for f in sorted(out.iterdir())}
        results[threads] = (metrics.compute(), rows, files)
    assert results[0] == results[2]
    assert len(results[2][2]) == len(test)


def _photos(tmp_path: Path) -> list[Path]:
    """Large JPEG photos: one upright, one stored sideways with an EXIF orientation."""
    stems = ["wide", "turned"]
    root = write_folder_dataset(tmp_path, stems, size=(600, 900), rotated=("turned",))
    return [root / "images" / f"{stem}.jpg" for stem in stems]


def test_reduced_decoding_keeps_the_full_size_and_orientation(tmp_path):
    for path in _photos(tmp_path):
        exact = read_image(path)
        reduced, size = read_image_reduced(path, lambda h, w: (64, 64))
        assert size == exact.shape[:2]  # the size as shown, for the mask
        assert reduced.shape[0] < exact.shape[0] and min(reduced.shape[:2]) >= 64
        assert exact.shape[0] / reduced.shape[0] == pytest.approx(
            exact.shape[1] / reduced.shape[1], rel=0.02
        )  # turned like the exact one, not sideways
        # a PNG has no reduced decoding: the image is the exact one
    png = tmp_path / "photo.png"
    Image.fromarray(read_image(_photos(tmp_path)[0])).save(png)
    reduced, size = read_image_reduced(png, lambda h, w: (64, 64))
    assert np.array_equal(reduced, read_image(png)) and size == reduced.shape[:2]


def test_reduced_decoding_fails_like_the_exact_one(tmp_path):
    (tmp_path / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    with pytest.raises(SegpipeError, match="cut.jpg: cannot read image"):
        read_image_reduced(tmp_path / "cut.jpg", lambda h, w: (64, 64))


def _input_difference(predictor: Predictor, paths: list[Path]) -> float:
    """Mean absolute difference of the reduced path's model inputs from the exact path's,
    in 0..255 pixel units (the inputs are normalised by the ImageNet std, ~0.226)."""
    diffs = []
    for path in paths:
        exact = read_prepared(predictor, path, decode="exact")
        reduced = read_prepared(predictor, path, decode="reduced")
        assert exact.size == reduced.size
        diffs.append(float((exact.tensor - reduced.tensor).abs().mean()) * 0.226 * 255)
    return float(np.mean(diffs))


def test_reduced_decoding_stays_within_tolerance_and_gives_full_size_masks(tiny_run, tmp_path):
    predictor = Predictor(tiny_run / "model.pt", 0.5, device="cpu")
    paths = _photos(tmp_path)  # noisy pixels: the exact path's resize aliases the noise,
    assert _input_difference(predictor, paths) < 3 * REDUCED_INPUT_TOLERANCE  # DCT scaling not
    for path in paths:  # how many labels flip depends on the model, hence on the CPU it was
        exact = read_prepared(predictor, path, decode="exact")  # trained on: not asserted
        reduced = read_prepared(predictor, path, decode="reduced")
        assert reduced.size == exact.size and reduced.tensor.shape == exact.tensor.shape
        logits = predictor.logits(torch.stack([exact.tensor, reduced.tensor]))
        for i in (0, 1):
            labels = labels_at(logits, i, exact.size, 0.5)
            assert labels.shape == exact.size and set(np.unique(labels)) <= {0, 1}


@pytest.mark.skipif(not KVASIR.is_dir(), reason="the shared Kvasir-SEG copy is not present")
def test_reduced_decoding_of_real_photos_stays_within_tolerance(tiny_run):
    predictor = Predictor(tiny_run / "model.pt", 0.5, device="cpu")
    predictor.image_size = 256  # the benchmark's model input: 1/2 to 1/4 scale decodes
    predictor.geometry = dataclasses.replace(predictor.geometry, image_size=256)
    paths = sorted((KVASIR / "images").iterdir())[::50]  # 20 photos, 332x487 to 1920x1072
    difference = _input_difference(predictor, paths)
    print(f"mean input difference {difference:.2f}")
    assert difference < REDUCED_INPUT_TOLERANCE


def test_depthwise_convolutions_count_one_input_channel():
    channels, size, kernel = 16, 20, 5
    depthwise = torch.nn.Conv2d(channels, channels, kernel, padding=2, groups=channels)
    full = torch.nn.Conv2d(channels, channels, kernel, padding=2)
    one_channel = 2 * size * size * channels * kernel * kernel

    class Wrap(torch.nn.Module):
        def __init__(self, conv):
            super().__init__()
            self.lift, self.conv = torch.nn.Conv2d(3, channels, 1, bias=False), conv

        def forward(self, x):
            return self.conv(self.lift(x))

    lift = 2 * size * size * 3 * channels
    assert forward_flops(Wrap(depthwise), size) == lift + one_channel
    assert forward_flops(Wrap(full), size) == lift + one_channel * channels
