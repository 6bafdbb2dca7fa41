"""Tests for segpipe.data.kaggle_source: the real ``kaggle`` client against a loopback fake Kaggle.

Why the endpoint is patched instead of setting KAGGLE_API_ENVIRONMENT=TEST: in kaggle 2.2.4 the
``KaggleApi`` used by ``dataset_download_files`` always builds its ``KaggleClient`` with an
explicit env (PROD, or LOCAL = http://localhost:80 when KAGGLE_API_ENVIRONMENT=LOCALHOST at import
time); only a ``KaggleHttpClient`` built with ``env=None`` (as kagglehub does) reads
``KAGGLE_API_ENVIRONMENT=TEST`` -> http://localhost:7777. So the ``fake_kaggle`` fixture points
the PROD entry of ``kagglesdk.kaggle_env._env_to_endpoint`` at a server on an ephemeral
127.0.0.1 port (no fixed port, so nothing to skip when 7777 is busy). Everything else is the real
client: credentials handling, the JSON POST, the redirect, the streamed download to disk.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import io
import json
import logging
import os
import socket
import struct
import sys
import threading
import zipfile
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from segpipe.data.archive import find_image_mask_dirs
from segpipe.data.kaggle_source import (
    CREDENTIALS_HELP,
    _credential_source,
    download_kaggle,
    parse_dataset,
)
from segpipe.errors import SegpipeError

DATASET = "tapakah68/supervisely-filtered-segmentation-person-dataset"
NESTED = "supervisely_person_clean_2667_img/supervisely_person_clean_2667_img"
STEMS = ("ds10_kid-playing", "ds1_man-walking", "ds6_woman-red-coat")
DOWNLOAD_PATH = "/v1/datasets.DatasetApiService/DownloadDataset"
GET_DATASET_PATH = "/v1/datasets.DatasetApiService/GetDataset"
INTROSPECT_PATH = "/v1/security.OAuthService/IntrospectToken"
USERNAME, KEY, TOKEN = "segpipe-tester", "k3y-that-must-never-leak", "t0ken-that-must-never-leak"

needs_kaggle = pytest.mark.skipif(
    importlib.util.find_spec("kaggle") is None, reason="the kaggle package is not installed"
)


def _png(value: int, size: int = 2) -> bytes:
    """A tiny valid 8-bit grayscale PNG filled with ``value``."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + data))
        return struct.pack(">I", len(data)) + tag + data + crc

    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes([value]) * size for _ in range(size))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _dataset_zip() -> bytes:
    """A zip with the real dataset's layout: df.csv plus nested images/ and masks/."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        rows = [f"{NESTED}/images/{s}.png,{NESTED}/masks/{s}.png" for s in STEMS]
        zf.writestr("df.csv", "\n".join(["images,masks", *rows]) + "\n")
        for i, stem in enumerate(STEMS):
            zf.writestr(f"{NESTED}/images/{stem}.png", _png(40 * i))
            zf.writestr(f"{NESTED}/masks/{stem}.png", _png(255))
    return buf.getvalue()


class FakeKaggle(ThreadingHTTPServer):
    """Loopback stand-in for api.kaggle.com and the storage it redirects downloads to."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.datasets: dict[str, bytes] = {}  # the latest version's archive
        self.versions: dict[str, dict[int, bytes]] = {}  # older versions, by number
        self.errors: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.bodies: list[tuple[str, dict]] = []  # (path, JSON body) of each POST
        basic = base64.b64encode(f"{USERNAME}:{KEY}".encode()).decode()
        self.valid_auth = {f"Basic {basic}", f"Bearer {TOKEN}"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeKaggle

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, message: str) -> None:
        # Shape of Kaggle's API errors; the client raises HTTPError from "code".
        self._json(status, {"code": status, "message": message})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        auth = self.headers.get("Authorization")
        self.server.requests.append(("POST", self.path, auth))
        self.server.bodies.append((self.path, body))
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if auth not in self.server.valid_auth:
            self._error(401, "Unauthenticated")
        elif self.path == INTROSPECT_PATH:
            self._json(200, {"active": True, "username": USERNAME})
        elif self.path == GET_DATASET_PATH and ref in self.server.datasets:
            latest = max(self.server.versions.get(ref, {}), default=0) + 1
            self._json(200, {"ref": ref, "currentVersionNumber": latest})
        elif self.path != DOWNLOAD_PATH:
            self._error(404, f"No such endpoint {self.path}")
        else:
            version = body.get("datasetVersionNumber")
            older = self.server.versions.get(ref, {})
            if ref in self.server.errors:
                self._error(self.server.errors[ref], "Permission denied or not found")
            elif ref not in self.server.datasets or (version and version > len(older) + 1):
                self._error(404, "Not found")
            else:  # Kaggle answers with a redirect to a signed storage URL.
                suffix = f"?v={version}&" if version in older else "?"
                location = f"{self.server.url}/storage/{ref}.zip{suffix}X-Goog-Signature=abc"
                self._send(302, b"", {"Location": location})

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, self.headers.get("Authorization")))
        path, _, query = self.path.partition("?")
        ref = path.removeprefix("/storage/").removesuffix(".zip")
        if not self.path.startswith("/storage/") or ref not in self.server.datasets:
            self._send(404, b"NoSuchKey", {"Content-Type": "text/plain"})
            return
        name = ref.split("/")[1]
        version = query.partition("&")[0].removeprefix("v=") if query.startswith("v=") else None
        archive = self.server.versions[ref][int(version)] if version else self.server.datasets[ref]
        self._send(
            200,
            archive,
            {
                "Content-Type": "application/zip",
                "Content-Disposition": f'attachment; filename="{name}.zip"',
                "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
            },
        )


@pytest.fixture
def kaggle_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No Kaggle credentials or proxies, HOME in tmp, and a fresh ``kaggle`` import.

    ``kaggle`` reads its config dir at import time, so its modules are dropped here and the
    previously imported ones (if any) are put back by monkeypatch after the test.
    """
    for var in list(os.environ):
        if var.startswith("KAGGLE_") or var.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))

    def kaggle_modules() -> list[str]:
        return [m for m in sys.modules if m == "kaggle" or m.startswith("kaggle.")]

    for name in kaggle_modules():
        monkeypatch.delitem(sys.modules, name)
    yield home
    for name in kaggle_modules():
        del sys.modules[name]


@pytest.fixture
def fake_kaggle(kaggle_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKaggle]:
    """A running FakeKaggle that the real client talks to instead of api.kaggle.com."""
    import kagglesdk.kaggle_env

    server = FakeKaggle()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setitem(
        kagglesdk.kaggle_env._env_to_endpoint, kagglesdk.kaggle_env.KaggleEnv.PROD, server.url
    )
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _use_credentials(kind: str, monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    if kind == "env":
        monkeypatch.setenv("KAGGLE_USERNAME", USERNAME)
        monkeypatch.setenv("KAGGLE_KEY", KEY)
    elif kind == "kaggle_json":
        config = Path(os.environ["KAGGLE_CONFIG_DIR"])
        config.mkdir(parents=True, exist_ok=True)
        (config / "kaggle.json").write_text(json.dumps({"username": USERNAME, "key": KEY}))
        (config / "kaggle.json").chmod(0o600)
    elif kind == "api_token":
        monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)


@pytest.mark.parametrize(
    "name",
    ["no-slash", "a/b/c", "../x", "", "owner/ name", "/name", "a/b/versions/0", "a/b/versions/x"],
)
def test_bad_dataset_name(name: str, tmp_path: Path) -> None:
    with pytest.raises(SegpipeError, match="expected 'owner/name'"):
        download_kaggle(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_credentials(
    kaggle_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SegpipeError) as err:
        download_kaggle(DATASET, tmp_path / "data")
    message = str(err.value)
    assert message == CREDENTIALS_HELP and "\n" not in message
    assert "~/.kaggle/kaggle.json" in message and "KAGGLE_USERNAME" in message
    assert "kaggle" not in sys.modules  # checked before the (noisy) import
    assert capsys.readouterr() == ("", "")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("setup", "found"),
    [
        ({"KAGGLE_USERNAME": "u"}, False),
        ({"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}, True),
        ({"KAGGLE_API_TOKEN": "t"}, True),
        ("config_dir/kaggle.json", True),
        ("home/.kaggle/kaggle.json", True),
        ("home/.kaggle/access_token", True),
        ("home/.config/kaggle/kaggle.json", True),
    ],
)
def test_credential_sources(
    setup: dict | str, found: bool, kaggle_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if isinstance(setup, dict):
        for var, value in setup.items():
            monkeypatch.setenv(var, value)
    else:
        base = Path(os.environ["KAGGLE_CONFIG_DIR"]).parent
        path = base / setup.replace("config_dir", "kaggle-config")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    assert (_credential_source() is not None) == found


@needs_kaggle
@pytest.mark.parametrize("credentials", ["env", "kaggle_json", "api_token"])
def test_download_with_real_client(
    credentials: str,
    fake_kaggle: FakeKaggle,
    kaggle_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _use_credentials(credentials, monkeypatch, kaggle_env)
    fake_kaggle.datasets[DATASET] = _dataset_zip()
    dest = tmp_path / "data"
    stale = dest / DATASET.split("/")[1] / "stale.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("from an older download")

    root = download_kaggle(DATASET, dest)

    assert root == dest / "supervisely-filtered-segmentation-person-dataset"
    ((images, masks),) = find_image_mask_dirs(root)
    assert (images, masks) == (root / NESTED / "images", root / NESTED / "masks")
    assert sorted(p.stem for p in images.iterdir()) == sorted(STEMS)
    assert sorted(p.stem for p in masks.iterdir()) == sorted(STEMS)
    assert (images / f"{STEMS[1]}.png").read_bytes() == _png(40)
    assert (root / "df.csv").is_file() and not stale.exists()
    assert [p.name for p in dest.iterdir()] == [root.name]  # no zip, no temp folder left
    assert not list(root.rglob("*.zip"))
    downloads = [r for r in fake_kaggle.requests if r[1] == DOWNLOAD_PATH]
    assert len(downloads) == 1 and downloads[0][2] in fake_kaggle.valid_auth
    assert any(r[0] == "GET" and r[1].startswith("/storage/") for r in fake_kaggle.requests)
    assert capsys.readouterr() == ("", "")  # kaggle's own prints are swallowed


@needs_kaggle
@pytest.mark.parametrize("status", [403, 404])
def test_download_not_accessible(
    status: int,
    fake_kaggle: FakeKaggle,
    monkeypatch: pytest.MonkeyPatch,
    kaggle_env: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    _use_credentials("env", monkeypatch, kaggle_env)
    fake_kaggle.errors[DATASET] = status
    with pytest.raises(SegpipeError) as err:
        download_kaggle(DATASET, tmp_path / "data")
    message = str(err.value)
    assert message.startswith(f"Kaggle dataset {DATASET}: not found or not accessible")
    assert f"HTTP {status}" in message and "\n" not in message
    captured = capsys.readouterr()
    for text in (message, caplog.text, captured.out, captured.err):
        assert KEY not in text
    assert list((tmp_path / "data").iterdir()) == []


@needs_kaggle
def test_download_rejected_credentials(
    fake_kaggle: FakeKaggle, monkeypatch: pytest.MonkeyPatch, kaggle_env: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", "wrong-key-value")
    fake_kaggle.datasets[DATASET] = _dataset_zip()
    with pytest.raises(SegpipeError) as err:
        download_kaggle(DATASET, tmp_path / "data")
    assert "authentication failed (HTTP 401)" in str(err.value)
    assert "wrong-key-value" not in str(err.value)


@needs_kaggle
@pytest.mark.parametrize("credentials", ["env", "api_token"])  # token: fails while authenticating
def test_download_server_unreachable(
    credentials: str, kaggle_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import kagglesdk.kaggle_env

    with socket.socket() as sock:  # grab a free port, then close it: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setitem(
        kagglesdk.kaggle_env._env_to_endpoint,
        kagglesdk.kaggle_env.KaggleEnv.PROD,
        f"http://127.0.0.1:{port}",
    )
    _use_credentials(credentials, monkeypatch, kaggle_env)
    with pytest.raises(SegpipeError) as err:
        download_kaggle(DATASET, tmp_path / "data")
    assert str(err.value).startswith(f"Kaggle dataset {DATASET}: cannot reach Kaggle")
    assert TOKEN not in str(err.value) and KEY not in str(err.value)


def _kaggle_data_config(tmp_path: Path):
    from .helpers import tiny_params

    return dataclasses.replace(tiny_params().data, source="kaggle", kaggle_dataset=DATASET)


@needs_kaggle
def test_download_stage_normalises_the_kaggle_archive(
    fake_kaggle: FakeKaggle, kaggle_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from segpipe.data import download

    _use_credentials("env", monkeypatch, kaggle_env)
    fake_kaggle.datasets[DATASET] = _dataset_zip()
    out = tmp_path / "raw"
    assert download.run(_kaggle_data_config(tmp_path), 0, out) == len(STEMS)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{s}.png" for s in STEMS)
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(f"{s}.png" for s in STEMS)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raw")], "no temp left"


@needs_kaggle
def test_download_stage_rejects_an_archive_without_images_and_masks(
    fake_kaggle: FakeKaggle, kaggle_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from segpipe.data import download

    _use_credentials("env", monkeypatch, kaggle_env)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("photos/a.png", _png(1))
        zf.writestr("README.txt", "no masks here")
    fake_kaggle.datasets[DATASET] = buf.getvalue()
    out = tmp_path / "raw"
    (out / "images").mkdir(parents=True)
    (out / "images" / "earlier.png").write_bytes(_png(3))
    with pytest.raises(SegpipeError) as err:
        download.run(_kaggle_data_config(tmp_path), 0, out)
    assert "no folder with images/ and masks/ subfolders found" in str(err.value)
    assert "\n" not in str(err.value)
    assert (out / "images" / "earlier.png").read_bytes() == _png(3), "earlier output intact"


def _zip_of(stems: tuple[str, ...]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, stem in enumerate(stems):
            zf.writestr(f"images/{stem}.png", _png(10 + i))
            zf.writestr(f"masks/{stem}.png", _png(255))
    return buf.getvalue()


def test_dataset_spec_with_a_version() -> None:
    spec = parse_dataset(f"{DATASET}/versions/3")
    assert (spec.ref, spec.version, str(spec)) == (DATASET, 3, f"{DATASET}/versions/3")
    assert spec.client_ref() == f"{DATASET}/3"  # what the kaggle client takes
    assert parse_dataset(DATASET).version is None


def _downloads(fake: FakeKaggle) -> list[dict]:
    return [body for path, body in fake.bodies if path == DOWNLOAD_PATH]


@needs_kaggle
def test_pinned_version_is_downloaded_once_and_recorded(
    fake_kaggle: FakeKaggle, kaggle_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`owner/name/versions/1` asks Kaggle for that version; the stage records it in
    data/imported/kaggle_version.json; a second run (a code edit, `dvc repro -f`) downloads
    nothing and needs neither network nor credentials."""
    from segpipe.data import download

    _use_credentials("env", monkeypatch, kaggle_env)
    fake_kaggle.versions[DATASET] = {1: _zip_of(("old-a", "old-b"))}
    fake_kaggle.datasets[DATASET] = _zip_of(("new-a", "new-b", "new-c"))  # version 2
    cfg = dataclasses.replace(_kaggle_data_config(tmp_path), kaggle_dataset=f"{DATASET}/versions/1")
    downloads, out = tmp_path / "downloads", tmp_path / "raw"

    assert download.run(cfg, 0, out, downloads) == 2
    assert [b.get("datasetVersionNumber") for b in _downloads(fake_kaggle)] == [1]
    assert sorted(p.stem for p in (out / "images").iterdir()) == ["old-a", "old-b"]
    record = json.loads((out / "kaggle_version.json").read_text())
    assert record == {
        "source": "kaggle",
        "dataset": DATASET,
        "version": 1,
        "spec": f"{DATASET}/versions/1",
        "pinned": f"{DATASET}/versions/1",
    }
    # Stored once: the output's files are links to the downloaded version's read-only files.
    kept = downloads / DATASET / "versions" / "1" / "images" / "old-a.png"
    assert (out / "images" / "old-a.png").stat().st_ino == kept.stat().st_ino
    assert not kept.stat().st_mode & 0o222

    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var)  # no credentials, and no request below
    fake_kaggle.requests.clear()
    assert download.run(cfg, 0, out, downloads) == 2
    assert fake_kaggle.requests == []


@needs_kaggle
def test_latest_version_is_looked_up_recorded_and_reused(
    fake_kaggle: FakeKaggle,
    kaggle_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`owner/name`: Kaggle names its current version, which is downloaded once, recorded and
    logged with the spec that pins it; offline, the error names the version to pin."""
    from segpipe.data import download

    caplog.set_level(logging.INFO)
    _use_credentials("env", monkeypatch, kaggle_env)
    fake_kaggle.versions[DATASET] = {1: _zip_of(("old-a", "old-b"))}
    fake_kaggle.datasets[DATASET] = _zip_of(("new-a", "new-b", "new-c"))
    cfg, downloads, out = _kaggle_data_config(tmp_path), tmp_path / "downloads", tmp_path / "raw"

    assert download.run(cfg, 0, out, downloads) == 3
    assert json.loads((out / "kaggle_version.json").read_text())["version"] == 2
    assert f"pin it with data.kaggle_dataset: {DATASET}/versions/2" in caplog.text
    assert [b.get("datasetVersionNumber") for b in _downloads(fake_kaggle)] == [2]

    assert download.run(cfg, 0, out, downloads) == 3  # the same latest version: no download
    assert len(_downloads(fake_kaggle)) == 1
    assert [p for p, _ in fake_kaggle.bodies].count(GET_DATASET_PATH) == 2

    fake_kaggle.versions[DATASET][2] = fake_kaggle.datasets[DATASET]  # Kaggle publishes v3
    fake_kaggle.datasets[DATASET] = _zip_of(("v3-a", "v3-b"))
    assert download.run(cfg, 0, out, downloads) == 2
    assert json.loads((out / "kaggle_version.json").read_text())["version"] == 3

    import kagglesdk.kaggle_env as kaggle_env

    unreachable = f"http://127.0.0.1:{_closed_port()}"  # nothing listens on a closed port
    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.PROD, unreachable)
    with pytest.raises(SegpipeError) as err:
        download.run(cfg, 0, out, downloads)
    assert str(err.value).startswith(f"Kaggle dataset {DATASET}: cannot reach Kaggle")
    assert str(err.value).endswith(
        f"; downloaded before: versions 2, 3: to use one without Kaggle, pin it, e.g. "
        f"data.kaggle_dataset: {DATASET}/versions/3"
    )
    assert json.loads((out / "kaggle_version.json").read_text())["version"] == 3, "output kept"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@needs_kaggle
@pytest.mark.parametrize("pinned", [True, False])
def test_an_empty_version_folder_is_no_download(
    fake_kaggle: FakeKaggle,
    kaggle_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    pinned: bool,
) -> None:
    """A version folder with no file (made by hand, or emptied) is downloaded again, with a
    warning, whether the spec pins the version or Kaggle names it the latest."""
    from segpipe.data import download

    _use_credentials("env", monkeypatch, kaggle_env)
    fake_kaggle.versions[DATASET] = {1: _zip_of(("a", "b"))}
    fake_kaggle.datasets[DATASET] = _zip_of(("a", "b"))
    spec = f"{DATASET}/versions/1" if pinned else DATASET
    cfg = dataclasses.replace(_kaggle_data_config(tmp_path), kaggle_dataset=spec)
    downloads, out = tmp_path / "downloads", tmp_path / "raw"
    version = downloads / DATASET / "versions" / ("1" if pinned else "2")
    (version / "images").mkdir(parents=True)
    with caplog.at_level("WARNING"):
        assert download.run(cfg, 0, out, downloads) == 2
    assert len(_downloads(fake_kaggle)) == 1
    assert f"{version}: an empty version folder, not a download: downloading it again" in (
        caplog.text
    )
    assert sorted(p.stem for p in (version / "images").iterdir()) == ["a", "b"]
