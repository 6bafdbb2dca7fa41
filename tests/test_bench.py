"""The throughput benchmark runs end to end (tiny settings) and reports consistent ratios."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from segpipe.tools import bench, bench_predict

from .realdata import KVASIR, kvasir_sample


def run_tiny(tmp_path: Path, data: Path, *extra: str) -> dict:
    out = tmp_path / "bench.json"
    args = [
        *extra,
        "--data",
        str(data),
        "--image-size",
        "64",
        "--batch-size",
        "2",
        "--batches",
        "2",
        "--repeats",
        "1",
        "--encoder",
        "resnet18",
        "--json",
        str(out),
    ]
    assert bench.main(args) == 0
    return json.loads(out.read_text())


@pytest.mark.slow  # three processes, each training and evaluating a model
def test_benchmark_on_synthetic_data(tmp_path, raw_dir):
    report = run_tiny(tmp_path, raw_dir)
    results = report["results"]
    assert set(results) == {"naive", "pipeline", "model"}
    for r in results.values():
        assert r["train_images_per_s"] > 0 and r["eval_images_per_s"] > 0
        assert r["peak_rss_mb"] > 50
    ratio = results["pipeline"]["train_images_per_s"] / results["naive"]["train_images_per_s"]
    assert report["ratios"]["train_pipeline_over_naive"] == pytest.approx(ratio, rel=1e-2)
    assert "cores" in report["machine"]
    table = bench.format_report(report)
    assert "| naive |" in table and "train_pipeline_over_model" in table


@pytest.mark.slow
@pytest.mark.skipif(not KVASIR.is_dir(), reason="the shared Kvasir-SEG copy is not present")
def test_benchmark_on_real_photos(tmp_path):
    """12 Kvasir-SEG photos (up to 1920x1072) and their masks; the pipeline with a worker."""
    data = kvasir_sample(tmp_path / KVASIR.name, 12)
    report = run_tiny(tmp_path, data, "--num-workers", "1")
    assert report["data"] == KVASIR.name and report["num_workers"] == 1
    assert report["results"]["pipeline"]["train_images_per_s"] > 0


def test_benchmark_data_keeps_awkward_names(tmp_path):
    """The benchmark's split and its cut-down CSVs keep names such as 0003 and NA, and it
    pairs suffixed masks (--mask-suffix)."""
    from segpipe.data.tables import read_split

    from .realdata import AWKWARD_STEMS, write_folder_dataset

    data = write_folder_dataset(tmp_path / "data", list(AWKWARD_STEMS), rotated=("0003",))
    for mask in sorted((data / "masks").iterdir()):
        mask.rename(mask.with_name(f"{mask.stem}_mask.png"))
    seconds = bench.prepare_data(data, tmp_path / "work", 64, 4, mask_suffix="_mask")
    assert seconds > 0
    stems = [
        stem
        for name in ("train", "val", "test")
        for stem in read_split(tmp_path / "work" / "splits" / f"{name}.csv")["stem"]
    ]
    assert len(stems) == 4 + 1 + 1 and set(stems) <= set(AWKWARD_STEMS)  # 10% val and test


@pytest.mark.slow  # a child process predicting and evaluating a few photos per variant
def test_predict_benchmark_reports_each_path_beside_the_bound(tmp_path, raw_dir):
    extra = ["--predict", "--images", "3", "--variants", "serial", "reduced"]
    report = run_tiny(tmp_path, raw_dir, *extra, "--eval-batch-size", "2")
    assert report["images"] == 3 and report["forward_gflops_per_image"] > 0
    (only,) = report["rounds"]
    for path in ("predict_serial", "evaluate_serial", "predict_reduced", "evaluate_reduced"):
        speed = only[path]
        # Steady state is (N-photo run) - (one-photo run): with 3 photos on a busy machine the
        # CPU-time difference is noise and may even be negative; it must be a number.
        assert speed["images_per_s"] > 0 and math.isfinite(speed["cpu_ms_per_image"])
        assert speed["over_model"] == pytest.approx(
            speed["images_per_s"] / only["model"]["images_per_s"]
        )
    assert report["one_photo_wall_s"] > 0
    assert "| 1 | predict reduced |" in bench_predict.format_report(report, ["serial", "reduced"])
