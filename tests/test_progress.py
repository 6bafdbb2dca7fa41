"""Progress bars: drawn on a terminal (a pseudo-terminal here) with count, rate and time left,
kept out of logs unless ``SEGPIPE_PROGRESS`` asks for them, and drawn by every loop over files
or batches."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import tarfile
import termios
import zipfile

import pytest

from segpipe import progress
from segpipe.data import archive, coco, voc

from .annotations import write_coco_export, write_voc_tree
from .helpers import REPO, run, stage_in_process, tiny_params, write_params


def bar(desc: str, total: int, unit: str = "file") -> re.Pattern:
    """A tqdm bar as a user sees it: ``desc:  50%|#####     | 3/6 [00:01<00:01, 2.9file/s]``
    (before the first update: ``0/6 [00:00<?, ?file/s]``)."""
    return re.compile(
        rf"{re.escape(desc)}: +\d+%\|[^|\n]*\| *\d+/{total} \[\d\d:\d\d<[^,\]]+, *[^\]]*{unit}/s\]"
    )


def on_terminal(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal of 120 columns; its exit code
    and output."""
    leader, follower = pty.openpty()
    # A new pseudo-terminal has 0 columns, and tqdm draws nothing in 0 columns.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=300), b"".join(chunks).decode(errors="replace")


def test_bars_are_drawn_on_a_terminal_and_left_out_of_logs(tmp_path, raw_dir, params):
    params_file = write_params(tmp_path / "params.yaml", params)
    args = [sys.executable, REPO / "stages" / "split.py", "--params", params_file, "--raw", raw_dir]
    env = {k: v for k, v in os.environ.items() if k != progress.PROGRESS_ENV}

    code, shown = on_terminal([str(a) for a in [*args, "--out", tmp_path / "a"]], env)
    assert code == 0, shown
    assert bar("check", 24, "pair").search(shown), shown
    assert "split 24 valid pairs" in shown  # the summary line, as before

    logged = run([*args, "--out", tmp_path / "b"], env=env)  # output to files: a log
    assert "%|" not in logged.stderr and "\r" not in logged.stderr
    assert "split 24 valid pairs" in logged.stderr

    asked = run([*args, "--out", tmp_path / "c"], env={**env, progress.PROGRESS_ENV: "1"})
    assert bar("check", 24, "pair").search(asked.stderr)

    code, hidden = on_terminal(
        [str(a) for a in [*args, "--out", tmp_path / "d"]], {**env, progress.PROGRESS_ENV: "0"}
    )
    assert code == 0 and "%|" not in hidden and "split 24 valid pairs" in hidden


class Stderr(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.mark.parametrize(
    ("setting", "terminal", "expected"),
    [
        (None, True, True),
        (None, False, False),
        ("auto", True, True),
        ("auto", False, False),
        ("1", False, True),
        ("0", True, False),
    ],
)
def test_shown_by_the_setting_else_on_a_terminal(monkeypatch, setting, terminal, expected):
    monkeypatch.setattr(sys, "stderr", Stderr(terminal))
    monkeypatch.delenv("RANK", raising=False)
    if setting is None:
        monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    else:
        monkeypatch.setenv(progress.PROGRESS_ENV, setting)
    assert progress.shown() is expected


def test_only_the_first_torchrun_process_draws(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Stderr(terminal=True))
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    monkeypatch.setenv("RANK", "1")
    assert not progress.shown()
    monkeypatch.setenv("RANK", "0")
    assert progress.shown()


def test_a_bad_setting_is_a_one_line_error_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setenv(progress.PROGRESS_ENV, "yes")
    result = stage_in_process("check.py", "--params", write_params(tmp_path / "params.yaml"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: SEGPIPE_PROGRESS='yes': must be 1 (always show progress bars), 0 (never) or auto "
        "(on a terminal, the default); set it to one of them or unset it"
    ]


def test_log_lines_are_printed_above_the_bar_not_through_it(monkeypatch):
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    stderr = Stderr(terminal=True)
    monkeypatch.setattr(sys, "stderr", stderr)
    handler = logging.StreamHandler(stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with progress.logs_above_bars():
            for i in progress.progress(range(3), "work"):
                if i == 1:
                    logging.getLogger("segpipe.test").warning("a message")
    finally:
        root.removeHandler(handler)
    text = stderr.getvalue()
    # The bar's line is cleared ("\r", blanks, "\r") before the message starts its own line.
    assert re.search(r"\r *\ra message\n", text), repr(text)
    assert bar("work", 3, "file").search(text)


def test_annotation_exports_and_archives_show_their_bars(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    data = tiny_params().data
    write_coco_export(tmp_path / "coco", 3)
    classes = ("background", "disc", "square")
    coco.convert(
        tmp_path / "coco", tmp_path / "coco_out", dataclasses.replace(data, classes=classes)
    )
    assert bar("convert COCO", 3, "image").search(capsys.readouterr().err)

    write_voc_tree(tmp_path / "voc", 2)
    voc.convert(tmp_path / "voc", tmp_path / "voc_out", data)
    assert bar("copy VOC", 2, "pair").search(capsys.readouterr().err)

    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        for name in ("images/1.png", "masks/1.png"):
            zf.writestr(name, b"x")
    archive.safe_extract(tmp_path / "a.zip", tmp_path / "zip_out")
    assert bar("extract a.zip", 2).search(capsys.readouterr().err)

    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "zip_out" / "images", "images")
    archive.safe_extract(tmp_path / "a.tar.gz", tmp_path / "tar_out")
    assert bar("extract a.tar.gz", 2).search(capsys.readouterr().err)  # the folder, the file
    assert (tmp_path / "tar_out" / "images" / "1.png").read_bytes() == b"x"


def test_every_stage_shows_its_bars_when_asked(monkeypatch, tmp_path, tiny_run):
    """Each stage and command run as DVC runs it (in this process, for speed) draws a bar over
    each of its loops: the folder copy, split's checks, the cache, training, evaluate's test
    split and validation sweep, plot's images, predict."""
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    raw = tiny_run / "raw"
    params_file = write_params(
        tmp_path / "params.yaml", tiny_params(), data__source="folder", data__path=str(raw)
    )

    def stage(script: str, *args: object) -> str:
        result = stage_in_process(script, "--params", params_file, *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return result.stderr

    out = stage("download.py", "--out", tmp_path / "raw")
    assert bar("download images", 24).search(out) and bar("download masks", 24).search(out)
    out = stage("split.py", "--raw", tmp_path / "raw", "--out", tmp_path / "splits")
    assert bar("check", 24, "pair").search(out)
    out = stage("cache.py", "--splits", tmp_path / "splits", "--out", tmp_path / "cache")
    assert bar("cache train", 12, "pair").search(out) and bar("cache val", 6, "pair").search(out)
    out = stage(
        "train.py", "--cache", tmp_path / "cache", "--model", tmp_path / "model.pt",
        "--live", tmp_path / "live",
    )  # fmt: skip
    assert bar("epoch 1/1 train", 3, "batch").search(out)
    assert bar("epoch 1/1 val", 2, "batch").search(out)

    splits, model = tiny_run / "splits", tiny_run / "model.pt"
    out = stage(
        "evaluate.py", "--model", model, "--splits", splits, "--metrics", tmp_path / "e.json",
        "--per-image", tmp_path / "per_image.csv", "--predictions", tmp_path / "predictions",
    )  # fmt: skip
    assert bar("evaluate (test)", 6, "image").search(out)
    assert bar("threshold sweep (val)", 6, "image").search(out)
    out = stage(
        "plot.py", "--test", splits / "test.csv", "--mask-rule", splits / "mask_rule.json",
        "--per-image", tmp_path / "per_image.csv", "--predictions", tmp_path / "predictions",
        "--live", tiny_run / "live", "--out", tmp_path / "plots",
    )  # fmt: skip
    assert bar("plot predictions", 2, "image").search(out)
    assert bar("plot worst", 6, "image").search(out)
    out = stage(
        "predict.py", "--model", model, "--input", raw / "images", "--output", tmp_path / "p"
    )
    assert bar("predict", 24, "image").search(out)


def test_export_shows_its_parity_check(monkeypatch, tmp_path, tiny_run):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    args = ("--model", tiny_run / "model.pt", "--out", tmp_path / "model.onnx", "--check-size", 64)
    result = stage_in_process("export.py", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert bar("parity check", 2, "input").search(result.stderr)
