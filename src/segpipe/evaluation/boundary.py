"""Boundary metrics of label maps: the 95th-percentile Hausdorff distance (HD95) and the
normalised surface Dice (NSD), per foreground class, in pixels at the image's resolution.

Definitions follow MONAI's (``monai.metrics``: ``compute_hausdorff_distance`` with
``percentile=95``, ``compute_surface_dice`` without sub-voxels):

- a mask's **boundary** is its pixels that a 3x3 cross erosion removes (pixels outside the
  image count as background, so a mask touching the border has a boundary there);
- the **surface distances** are, for each boundary pixel of one mask, the Euclidean distance
  to the nearest boundary pixel of the other, in both directions;
- **HD95** is the larger of the two directed 95th percentiles (linear interpolation);
- **NSD** at tolerance t is the share of all boundary pixels of both masks whose distance is
  at most t (1.0: every boundary pixel within t of the other boundary).

Empty masks: with the class in neither truth nor prediction both are undefined (NaN: nothing
to measure; left out of every mean). With the class in one only, NSD is 0 and HD95 is
infinite; the dataset's HD95 means leave those out and count them in ``hd95_n_infinite``.
Truth pixels marked :data:`~segpipe.constants.IGNORE` belong to no class, in the prediction
either (as in :mod:`segpipe.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, spatial

from segpipe.constants import IGNORE
from segpipe.metrics import defined_mean

PERCENTILE = 95
TREE_SHARE = 0.05
"""Boundaries holding at most this share of the image's pixels use a k-d tree (:func:`nearest`)."""


def boundary(mask: np.ndarray) -> np.ndarray:
    """The pixels of a boolean mask (H, W) that a 3x3 cross erosion removes."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each boundary pixel of ``pred`` to the boundary of ``truth``, and back.

    Both masks (H, W) bool must hold some pixel. The work is cropped to their joint bounding
    box (plus a one-pixel margin inside the image), which changes no distance: the nearest
    boundary pixel always lies inside it.
    """
    rows, cols = np.nonzero(pred | truth)
    top, left = max(rows.min() - 1, 0), max(cols.min() - 1, 0)
    box = np.s_[top : rows.max() + 2, left : cols.max() + 2]
    # Where the box stops inside the image its margin is background, and where it meets the
    # image's edge erosion treats the outside as background: the full image's boundaries.
    edge_pred, edge_truth = boundary(pred[box]), boundary(truth[box])
    return nearest(edge_pred, edge_truth), nearest(edge_truth, edge_pred)


def nearest(edge_from: np.ndarray, edge_to: np.ndarray) -> np.ndarray:
    """The distance from each pixel of ``edge_from`` (in row-major order) to the nearest pixel
    of ``edge_to``; both boolean (H, W), neither empty.

    Two exact ways: a distance transform costs the same per pixel of the image, a k-d tree per
    boundary pixel; the tree wins (~50x on a 1000x1000 blob) unless the boundaries fill more
    than :data:`TREE_SHARE` of the image (noise, where the transform is ~5x faster).
    """
    points_from, points_to = np.argwhere(edge_from), np.argwhere(edge_to)
    if len(points_from) + len(points_to) <= TREE_SHARE * edge_from.size:
        return spatial.cKDTree(points_to).query(points_from)[0]
    return ndimage.distance_transform_edt(~edge_to)[edge_from]


def hd95_nsd(pred: np.ndarray, truth: np.ndarray, tolerance: float) -> tuple[float, float]:
    """HD95 and NSD at ``tolerance`` pixels of two boolean masks (H, W), with the empty cases
    of the module docstring."""
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return float("nan"), float("nan")
    if not has_pred or not has_truth:
        return float("inf"), 0.0
    to_truth, to_pred = surface_distances(pred, truth)
    hd95 = max(np.percentile(to_truth, PERCENTILE), np.percentile(to_pred, PERCENTILE))
    within = np.count_nonzero(to_truth <= tolerance) + np.count_nonzero(to_pred <= tolerance)
    return float(hd95), within / (len(to_truth) + len(to_pred))


def image_scores(
    pred: np.ndarray, truth: np.ndarray, num_classes: int, tolerance: float
) -> np.ndarray:
    """HD95 and NSD of each foreground class 1..C-1 of one image's label maps (H, W).

    Returns:
        (C - 1, 2): HD95 and NSD per foreground class.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} differ")
    valid = truth != IGNORE
    return np.array(
        [hd95_nsd((pred == c) & valid, truth == c, tolerance) for c in range(1, num_classes)],
        dtype=np.float64,
    ).reshape(num_classes - 1, 2)


class BoundaryMetrics:
    """Per-image HD95 and NSD of the foreground classes, kept to be reduced once.

    Args:
        class_names: every class, background first (it is not scored).
        tolerance: the NSD tolerance in pixels (``evaluate.boundary_tolerance``).
    """

    def __init__(self, class_names: Sequence[str], tolerance: float) -> None:
        self.foreground = list(class_names)[1:]
        self.tolerance = tolerance
        self.scores: list[np.ndarray] = []  # per image: (C - 1, 2)

    def update(self, pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        """Score one image's label maps (H, W). Returns its per-image table columns:
        ``hd95`` and ``nsd`` (means over the classes it defines; HD95 infinite where any class
        is in only one of truth and prediction) and ``hd95/<class>``, ``nsd/<class>``."""
        scores = image_scores(pred, truth, len(self.foreground) + 1, self.tolerance)
        self.scores.append(scores)
        row = {"hd95": defined_mean(scores[:, 0]), "nsd": defined_mean(scores[:, 1])}
        for name, (hd95, nsd) in zip(self.foreground, scores, strict=True):
            row[f"hd95/{name}"], row[f"nsd/{name}"] = float(hd95), float(nsd)
        return row

    def compute(self) -> dict[str, float]:
        """``hd95/<class>`` (mean over the images with the class in both truth and
        prediction), ``nsd/<class>`` (mean over the images with the class in either), their
        means over the classes (``hd95``, ``nsd``; classes with no score left out), the
        count ``hd95_n_infinite`` of (image, class) pairs left out of the HD95 means, and
        ``boundary_tolerance``. NaN where nothing was scored."""
        shape = (len(self.scores), len(self.foreground), 2)
        scores = np.stack(self.scores) if self.scores else np.empty(shape)
        hd95, nsd = scores[..., 0], scores[..., 1]
        finite = np.isfinite(hd95)
        per_class = {
            "hd95": [defined_mean(hd95[:, c][finite[:, c]]) for c in range(len(self.foreground))],
            "nsd": [defined_mean(nsd[:, c]) for c in range(len(self.foreground))],
        }
        out = {name: defined_mean(np.array(v)) for name, v in per_class.items()}
        out["hd95_n_infinite"] = int(np.isinf(hd95).sum())
        out["boundary_tolerance"] = self.tolerance
        for c, name in enumerate(self.foreground):
            out[f"hd95/{name}"], out[f"nsd/{name}"] = per_class["hd95"][c], per_class["nsd"][c]
        return out
