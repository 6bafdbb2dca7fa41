"""What the tests share: the tiny settings, params files, command runs and a copy of the
repository to run `dvc` in. Fixtures live in ``conftest.py``."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import os
import runpy
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from segpipe.config import Params, load_params, read_yaml, to_dict
from segpipe.data.masks import rule_of_files

REPO = Path(__file__).resolve().parents[1]

TINY: dict[str, object] = {
    "data__synthetic__n_images": 24,
    "data__synthetic__min_size": 48,
    "data__synthetic__max_size": 80,
    "split__val_fraction": 0.25,
    "split__test_fraction": 0.25,
    "model__encoder": "tu-mobilenetv3_small_050",
    "model__encoder_weights": None,
    "train__image_size": 64,
    "train__epochs": 1,
    "train__warmup_epochs": 0,
    "train__scheduler": "none",
    "train__batch_size": 4,
    "plot__n_samples": 2,
}
"""The repository's params.yaml cut down to tiny, fast, offline settings, as
``section__key`` edits: 24 small synthetic images split 12/6/6, a Unet at 64x64 on a
2.2M-parameter timm encoder (resnet18's 14M would make every checkpoint six times larger to
build, write and read) for one epoch at a constant lr. In-process tests get them as
:func:`tiny_params`, a stage script as ``write_params(path, tiny_params())``, a copied
repository as ``copy_repo(root, TINY)``."""


CUT_DOWN: dict[str, object] = {**TINY, "train__epochs": 3}
"""The tiny settings as the reproduced repository runs them (:func:`reproduce_repo`): three
epochs, so that a run can be killed between two of them."""


S3_BUCKET = "segpipe-store"
"""The bucket of the S3 server the tests run on loopback (``s3_server``): the default DVC remote
of the session's experiments repository."""

S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""Fake credentials, read from the environment as DVC reads real ones."""


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client of the loopback server at ``endpoint``."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    )


TRAINING_THREADS = 2
"""Threads for training the session's tiny run, and any training compared with it bit for bit:
a fixed count, so that the same model comes out with or without pytest-xdist's workers (which
give each worker a share of the cores) and whatever the machine's core count: float sums split
over another number of threads round otherwise."""


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with torch on ``count`` threads."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def set_keys(raw: dict[str, Any], edits: Mapping[str, object]) -> dict[str, Any]:
    """Set ``section__key`` values (``train__epochs``, ``data__synthetic__n_images``) in a raw
    params mapping, in place, without checking them; returns the mapping."""
    for dotted, value in edits.items():
        *sections, key = dotted.split("__")
        node = raw
        for section in sections:
            node = node[section]
        node[key] = value
    return raw


def _replaced(config: Any, keys: list[str], value: object) -> Any:
    head, *rest = keys
    inner = _replaced(getattr(config, head), rest, value) if rest else value
    return dataclasses.replace(config, **{head: inner})


def tiny_params(**train_overrides: object) -> Params:
    """The repository's params.yaml with the :data:`TINY` settings (and ``train`` overrides)."""
    p = load_params(REPO / "params.yaml")
    for dotted, value in {**TINY, **{f"train__{k}": v for k, v in train_overrides.items()}}.items():
        p = _replaced(p, dotted.split("__"), value)
    return p


def write_params(
    path: Path, params: Params | Mapping[str, Any] | None = None, /, **edits: object
) -> Path:
    """Write a params.yaml as the stage scripts read it: ``params`` (typed, or a raw mapping;
    the repository's own file by default) with ``section__key=value`` edits. Nothing is
    checked, so a test can write a bad value too. Returns ``path``."""
    if params is None:
        raw = read_yaml(REPO / "params.yaml")
    elif isinstance(params, Params):
        raw = to_dict(params)
    else:
        raw = copy.deepcopy(dict(params))
    path.write_text(yaml.safe_dump(set_keys(raw, edits), sort_keys=False))
    return path


def run(
    cmd: Sequence[object],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with its output captured as text. With ``check``, assert that it exited 0,
    showing the command, its exit code and all its output if not. ``SEGPIPE_VERBOSE`` is
    dropped from the environment: the tests check what a user sees by default.

    The output goes through files, not pipes: a daemon the command leaves behind (the worker
    `dvc queue start` spawns) inherits them, and a pipe would keep this call waiting until the
    daemon exits."""
    args = [str(part) for part in cmd]
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "SEGPIPE_VERBOSE"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run(args, cwd=cwd, env=env, stdout=out, stderr=err, timeout=timeout)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(args, done.returncode, out.read(), err.read())
    if check:
        assert result.returncode == 0, (
            f"{shlex.join(args)} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


def call(
    main: Callable[[list[str]], int], *args: object, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """Run a command's ``main(argv)`` in this process, from ``cwd``, as :func:`run` runs its
    script: stdout and stderr captured, INFO logs on stderr as a stage script writes them, the
    exit code returned (argparse's exits included), ``SEGPIPE_VERBOSE`` unset.

    For tests of a command's arguments and messages, this skips a Python start and the torch
    imports (seconds each); every command still has a test that runs its real script."""
    argv = [str(part) for part in args]
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root, here, verbose = logging.getLogger(), Path.cwd(), os.environ.pop("SEGPIPE_VERBOSE", None)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    finally:
        os.chdir(here)
        root.removeHandler(handler)
        root.setLevel(level)
        if verbose is not None:
            os.environ["SEGPIPE_VERBOSE"] = verbose
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def stage_in_process(
    script: str, *args: object, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """``python stages/<script> ARGS`` run by :func:`call` in this process (``runpy``, with
    ``sys.argv`` set as the interpreter would set it)."""

    def main(argv: list[str]) -> int:
        path = str(REPO / "stages" / script)
        saved, sys.argv = sys.argv, [path, *argv]
        try:
            runpy.run_path(path, run_name="__main__")
        finally:
            sys.argv = saved
        return 0

    return call(main, *args, cwd=cwd)


def run_stage(
    script: str,
    *args: object,
    cwd: Path = REPO,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``stages/<script>`` with this interpreter and ``args``, as DVC would (from the
    repository root unless ``cwd`` says otherwise); see :func:`run`."""
    cmd = [sys.executable, REPO / "stages" / script, *args]
    return run(cmd, cwd, env, check=check, timeout=timeout)


def dvc(args: Sequence[object], root: Path, env: Mapping[str, str], *, check: bool = True) -> str:
    """Run ``dvc <args>`` in the repository at ``root``; returns its stdout and stderr."""
    result = run([sys.executable, "-m", "dvc", *args], root, env, check=check)
    return result.stdout + result.stderr


def run_queue(
    root: Path, env: Mapping[str, str], names: Iterable[str], timeout: float = 600
) -> str:
    """`dvc queue start -j 1`, wait until the queued experiments ``names`` have run, then stop
    the worker and wait for it to exit (so that the repository can be copied); returns the last
    `dvc queue status`.

    The wait reads git's experiment refs (a cheap call) twice a second, and asks `dvc queue
    status` (a Python start and DVC's imports, CPU taken from the experiments it waits for)
    every 10 seconds, to stop at a failure. That status may fail: DVC can read a running
    experiment's info file while its worker writes it, and stop with "unexpected error -
    Expecting value" (treeverse/dvc#8014); the next one is asked as usual."""
    dvc(["queue", "start", "-j", "1"], root, env)
    deadline = time.monotonic() + timeout
    polls = 0
    while time.monotonic() < deadline:
        refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], root, env)
        done = {ref.rsplit("/", 1)[-1] for ref in refs.stdout.split()}
        if done >= set(names):
            break
        polls += 1
        if polls % 20 == 0 and "Failed" in dvc(["queue", "status"], root, env, check=False):
            break
        time.sleep(0.5)
    dvc(["queue", "stop"], root, env)
    while not _workers_exited(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    return dvc(["queue", "status"], root, env)


def _workers_exited(root: Path) -> bool:
    """Whether every queue worker DVC started in ``root`` has exited: the daemon that runs one
    writes its exit code into the worker's info file."""
    for info in (root / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.json"):
        try:
            if json.loads(info.read_text()).get("returncode") is None:
                return False
        except ValueError:  # being written
            return False
    return True


def collect_runs(node: Any, found: list | None = None) -> list[tuple[str | None, Any, Any]]:
    """(name or revision, train.lr, test dice) of every experiment or commit in the
    `dvc exp show --json` tree ``node``."""
    found = [] if found is None else found
    if isinstance(node, dict):
        data = node.get("data") or {}
        params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
        metrics = (data.get("metrics") or {}).get("metrics/evaluate.json", {}).get("data", {})
        if params and metrics:
            found.append(
                (node.get("name") or node.get("rev"), params["train"]["lr"], metrics["dice"])
            )
        for value in node.values():
            collect_runs(value, found)
    elif isinstance(node, list):
        for value in node:
            collect_runs(value, found)
    return found


def train_args(params_file: Path, cache_dir: Path, out: Path) -> list[str]:
    """The train stage script and its arguments, with every output under ``out``."""
    return [
        str(REPO / "stages" / "train.py"),
        "--params",
        str(params_file),
        "--cache",
        str(cache_dir),
        "--model",
        str(out / "model.pt"),
        "--live",
        str(out / "live"),
        "--resume",
        str(out / "resume"),
    ]


def copy_repo(root: Path, edits: Mapping[str, object]) -> dict[str, str]:
    """Copy the files git would commit into a new git repository at ``root``, with
    ``params.yaml`` edited (``{"train__epochs": 3}``). Returns the environment to run
    ``dvc`` and the stage scripts with."""
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO)
    for name in files.stdout.splitlines():
        if (REPO / name).is_file() and not name.startswith(("metrics/", "plots/", "dvc.lock")):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(set_keys(params, edits), sort_keys=False))
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


def reproduce_repo(root: Path) -> tuple[dict[str, str], str]:
    """A copy of the repository at ``root`` with the :data:`CUT_DOWN` settings, after one
    `dvc repro`: its environment and the output of `dvc repro`."""
    env = copy_repo(root, CUT_DOWN)
    return env, dvc(["repro"], root, env)


def copy_reproduced(template: Path, root: Path) -> None:
    """A copy at ``root`` of a reproduced repository: git history, workspace, DVC's cache and
    run cache. Cheaper than a `dvc repro` of its own; DVC rehashes the copied outputs once."""
    shutil.copytree(template, root, symlinks=True)


def read_mask(path: Path, num_classes: int = 2, ignore_index: int | None = None) -> np.ndarray:
    """One mask file as class indices, by the rule the split stage would decide for it alone."""
    return rule_of_files([Path(path)], num_classes, ignore_index).read(Path(path))


def untrained_checkpoint(path: Path, classes: int = 2, **geometry: object) -> Path:
    """A randomly initialised tiny checkpoint (no training): for checks that stop before or
    beside the masks' values."""
    from segpipe.config import ModelConfig
    from segpipe.model.checkpoint import Checkpoint, ModelSpec, save_checkpoint
    from segpipe.model.network import build_model

    spec = ModelSpec.from_params(tiny_params())
    names = tuple(["background", *(f"class{i}" for i in range(1, classes))])
    spec = dataclasses.replace(spec, classes=names, **geometry)
    model = build_model(ModelConfig(spec.arch, spec.encoder, None), classes)
    record = Checkpoint(model_config=spec, epoch=1, val_dice=0.5, train_images_per_s=1.0)
    save_checkpoint(path, model, record)
    return path
