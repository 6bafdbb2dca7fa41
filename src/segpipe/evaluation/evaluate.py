"""The evaluate stage: score the best checkpoint on the test split at original resolution.

Also sweeps the foreground threshold on the validation split (for two classes this picks the
best ``evaluate.threshold``; the test score at the configured threshold stays the headline) and
writes the confusion matrix in the row layout of DVC's confusion templates.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from segpipe.config import EvaluateConfig, Params
from segpipe.constants import SPLITS
from segpipe.data import masks
from segpipe.data.masks import RULE_FILE, MaskRule, load_rule, read_mask_for
from segpipe.data.tables import dataset_folder, read_split
from segpipe.errors import SegpipeError
from segpipe.evaluation import fingerprint, model_card, postprocess
from segpipe.evaluation.boundary import BoundaryMetrics
from segpipe.files import atomic_write, require_apart, write_json
from segpipe.inference.ensemble import member_paths
from segpipe.inference.memory import check_memory
from segpipe.inference.predictor import Predictor
from segpipe.inference.stream import (
    IO_THREADS,
    MaskStream,
    Prepared,
    WriteFailed,
    read_prepared,
    save_mask,
)
from segpipe.inference.tiling import InferenceOptions
from segpipe.metrics import SegmentationMetrics, ThresholdSweep, counts_row
from segpipe.progress import progress
from segpipe.runtime import Environment, reuse_freed_memory

log = logging.getLogger(__name__)

CONFUSION_ROWS_PER_CLASS = 1000
"""Rows per true class in the confusion CSV: DVC's templates count rows, so each true class's
pixels are spread over 1000 rows in proportion (exact to 0.1% of the row)."""


def foreground_fraction(labels: np.ndarray) -> float:
    """Share of the non-ignored pixels that hold any foreground class (the split report's
    measure: :func:`segpipe.data.masks.foreground_fraction`)."""
    return masks.foreground_fraction(masks.label_pixels(labels))


def threshold_sweep(
    predictor: Predictor,
    frame: pd.DataFrame,
    rule: MaskRule,
    cfg: EvaluateConfig,
    *,
    threads: int = IO_THREADS,
) -> ThresholdSweep:
    """Foreground-vs-background counts at every threshold over the images of ``frame``."""
    sweep = ThresholdSweep()
    with MaskStream(predictor, cfg.batch_size, threads=threads, probability=True) as stream:
        outcomes = stream.labels(_records(frame), _pair_reader(predictor, rule, cfg))
        for outcome in progress(outcomes, "threshold sweep (val)", total=len(frame), unit="image"):
            if outcome.error is not None:
                raise outcome.error
            sweep.update(outcome.labels, torch.from_numpy(outcome.extra))
    return sweep


def _records(frame: pd.DataFrame) -> list[pd.Series]:
    return [row for _, row in frame.iterrows()]


def _pair_reader(
    predictor: Predictor, rule: MaskRule, cfg: EvaluateConfig
) -> Callable[[pd.Series], Prepared]:
    """Reads a split row's image for the model (as ``evaluate.decode`` says) and its mask."""

    def read(row: pd.Series) -> Prepared:
        prepared = read_prepared(predictor, Path(row["image"]), decode=cfg.decode)
        truth = read_mask_for(Path(row["image"]), prepared.size, Path(row["mask"]), rule)
        return dataclasses.replace(prepared, extra=truth)

    return read


def confusion_rows(confusion: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One (actual, predicted) row per 1/1000 of each true class's pixels (largest remainder
    rounding, so each true class has exactly 1000 rows); classes absent from the truth have
    none."""
    rows = []
    for actual, counts in zip(classes, confusion, strict=True):
        total = counts.sum()
        if total == 0:
            continue
        share = counts / total * CONFUSION_ROWS_PER_CLASS
        whole = np.floor(share).astype(int)
        rest = CONFUSION_ROWS_PER_CLASS - whole.sum()
        whole[np.argsort(-(share - whole), kind="stable")[:rest]] += 1
        for predicted, n in zip(classes, whole, strict=True):
            rows += [(actual, predicted)] * int(n)
    return pd.DataFrame(rows, columns=["actual", "predicted"])


def _json_ready(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN (a class with nothing to score) becomes null: JSON has no NaN."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}


def run(
    params: Params,
    model_path: Path,
    splits_dir: Path,
    metrics_path: Path,
    per_image_path: Path,
    predictions_dir: Path,
    card_path: Path | None = None,
    sweep_path: Path | None = None,
    confusion_path: Path | None = None,
    test_set_path: Path | None = None,
    environment_path: Path | None = None,
    ensemble_dir: Path | None = None,
) -> dict[str, float]:
    """Write ``metrics_path`` (JSON), ``per_image_path`` (CSV), one predicted mask per test
    image (``predictions_dir/<stem>.png``, at the image's own size), the model card, the
    validation threshold sweep (CSV), the test confusion rows (CSV), the test set's
    fingerprint (JSON, see :mod:`segpipe.evaluation.fingerprint`) and the environments that
    trained and scored the model (JSON, :class:`~segpipe.runtime.Environment`). With
    ``evaluate.ensemble``, the ensemble of the files it lists (below ``ensemble_dir``, or
    ``model_path``) is scored instead of ``model_path`` alone.

    Returns:
        The metrics written.
    """
    cfg = params.evaluate
    classes = list(params.data.classes)
    test = read_split(splits_dir / "test.csv")
    inputs = {"--splits": splits_dir, "--model": model_path, "the dataset": dataset_folder(test)}
    require_apart(predictions_dir, "--predictions", inputs)
    reuse_freed_memory()
    predictor = _predictor(member_paths(cfg.ensemble, model_path, ensemble_dir), cfg, classes)
    val = read_split(splits_dir / "val.csv")
    check_memory(predictor, _sizes(test, val), fix="set evaluate.tile: {tile} in params.yaml")
    rule = load_rule(splits_dir / RULE_FILE, params.data)
    cleanup = choose_postprocess(predictor, val, rule, cfg) if cfg.postprocess == "auto" else None
    boundary = BoundaryMetrics(classes, cfg.boundary_tolerance)
    metrics, rows, images_per_s = score_test_split(
        predictor, test, rule, cfg, predictions_dir, boundary=boundary, cleanup=cleanup
    )
    for row, counts in zip(rows, metrics.image_counts, strict=True):
        row.update(counts_row(counts, classes))
    sweep = threshold_sweep(predictor, val, rule, cfg)
    size = len(predictor.paths) if cfg.ensemble is not None else None
    result = _summary(metrics, boundary, cleanup, sweep, cfg, classes, ensemble_size=size)

    _write_tables(rows, per_image_path, sweep, sweep_path, metrics, confusion_path, classes)
    write_json(metrics_path, result)
    if test_set_path is not None:
        fingerprint.write(test_set_path, test)
    _write_card_and_environment(
        params, splits_dir, predictor, result, metrics, images_per_s, card_path, environment_path
    )
    nan = float("nan")
    log.info(
        "test: dice %.4f, iou %.4f, pixel accuracy %.4f over %d images",
        nan if result["dice"] is None else result["dice"],
        nan if result["iou"] is None else result["iou"],
        result["pixel_accuracy"],
        len(rows),
    )
    return result


def _summary(
    metrics: SegmentationMetrics,
    boundary: BoundaryMetrics,
    cleanup: postprocess.Postprocess | None,
    sweep: ThresholdSweep,
    cfg: EvaluateConfig,
    classes: list[str],
    *,
    ensemble_size: int | None,
) -> dict[str, float | None]:
    """The metrics file: the test split's metrics, their intervals and boundary metrics, what
    post-processing chose, and for two classes the validation sweep's best threshold."""
    result = {
        **metrics.compute(classes),
        **metrics.bootstrap_interval(),  # one fixed resampling: intervals do not move with seed
        **boundary.compute(),
        "n_images": len(metrics.image_counts),
        "threshold": cfg.threshold,
        **({"ensemble_size": ensemble_size} if ensemble_size is not None else {}),
    }
    if cleanup is not None:
        result.update(cleanup.summary(classes))
    if len(classes) == 2:
        best = sweep.best()
        result["val_best_threshold"] = best["threshold"]
        result["val_best_threshold_dice"] = best["dice"]
    return _json_ready(result)


def _write_card_and_environment(
    params: Params,
    splits_dir: Path,
    predictor: Predictor,
    result: dict,
    metrics: SegmentationMetrics,
    images_per_s: float,
    card_path: Path | None,
    environment_path: Path | None,
) -> None:
    """The environments that trained and scored the model (JSON) and the model card."""
    environments = {
        "train": predictor.checkpoint.environment,
        "evaluate": Environment.current(predictor.runtime),
    }
    if environment_path is not None:
        write_json(environment_path, {k: v and v.to_dict() for k, v in environments.items()})
    if card_path is None:
        return
    counts = {name: len(read_split(splits_dir / f"{name}.csv")) for name in SPLITS}
    model_card.write(
        card_path,
        params,
        result,
        predictor.checkpoint,
        counts,
        images_per_s,
        metrics.confusion.numpy(),
        environments,
        members=[(m.path, m.checkpoint) for m in predictor.members],
    )


def _sizes(*frames: pd.DataFrame) -> dict[Path, tuple[int, int]]:
    """Each image's (height, width), as the split recorded it."""
    return {
        Path(image): (int(h), int(w))
        for frame in frames
        for image, h, w in zip(frame["image"], frame["height"], frame["width"], strict=True)
    }


def _predictor(model_paths: list[Path], cfg: EvaluateConfig, classes: list[str]) -> Predictor:
    """The checkpoint (or ensemble) ready to predict as ``evaluate.*`` says, refused if it was
    trained for other classes."""
    options = InferenceOptions.from_evaluate(cfg)
    predictor = Predictor(model_paths, cfg.threshold, options=options, backend=cfg.backend)
    if predictor.classes != classes:
        raise SegpipeError(
            f"{model_paths[0]}: trained for classes {predictor.classes}, but data.classes is "
            f"{classes}; retrain it (dvc repro)"
        )
    return predictor


def choose_postprocess(
    predictor: Predictor,
    frame: pd.DataFrame,
    rule: MaskRule,
    cfg: EvaluateConfig,
    *,
    threads: int = IO_THREADS,
) -> postprocess.Postprocess:
    """The post-processing rules that raise Dice on the images of ``frame`` (the validation
    split), see :mod:`segpipe.evaluation.postprocess`."""
    search = postprocess.PostprocessSearch(predictor.num_classes)
    with MaskStream(predictor, cfg.batch_size, threads=threads) as stream:
        outcomes = stream.labels(_records(frame), _pair_reader(predictor, rule, cfg))
        for outcome in progress(outcomes, "post-processing (val)", total=len(frame), unit="image"):
            if outcome.error is not None:
                raise outcome.error
            search.update(outcome.labels, outcome.extra)
    return search.choose(include_background=cfg.include_background)


def score_test_split(
    predictor: Predictor,
    frame: pd.DataFrame,
    rule: MaskRule,
    cfg: EvaluateConfig,
    predictions_dir: Path,
    *,
    threads: int = IO_THREADS,
    boundary: BoundaryMetrics | None = None,
    cleanup: postprocess.Postprocess | None = None,
) -> tuple[SegmentationMetrics, list[dict], float]:
    """Predict every image of ``frame`` at its original size, save its mask as
    ``predictions_dir/<stem>.png`` and count it against the truth. Reading, resizing back
    and writing run on ``threads`` threads beside the model (see :mod:`segpipe.inference.stream`).
    With ``cleanup``, the masks saved and scored are post-processed (it scores them
    without too); with ``boundary``, each row also holds the image's boundary metrics.

    Returns:
        The counts, one row of scores per image, and the images predicted per second.
    """
    start_time = time.perf_counter()
    metrics = SegmentationMetrics(predictor.num_classes, include_background=cfg.include_background)
    rows = []
    predictions_dir.mkdir(parents=True, exist_ok=True)
    read = _pair_reader(predictor, rule, cfg)
    with MaskStream(predictor, cfg.batch_size, threads=threads) as stream:
        try:
            outcomes = stream.labels(_records(frame), read)
            for outcome in progress(outcomes, "evaluate (test)", total=len(frame), unit="image"):
                if outcome.error is not None:
                    raise outcome.error
                labels, truth = outcome.labels, outcome.extra
                if cleanup is not None:
                    labels = cleanup(labels, truth)
                rows.append(_score(metrics, outcome.item, labels, truth))
                if boundary is not None:
                    rows[-1].update(boundary.update(labels, truth))
                path = predictions_dir / f"{outcome.item['stem']}.png"
                stream.write(save_mask, predictor, labels, path)
            stream.finish()
        except WriteFailed as e:
            raise e.error from None
    return metrics, rows, len(rows) / (time.perf_counter() - start_time)


def _score(
    metrics: SegmentationMetrics, row: pd.Series, pred: np.ndarray, mask: np.ndarray
) -> dict:
    """Count one image against its truth; its row of the per-image table."""
    dice, iou = metrics.update(torch.from_numpy(pred)[None], torch.from_numpy(mask)[None])
    return {
        "stem": row["stem"],
        "image": row["image"],
        "mask": row["mask"],
        "dice": dice[0],
        "iou": iou[0],
        "true_fg_fraction": foreground_fraction(mask),
        "pred_fg_fraction": foreground_fraction(pred),
    }


def _write_tables(
    rows: list[dict],
    per_image_path: Path,
    sweep: ThresholdSweep,
    sweep_path: Path | None,
    metrics: SegmentationMetrics,
    confusion_path: Path | None,
    classes: list[str],
) -> None:
    """The per-image scores, the validation sweep and the test confusion rows, as CSV."""
    per_image = pd.DataFrame(rows)
    atomic_write(
        per_image_path, lambda tmp: per_image.to_csv(tmp, index=False, float_format="%.6f")
    )
    if sweep_path is not None:
        curve = pd.DataFrame(sweep.curve())
        atomic_write(sweep_path, lambda tmp: curve.to_csv(tmp, index=False, float_format="%.6g"))
    if confusion_path is not None:
        confusion = confusion_rows(metrics.confusion.numpy(), classes)
        atomic_write(confusion_path, lambda tmp: confusion.to_csv(tmp, index=False))
