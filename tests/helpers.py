"""Helpers shared by the end-to-end tests: a fresh copy of the repository and command runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from segpipe.data.masks import rule_of_files

from .conftest import REPO


def read_mask(path: Path, num_classes: int = 2, ignore_index: int | None = None) -> np.ndarray:
    """One mask file as class indices, by the rule the split stage would decide for it alone."""
    return rule_of_files([Path(path)], num_classes, ignore_index).read(Path(path))


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run ``cmd``, assert it succeeded, return its stdout and stderr."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def copy_repo(root: Path, edits: dict[tuple[str, ...], object]) -> dict[str, str]:
    """Copy the files git would commit into a new git repository at ``root``, with
    ``params.yaml`` edited (``{("train", "epochs"): 3}``). Returns the environment to run
    ``dvc`` and the stage scripts with."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file() and not name.startswith(("metrics/", "plots/", "dvc.lock")):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for keys, value in edits.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        # `python` in dvc.yaml must be this interpreter, with segpipe installed.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        "DVC_NO_ANALYTICS": "1",
    }
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "template"], root, env)
    return env
