"""The install: runtime pins apart from the test tools, extras pinned where the tests install
them, one constraints file for both, and no network call when segpipe is imported."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==(\S+)")
NAME = re.compile(r"^([A-Za-z0-9._-]+)")


def normal(name: str) -> str:
    """A distribution name as pip compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file, by normalised name."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return {normal(m[1]): m[2] for m in map(PIN.match, lines) if m}


def test_requirements_pin_what_the_constraints_pin():
    constraints = pins(ROOT / "constraints.txt")
    runtime, dev = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-dev.txt")
    assert not runtime.keys() & dev.keys(), "requirements-dev.txt includes requirements.txt"
    differ = {
        n: (v, constraints.get(n)) for n, v in (runtime | dev).items() if constraints.get(n) != v
    }
    assert differ == {}, "requirements*.txt against constraints.txt: run .ci/lock"
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert "-c constraints.txt" in lines and "-e ." in lines
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text(encoding="utf-8")
    assert "pip install -r requirements-dev.txt" in (ROOT / ".ci" / "run").read_text()


def test_extras_stay_out_of_the_runtime_and_in_the_test_install():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    constraints = pins(ROOT / "constraints.txt")
    runtime, dev = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-dev.txt")
    for requirement in project["dependencies"]:
        assert normal(NAME.match(requirement)[1]) in constraints, requirement
    extras = project["optional-dependencies"]
    assert {"export", "openvino", "s3"} <= extras.keys()
    for extra in ("export", "openvino", "s3"):
        for requirement in extras[extra]:
            name = normal(NAME.match(requirement)[1])
            assert name in dev and name not in runtime, f"segpipe[{extra}]: {requirement}"


def _connections_during(code: str, env_update: dict[str, str]) -> tuple[int, str]:
    """Run ``code`` in a fresh Python whose HTTP(S) proxy is a local socket that answers
    nothing; returns how many connections reached it, and the child's stderr."""
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen(8)
        url = f"http://127.0.0.1:{proxy.getsockname()[1]}"
        env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
        env.update(HTTPS_PROXY=url, HTTP_PROXY=url, https_proxy=url, http_proxy=url, **env_update)
        env.pop("NO_PROXY", None)
        env.pop("no_proxy", None)
        child = subprocess.run(
            [sys.executable, "-W", "always", "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        proxy.setblocking(False)
        connections = 0
        while True:
            try:
                proxy.accept()[0].close()
            except BlockingIOError:
                return connections, child.stderr
            connections += 1


@pytest.mark.parametrize("setting", [None, "0"])
def test_importing_segpipe_makes_no_network_call(setting):
    """albumentations asks PyPI for its latest version on import unless NO_ALBUMENTATIONS_UPDATE
    is set: segpipe sets it unless the user did (0: the user wants the check, and gets it)."""
    code = "import segpipe.data.augment, os; print(os.environ['NO_ALBUMENTATIONS_UPDATE'])"
    env = {} if setting is None else {"NO_ALBUMENTATIONS_UPDATE": setting}
    connections, stderr = _connections_during(code, env)
    if setting is None:
        assert connections == 0 and "Error fetching version info" not in stderr
    else:
        assert connections > 0 and "Error fetching version info" in stderr
