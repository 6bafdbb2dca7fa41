"""The ``segpipe`` command as a user runs it: its help, each subcommand's own arguments and
the one-line errors of the stage scripts; and no pipeline stage depends on the dispatcher."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe import __main__ as commands
from segpipe.__main__ import COMMANDS
from segpipe.imports import script_closure

from .helpers import REPO, call, run, write_params
from .test_bad_inputs import error_line

# The console script `pip install` puts next to the interpreter; `python -m segpipe` is the
# same entry point, for an environment installed before the command existed.
SCRIPT = Path(sys.executable).with_name("segpipe")
PYTHON_M = [sys.executable, "-m", "segpipe"]
SEGPIPE = [str(SCRIPT)] if SCRIPT.is_file() else PYTHON_M


def segpipe(*args: object, cwd: Path = REPO, command: list[str] = SEGPIPE):
    """``segpipe ARGS``: the installed command, in a process of its own."""
    return run([*command, *args], cwd, check=False, timeout=120)


def in_process(*args: object, cwd: Path = REPO):
    """``segpipe ARGS`` through the same entry point, in this process (no Python start or
    torch import per call); the two tests below run the real command."""
    return call(commands.main, *args, cwd=cwd)


def usage_error(result: subprocess.CompletedProcess, prog: str, message: str) -> None:
    """argparse's answer to bad arguments: exit 2, the usage, one ``<prog>: error:`` line."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"usage: {prog} ")
    assert lines[-1].startswith(f"{prog}: error: ") and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_command() -> None:
    result = segpipe("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: segpipe ")
    for name, about in COMMANDS.items():
        assert f"  {name}" in result.stdout and about in result.stdout
    assert segpipe("--version").stdout.strip().startswith("segpipe 0.")


@pytest.mark.skipif(not SCRIPT.is_file(), reason="segpipe not installed here (pip install -e .)")
def test_console_script_is_python_m_segpipe() -> None:
    assert segpipe("--help").stdout == segpipe("--help", command=PYTHON_M).stdout


def test_a_missing_or_unknown_command_is_a_usage_error() -> None:
    usage_error(in_process(), "segpipe", "the following arguments are required: COMMAND")
    usage_error(in_process("trian"), "segpipe", "invalid choice: 'trian' (choose from 'predict'")


BAD_ARGUMENTS = {
    "predict": "the following arguments are required: --input, --output",
    "export": "the following arguments are required: --model, --out",
    "check": "unrecognized arguments: --no-such-option",
    "compare": "the following arguments are required: REV",
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_parses_its_own_arguments(name: str) -> None:
    result = in_process(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: segpipe {name} [-h]")
    usage_error(in_process(name, "--no-such-option"), f"segpipe {name}", BAD_ARGUMENTS[name])


def test_check_validates_a_params_file(tmp_path: Path) -> None:
    good = write_params(tmp_path / "good.yaml")
    result = in_process("check", "--params", good)
    assert result.returncode == 0 and f"{good}: valid" in result.stderr, result.stderr
    bad = write_params(tmp_path / "bad.yaml", train__lr=-1.0)
    assert error_line(in_process("check", "--params", bad)).startswith("error: train.lr: ")
    # --params defaults to params.yaml in the current folder, as in the check stage.
    (tmp_path / "params.yaml").write_bytes(bad.read_bytes())
    assert error_line(in_process("check", cwd=tmp_path)).startswith("error: train.lr: ")
    (tmp_path / "empty").mkdir()
    result = in_process("check", cwd=tmp_path / "empty")
    assert error_line(result) == "error: params.yaml: file not found"


def test_predict_and_export_report_a_missing_model(tmp_path: Path) -> None:
    """Each command reaches its own work and stops with the stage script's one-line error."""
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    missing = tmp_path / "nowhere.pt"
    predict = in_process(
        "predict", "--model", missing, "--input", image, "--output", tmp_path / "masks"
    )
    assert str(missing) in error_line(predict)
    assert not (tmp_path / "masks").exists()
    export = in_process("export", "--model", missing, "--out", tmp_path / "model.onnx")
    assert str(missing) in error_line(export)
    assert not (tmp_path / "model.onnx").exists()


def test_no_stage_script_imports_the_dispatcher() -> None:
    """Were the ``segpipe`` command in a stage's imports, every stage would depend on every
    tool, and an edit to one tool would rerun the whole pipeline."""
    dispatcher = {REPO / "src/segpipe/__main__.py"}
    for script in sorted((REPO / "stages").glob("*.py")):
        assert not dispatcher & set(script_closure(script)), script.name


def test_a_command_exits_with_its_code_and_leaves_the_last_collection_out(monkeypatch):
    """The console script (``segpipe.__main__.run``) ends its process through
    ``exit_process``: the command's exit code, with every object frozen so that the garbage
    collector's last pass at exit has nothing to walk (about a second with torch loaded)."""
    import gc

    monkeypatch.setattr(commands, "main", lambda: 3)
    try:
        with pytest.raises(SystemExit) as exited:
            commands.run()
        assert exited.value.code == 3 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # this test process goes on collecting
