"""The built-in synthetic dataset: seeded, varied, with real structure."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from segpipe.data.synthetic import generate


def read_all(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes(tmp_path, params):
    cfg = params.data.synthetic
    generate(tmp_path / "a", cfg, seed=7)
    generate(tmp_path / "b", cfg, seed=7)
    for sub in ("images", "masks"):
        a = sorted((tmp_path / "a" / sub).iterdir())
        b = sorted((tmp_path / "b" / sub).iterdir())
        assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_different_seed_different_data(tmp_path, params):
    generate(tmp_path / "a", params.data.synthetic, seed=1)
    generate(tmp_path / "b", params.data.synthetic, seed=2)
    a = read_all(tmp_path / "a" / "images")
    b = read_all(tmp_path / "b" / "images")
    assert any(a[k].shape != b[k].shape or (a[k] != b[k]).any() for k in a)


def test_pairs_sizes_and_values(tmp_path, params):
    cfg = dataclasses.replace(params.data.synthetic, n_images=30, empty_fraction=0.2)
    assert generate(tmp_path, cfg, seed=3) == 30
    images, masks = read_all(tmp_path / "images"), read_all(tmp_path / "masks")
    assert images.keys() == masks.keys() and len(images) == 30
    fractions = []
    for name, image in images.items():
        mask = masks[name]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert cfg.min_size <= image.shape[0] <= cfg.max_size
        assert cfg.min_size <= image.shape[1] <= cfg.max_size
        assert set(np.unique(mask)) <= {0, 255}
        fractions.append((mask > 0).mean())
    fractions = np.array(fractions)
    assert (fractions == 0).sum() >= 1, "some images have no foreground"
    assert (fractions > 0).sum() >= 20
    assert 0.02 < fractions[fractions > 0].mean() < 0.6
    # Cluttered, noisy backgrounds: background pixels are far from flat.
    stds = [images[n][masks[n] == 0].std() for n in images]
    assert np.median(stds) > 10


def test_empty_fraction_extremes(tmp_path, params):
    none = dataclasses.replace(params.data.synthetic, n_images=5, empty_fraction=1.0)
    generate(tmp_path / "none", none, seed=0)
    assert all((m == 0).all() for m in read_all(tmp_path / "none" / "masks").values())
    full = dataclasses.replace(params.data.synthetic, n_images=5, empty_fraction=0.0)
    generate(tmp_path / "full", full, seed=0)
    assert all((m > 0).any() for m in read_all(tmp_path / "full" / "masks").values())
