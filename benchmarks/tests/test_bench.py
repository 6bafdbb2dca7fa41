"""The throughput benchmark runs end to end (tiny settings) and reports consistent ratios."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench, bench_backends, bench_predict, startup
from benchmarks.__main__ import COMMANDS, main
from benchmarks.flops import forward_flops
from segpipe.config import ModelConfig
from segpipe.inference.folding import fold_batch_norms
from segpipe.model.network import build_model
from tests.helpers import REPO
from tests.realdata import KVASIR, kvasir_sample


def run_tiny(tmp_path: Path, data: Path, command: str, *extra: str) -> dict:
    """``python -m benchmarks COMMAND`` (loader or predict) on tiny settings."""
    out = tmp_path / "bench.json"
    args = [
        command,
        *extra,
        "--data",
        str(data),
        "--image-size",
        "64",
        "--batches",
        "2",
        "--repeats",
        "1",
        "--encoder",
        "resnet18",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    return json.loads(out.read_text())


def in_this_process(mode: str, work: Path, args) -> dict:
    """A mode measured in this process (the benchmark starts one process per mode)."""
    return bench.run_mode(mode, work / "splits", work / "cache", args)


@pytest.mark.slow  # a child process training and evaluating a model
def test_benchmark_on_synthetic_data(tmp_path, raw_dir, monkeypatch):
    """The pipeline mode in its own process, as the benchmark runs every mode; the other two
    in this process."""
    in_a_child = bench._measure_in_child

    def measure(mode: str, work: Path, args) -> dict:
        return (in_a_child if mode == "pipeline" else in_this_process)(mode, work, args)

    monkeypatch.setattr(bench, "_measure_in_child", measure)
    report = run_tiny(tmp_path, raw_dir, "loader", "--batch-size", "2")
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
def test_benchmark_on_real_photos(tmp_path, monkeypatch):
    """12 Kvasir-SEG photos (up to 1920x1072) and their masks; the pipeline with a worker. The
    modes run in this process (the test above runs one in a child)."""
    monkeypatch.setattr(bench, "_measure_in_child", in_this_process)
    data = kvasir_sample(tmp_path / KVASIR.name, 12)
    report = run_tiny(tmp_path, data, "loader", "--batch-size", "2", "--num-workers", "1")
    assert report["data"] == KVASIR.name and report["num_workers"] == 1
    assert report["results"]["pipeline"]["train_images_per_s"] > 0


def test_benchmark_data_keeps_awkward_names(tmp_path):
    """The benchmark's split and its cut-down CSVs keep names such as 0003 and NA, and it
    pairs suffixed masks (--mask-suffix)."""
    from segpipe.data.tables import read_split
    from tests.realdata import AWKWARD_STEMS, write_folder_dataset

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
    extra = ["--images", "3", "--variants", "serial", "reduced", "--eval-batch-size", "2"]
    report = run_tiny(tmp_path, raw_dir, "predict", *extra)
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


@pytest.mark.slow  # four child processes, each splitting or caching the linked pairs
def test_stages_benchmark_times_split_and_cache_per_thread_count(tmp_path, raw_dir):
    out = tmp_path / "stages.json"
    args = ["stages", "--data", str(raw_dir), "--counts", "30", "--threads", "0", "2"]
    assert main([*args, "--repeats", "1", "--image-size", "32", "--json", str(out)]) == 0
    (count,) = json.loads(out.read_text())["counts"]
    assert count["pairs"] == 30 and count["same_bytes"] is True
    assert sorted(count["runs"]) == [
        "cache threads=0",
        "cache threads=2",
        "split threads=0",
        "split threads=2",
    ]
    for name, (run,) in count["runs"].items():
        assert run["seconds"] > 0 and run["peak_rss_mb"] > 10
        assert run["pairs"] == (30 if name.startswith("split") else 27)  # all but the test 3


def batch_norms_run(model: torch.nn.Module, x: torch.Tensor) -> int:
    """How many batch norm modules a forward pass of ``x`` calls."""
    called = []
    hooks = [
        m.register_forward_hook(lambda *_: called.append(1))
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    model(x)
    for hook in hooks:
        hook.remove()
    return len(called)


@pytest.mark.parametrize("encoder", ["resnet18", "efficientnet-b0"])
def test_folding_batch_norms_keeps_the_logits(encoder):
    """Every batch norm these networks run follows a convolution and folds into it; the fp32
    logits stay the same."""
    torch.manual_seed(0)
    model = build_model(ModelConfig("Unet", encoder, None), 2)
    for module in model.modules():  # statistics away from 0/1, as a trained model has them
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before, norms = model(x), batch_norms_run(model, x)
        folded, count = fold_batch_norms(model, x[:1])
        assert count == norms > 10 and batch_norms_run(folded, x) == 0
        assert torch.allclose(folded(x), before, atol=1e-4, rtol=1e-4)
        assert batch_norms_run(model, x) == norms  # the model itself is left as it was


@pytest.mark.slow  # exports the model to ONNX
def test_backends_benchmark_reports_speed_and_agreement(tmp_path):
    out = tmp_path / "backends.json"
    args = ["backends", "--image-size", "64", "--eval-batch-size", "2", "--batches", "1"]
    assert main([*args, "--repeats", "2", "--encoder", "resnet18", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["rounds"]) == 2 and result["batch_norms_folded"] > 10
    for name in bench_backends.BACKENDS:
        assert all(r[name] > 0 for r in result["rounds"])
    assert result["agreement"]["torch fp32"]["max_abs_logit_diff"] == 0
    assert result["agreement"]["onnxruntime"]["max_abs_logit_diff"] < 1e-3


@pytest.mark.slow  # trains a few steps at two sizes under the profiler
def test_profile_benchmark_splits_the_step_by_kind(tmp_path):
    out = tmp_path / "profile.json"
    args = ["profile", "--sizes", "32", "64", "--batch-size", "2", "--batches", "1"]
    assert main([*args, "--encoder", "resnet18", "--json", str(out)]) == 0
    small, large = json.loads(out.read_text())["sizes"]
    for size in (small, large):
        assert size["by_kind"]["convolution"] > 0 and size["by_kind"]["convolution backward"] > 0
        assert sum(size["by_kind"].values()) == pytest.approx(size["profiled_ms_per_image"])
        assert size["achieved_gflop_per_s"] > 0
    assert large["train_gflop_per_image"] == pytest.approx(4 * small["train_gflop_per_image"])


class ReluBeforeNorm(torch.nn.Module):
    """conv -> in-place ReLU -> batch norm: the norm's input is the convolution's output
    tensor, changed in place, so it must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.relu_(self.conv(x)))


class SkipAroundNorm(ReluBeforeNorm):
    """conv -> batch norm, with the convolution's output also added after it: folding would
    change the skip, so the check must refuse it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.norm(y) + y


@pytest.mark.parametrize("network", [ReluBeforeNorm, SkipAroundNorm])
def test_folding_leaves_what_it_cannot_fold_exactly(network):
    torch.manual_seed(0)
    model = network().eval()
    model.norm.running_mean.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    folded, count = fold_batch_norms(model, x[:1])
    assert folded is model and count == 0
    assert isinstance(model.norm, torch.nn.BatchNorm2d)


def test_counting_flops_leaves_a_training_model_as_it_was():
    model = build_model(ModelConfig("Unet", "resnet18", None), 2).train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    assert forward_flops(model, 32) > 0  # 1x1 at the bottleneck: train-mode batch norm refuses
    assert model.training
    assert all(torch.equal(v, stats[k]) for k, v in model.state_dict().items())


@pytest.mark.slow  # a Python start and the torch imports
def test_every_benchmark_is_a_command_with_its_own_help(capsys):
    """`python -m benchmarks --help` lists every command (one process start); each command's
    own help comes from the same parser."""
    listing = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in COMMANDS:
        assert f"    {name}" in listing

    def help_of(name: str) -> str:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        return capsys.readouterr().out

    assert "--image-size" in help_of("loader") and "--budget-s" in help_of("recipes")


def test_boundary_benchmark_times_each_step(tmp_path):
    out = tmp_path / "boundary.json"
    assert (
        main(["boundary", "--size", "64", "--classes", "3", "--repeats", "1", "--json", str(out)])
        == 0
    )
    report = json.loads(out.read_text())
    assert len(report) == 3 and all(r["min_ms"] <= r["max_ms"] for r in report.values())


@pytest.mark.slow  # two process starts, one of them `segpipe predict`
def test_startup_benchmark_times_predict_beside_the_import_floor(
    tmp_path, tiny_run, raw_dir, monkeypatch
):
    """Every row's command; the command runs rows in fresh processes and reports each (here
    two rows: an empty Python, and predict, the row the others are the floor of)."""
    photo = sorted((raw_dir / "images").iterdir())[0]
    rows = startup.commands(tiny_run / "model.pt", photo, tmp_path / "out")
    assert list(rows) == [
        "python, nothing imported",
        "import torch",
        "import torch + smp",
        "import torch + smp, plain exit",
        "segpipe predict, one photo",
    ]
    floor = rows["import torch + smp"][-1]
    assert floor == "import torch, segmentation_models_pytorch, gc; gc.freeze()"
    timed = ("python, nothing imported", "segpipe predict, one photo")
    monkeypatch.setattr(startup, "commands", lambda *args: {name: rows[name] for name in timed})
    out = tmp_path / "startup.json"
    args = ["startup", "--model", str(tiny_run / "model.pt"), "--photo", str(photo)]
    assert main([*args, "--rounds", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report) == list(timed)
    assert all(0 < r["min_s"] <= r["median_s"] <= r["max_s"] for r in report.values())
