"""Kaggle data source: download a dataset with the ``kaggle`` client and extract it safely.

``data.kaggle_dataset`` is ``owner/name`` (the latest version) or ``owner/name/versions/N``.
Each version is downloaded once into a downloads folder and reused from there: a version's
files never change on Kaggle, so an unchanged spec is never downloaded again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from segpipe.data.archive import safe_extract
from segpipe.errors import SegpipeError

logger = logging.getLogger(__name__)

CREDENTIALS_HELP = (
    "Kaggle credentials not found: put your API token in ~/.kaggle/kaggle.json (chmod 600), "
    "or set KAGGLE_USERNAME and KAGGLE_KEY, or set KAGGLE_API_TOKEN; "
    "see https://www.kaggle.com/docs/api"
)
_SLUG = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_DATASET_RE = re.compile(rf"^({_SLUG})/({_SLUG})(?:/versions/([1-9][0-9]{{0,8}}))?$")
EXAMPLE = "tapakah68/supervisely-filtered-segmentation-person-dataset"


@dataclasses.dataclass(frozen=True)
class KaggleSpec:
    """A Kaggle dataset, ``owner/name``, and its version (None: the latest)."""

    owner: str
    name: str
    version: int | None = None

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}"

    def __str__(self) -> str:
        return self.ref if self.version is None else f"{self.ref}/versions/{self.version}"

    def client_ref(self) -> str:
        """The spelling the ``kaggle`` client takes: ``owner/name`` or ``owner/name/N``."""
        return self.ref if self.version is None else f"{self.ref}/{self.version}"


def parse_dataset(spec: object) -> KaggleSpec:
    """``data.kaggle_dataset`` as a :class:`KaggleSpec`.

    Raises:
        SegpipeError: not ``owner/name`` or ``owner/name/versions/N``.
    """
    match = _DATASET_RE.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise SegpipeError(
            f"Kaggle dataset {spec!r}: expected 'owner/name' or 'owner/name/versions/N' "
            f"(N >= 1), e.g. {EXAMPLE} or {EXAMPLE}/versions/1"
        )
    owner, name, version = match.groups()
    return KaggleSpec(owner, name, int(version) if version else None)


def _credential_source() -> str | None:
    """Name where Kaggle credentials would come from (never their value), or None."""
    env = os.environ
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    home_kaggle = Path.home() / ".kaggle"
    xdg = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    config_dirs = [Path(env["KAGGLE_CONFIG_DIR"])] if env.get("KAGGLE_CONFIG_DIR") else []
    config_dirs += [home_kaggle, xdg]
    candidates = [d / "kaggle.json" for d in config_dirs] + [
        home_kaggle / name for name in ("access_token", "access_token.txt", "credentials.json")
    ]
    return next((str(p) for p in candidates if p.is_file()), None)


def _one_line(text: str) -> str:
    """Collapse ``text`` to one line and blank out any Kaggle secret it may contain."""
    for var in ("KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return " ".join(text.split())


def _load_client(dataset: str) -> Any:
    """Import ``kaggle`` lazily (swallowing its import-time prints) and authenticate."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as e:
        raise SegpipeError(
            f"Kaggle dataset {dataset}: the 'kaggle' package is not installed (pip install kaggle)"
        ) from e
    except SystemExit as e:
        raise SegpipeError(CREDENTIALS_HELP) from e
    except Exception as e:
        raise _client_error(dataset, e) from e
    finally:
        if captured.getvalue().strip():
            logger.debug("kaggle client output: %s", _one_line(captured.getvalue()))
    return api


def _client_error(dataset: str, error: Exception) -> SegpipeError:
    """Turn a kaggle/requests exception into a one-line error naming the dataset."""
    import requests

    if isinstance(error, requests.HTTPError):
        code = error.response.status_code if error.response is not None else None
        if code == 401:
            why = "authentication failed (HTTP 401): check your Kaggle API credentials"
        elif code in (403, 404):
            why = (
                f"not found or not accessible (HTTP {code}): check the name, and accept the "
                "dataset's terms on kaggle.com if it has any"
            )
        else:
            why = f"Kaggle request failed (HTTP {code})"
    elif isinstance(error, (requests.ConnectionError, requests.Timeout)):
        why = f"cannot reach Kaggle ({type(error).__name__}): check your internet connection"
    else:
        why = f"Kaggle request failed ({type(error).__name__}: {error})"
    return SegpipeError(_one_line(f"Kaggle dataset {dataset}: {why}"))


def download_kaggle(dataset: str, dest: Path, api: Any = None) -> Path:
    """Download the Kaggle dataset ``owner/name`` (or ``owner/name/versions/N``) and extract
    it under ``dest``.

    The archive is downloaded into a temporary folder inside ``dest``, extracted with
    :func:`segpipe.data.archive.safe_extract`, and deleted. An existing ``dest/name`` folder
    is replaced only once the new download has been extracted.

    Args:
        dataset: Kaggle dataset reference, ``owner/name`` or ``owner/name/versions/N``.
        dest: Folder in which the dataset folder ``name`` is created.
        api: an authenticated client (by default, one is made here).

    Returns:
        The extraction root, ``dest/name``.

    Raises:
        SegpipeError: Bad dataset name, missing credentials, download or extraction failure.
    """
    spec = parse_dataset(dataset)
    api = api or authenticated_client(spec)
    dest = Path(dest)
    root = dest / spec.name
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".kaggle-download-", dir=dest))
    except OSError as e:
        raise SegpipeError(f"{dest}: cannot create the download folder ({e})") from e
    try:
        archive = _download_archive(api, spec, tmp)
        staging = tmp / "extracted"
        try:
            safe_extract(archive, staging)
        except SegpipeError as e:
            raise SegpipeError(f"Kaggle dataset {dataset}: {e}") from e
        archive.unlink()
        if root.exists():
            logger.info("Replacing existing %s", root)
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Kaggle dataset %s extracted into %s", spec, root)
    return root


def authenticated_client(spec: KaggleSpec) -> Any:
    """The ``kaggle`` client, once credentials are known to exist (checked first, before
    the noisy import)."""
    source = _credential_source()
    if source is None:
        raise SegpipeError(CREDENTIALS_HELP)
    logger.debug("Kaggle credentials from %s", source)
    return _load_client(str(spec))


def latest_version(api: Any, spec: KaggleSpec) -> int:
    """The current version number of ``spec``'s dataset on Kaggle."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            answer = api.dataset_status(spec.ref, format="json(current_version_number)")
        version = json.loads(answer)["current_version_number"]
    except Exception as e:
        logger.debug("kaggle version lookup error for %s", spec.ref, exc_info=True)
        raise _client_error(spec.ref, e) from e
    if not isinstance(version, int) or version < 1:
        raise SegpipeError(f"Kaggle dataset {spec.ref}: Kaggle names no version ({version!r})")
    return version


def _download_archive(api: Any, spec: KaggleSpec, folder: Path) -> Path:
    """Download ``spec``'s zip archive into ``folder`` with the Kaggle client ``api``,
    keeping the client's own printing out of the user's terminal (it goes to the debug log)."""
    dataset = str(spec)
    logger.info("Downloading Kaggle dataset %s", dataset)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            api.dataset_download_files(spec.client_ref(), path=str(folder), force=True, quiet=True)
    except Exception as e:
        logger.debug("kaggle download error for %s", dataset, exc_info=True)
        raise _client_error(dataset, e) from e
    finally:
        if captured.getvalue().strip():
            logger.debug("kaggle client output: %s", _one_line(captured.getvalue()))
    archives = sorted(folder.glob("*.zip"))
    if not archives:
        raise SegpipeError(f"Kaggle dataset {dataset}: the download produced no zip archive")
    return archives[0]


@dataclasses.dataclass(frozen=True)
class Fetched:
    """A Kaggle dataset version in the downloads folder.

    Args:
        root: its extracted files (read-only).
        spec: the dataset, with the version that ``root`` holds.
        downloaded: whether this call downloaded it (False: an earlier one did).
    """

    root: Path
    spec: KaggleSpec
    downloaded: bool


def fetch_kaggle(dataset: str, downloads: Path) -> Fetched:
    """The dataset ``owner/name[/versions/N]`` extracted in ``downloads``, downloaded only if
    that version is not there yet. A pinned version already downloaded needs neither network
    nor credentials; for ``owner/name``, Kaggle is asked for its latest version number.

    Raises:
        SegpipeError: a bad spec, missing credentials, an unreachable Kaggle (naming the
            versions downloaded before, to pin one), a failed download.
    """
    spec = parse_dataset(dataset)
    folder = Path(downloads) / spec.owner / spec.name / "versions"
    if spec.version is not None and _downloaded(folder / str(spec.version)):
        return Fetched(folder / str(spec.version), spec, downloaded=False)
    try:
        api = authenticated_client(spec)
        version = spec.version or latest_version(api, spec)
    except SegpipeError as e:
        raise SegpipeError(f"{e}{_offline_hint(spec, folder)}") from None
    pinned = dataclasses.replace(spec, version=version)
    target = folder / str(version)
    if _downloaded(target):
        return Fetched(target, pinned, downloaded=False)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{version}.") as tmp:
        root = download_kaggle(str(pinned), Path(tmp), api)
        _make_read_only(root)
        root.rename(target)  # complete, or not there at all
    return Fetched(target, pinned, downloaded=True)


def _downloaded(target: Path) -> bool:
    """Whether ``target`` holds a downloaded version. A download is renamed into place whole,
    so a version folder with no file in it is no download (made by hand, or emptied): it is
    removed, with a warning, and the version downloaded again."""
    if not target.is_dir():
        return False
    if any(p.is_file() for p in target.rglob("*")):
        return True
    logger.warning("%s: an empty version folder, not a download: downloading it again", target)
    shutil.rmtree(target)
    return False


def _offline_hint(spec: KaggleSpec, folder: Path) -> str:
    """For ``owner/name`` without Kaggle: the versions downloaded before, one to pin."""
    numbered = [p for p in folder.glob("[0-9]*") if p.name.isdigit()]
    versions = sorted(int(p.name) for p in numbered if _downloaded(p))
    if spec.version is not None or not versions:
        return ""
    listed = ("version " if len(versions) == 1 else "versions ") + ", ".join(map(str, versions))
    return (
        f"; downloaded before: {listed}: to use one without Kaggle, pin it, "
        f"e.g. data.kaggle_dataset: {spec.ref}/versions/{versions[-1]}"
    )


def _make_read_only(root: Path) -> None:
    """A downloaded version never changes: its files are made read-only, so the download
    stage links them into its output instead of copying (see data/download.py)."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
