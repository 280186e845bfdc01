"""Downloading MovieLens releases from GroupLens into a local cache, with checksum verification.

A release is only ever visible in the cache once complete: the zip is streamed to ``<name>.zip.part``,
verified, extracted into a temporary folder beside the cache entry, marked, and then renamed into place.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RELEASES", "FetchError", "Release", "default_cache_dir", "fetch"]

BASE_URL = "https://files.grouplens.org/datasets/movielens"
MARKER_FILE = ".recbandits-fetched.json"
RATINGS_FILES = ("u.data", "ratings.dat", "ratings.csv")
CHUNK_BYTES = 1 << 20


class FetchError(RuntimeError):
    """A release could not be downloaded, verified or extracted."""


@dataclass(frozen=True)
class Release:
    """Where a release is published and how to check the download.

    ``sha256`` is preferred; when it is unknown, ``md5_url`` names the small file holding the MD5 digest
    GroupLens publishes next to the zip.
    """

    name: str
    url: str
    size: int | None = None
    sha256: str | None = None
    md5_url: str | None = None


def _release(name: str, size: int | None, sha256: str | None) -> Release:
    url = f"{BASE_URL}/{name}.zip"
    return Release(name, url, size, sha256, None if sha256 else f"{url}.md5")


# SHA-256 digests and sizes as recorded in TensorFlow Datasets' checksum file; GroupLens publishes only
# MD5 digests, which is what ml-32m (newer than that file) is checked against.
RELEASES: dict[str, Release] = {
    release.name: release
    for release in (
        _release("ml-100k", 4924029, "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"),
        _release("ml-1m", 5917549, "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
        _release("ml-20m", 198702078, "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3"),
        _release("ml-25m", 261978986, "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa"),
        _release("ml-32m", None, None),
        _release(
            "ml-latest-small", 978202, "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"
        ),
    )
}


def default_cache_dir() -> Path:
    """``$RECBANDITS_CACHE`` when set, else ``~/.cache/recbandits``."""
    configured = os.environ.get("RECBANDITS_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "recbandits"


def _offline_error(release: Release, url: str, reason: object) -> FetchError:
    return FetchError(
        f"could not download {url}: {reason}. The machine appears to be offline, or the download failed. "
        f"To use a local copy instead: download {release.url} elsewhere, unzip it and pass "
        f"--data-dir /path/to/{release.name} (or set RECBANDITS_DATA_DIR=/path/to/{release.name})."
    )


def _open(release: Release, url: str, timeout: float):
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise _offline_error(release, url, f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _offline_error(release, url, exc.reason) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts, resets, bad URLs
        raise _offline_error(release, url, exc) from None


def _published_md5(release: Release, timeout: float) -> str:
    assert release.md5_url is not None
    with _open(release, release.md5_url, timeout) as response:
        try:
            text = response.read(4096).decode("ascii", errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            raise _offline_error(release, release.md5_url, exc) from None
    # GroupLens writes "MD5 (ml-32m.zip) = <hex>"; md5sum writes "<hex>  ml-32m.zip".
    match = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if not match:
        raise FetchError(f"{release.md5_url} does not contain an MD5 digest (got {text.strip()[:80]!r})")
    return match.group(0).lower()


def _download(
    release: Release, part: Path, timeout: float, progress: Callable[[int, int | None], None] | None
) -> tuple[str, str, int]:
    """Stream the zip to ``part``; return its SHA-256, MD5 and size."""
    sha256, md5, done = hashlib.sha256(), hashlib.md5(), 0
    with _open(release, release.url, timeout) as response:
        length = response.headers.get("Content-Length") if response.headers else None
        total = int(length) if length and length.isdigit() else release.size
        try:
            with open(part, "wb") as out:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    sha256.update(chunk)
                    md5.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except (OSError, http.client.HTTPException) as exc:  # e.g. a connection dropped mid-download
            part.unlink(missing_ok=True)
            raise _offline_error(release, release.url, exc) from None
    return sha256.hexdigest(), md5.hexdigest(), done


def _find_release_dir(root: Path) -> Path | None:
    """The folder under ``root`` (root itself included) that holds a ratings file, shallowest first."""
    candidates = [p.parent for name in RATINGS_FILES for p in root.rglob(name)]
    return min(candidates, key=lambda p: (len(p.parts), str(p))) if candidates else None


def _marker(target: Path) -> dict | None:
    try:
        marker = json.loads((target / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _cached(target: Path, release: Release) -> bool:
    marker = _marker(target)
    if marker is None or marker.get("url") != release.url:
        return False
    # A copy verified against another expected digest is another release: fetch again.
    return release.sha256 is None or marker.get("sha256") == release.sha256


def fetch(
    name: str,
    cache_dir: str | Path | None = None,
    *,
    timeout: float = 60,
    release: Release | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download, verify and extract a release; return the directory holding its ratings file.

    A release already in the cache is returned without touching the network. ``release`` overrides the
    entry of ``RELEASES`` (another URL or checksum, e.g. a mirror or a local ``file://`` zip);
    ``progress(bytes_done, bytes_total_or_None)`` is called while downloading.
    """
    if release is None:
        if name not in RELEASES:
            raise FetchError(f"unknown MovieLens release {name!r}; known releases: {', '.join(RELEASES)}")
        release = RELEASES[name]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / release.name
    if _cached(target, release):
        return target
    if target.exists() and _marker(target) is None:
        # Never delete a folder recbandits did not create (it may be the user's own copy of the data).
        raise FetchError(
            f"{target} already exists but was not downloaded by recbandits; remove it to fetch again, "
            f"or use it as it is with --data-dir {target}"
        )

    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create the cache directory {cache}: {exc}") from None
    expected_md5 = _published_md5(release, timeout) if release.sha256 is None and release.md5_url else None
    part = cache / f"{release.name}.zip.part"
    sha256, md5, size = _download(release, part, timeout, progress)

    if release.sha256 is not None and sha256 != release.sha256.lower():
        part.unlink(missing_ok=True)
        raise FetchError(
            f"checksum mismatch for {release.url}: expected SHA-256 {release.sha256}, got {sha256} "
            f"({size} bytes); the corrupt download was removed, try again"
        )
    if expected_md5 is not None and md5 != expected_md5:
        part.unlink(missing_ok=True)
        raise FetchError(
            f"checksum mismatch for {release.url}: expected MD5 {expected_md5} (from {release.md5_url}), "
            f"got {md5} ({size} bytes); the corrupt download was removed, try again"
        )
    archive = cache / f"{release.name}.zip"
    os.replace(part, archive)

    staging = Path(tempfile.mkdtemp(prefix=f".{release.name}.extract-", dir=cache))
    try:
        try:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(staging)  # zipfile strips absolute paths and ".." from member names
        except (zipfile.BadZipFile, OSError) as exc:
            raise FetchError(f"cannot extract {archive}: {exc}") from None
        extracted = _find_release_dir(staging)
        if extracted is None:
            raise FetchError(f"{release.url} holds no ratings file ({', '.join(RATINGS_FILES)})")
        (extracted / MARKER_FILE).write_text(
            json.dumps({"name": release.name, "url": release.url, "sha256": release.sha256, "md5": md5})
        )
        if target.exists():  # an outdated copy fetched earlier: replaced by the verified one
            shutil.rmtree(target)
        try:
            os.replace(extracted, target)
        except OSError as exc:
            if not _cached(target, release):  # unless another process just finished the same fetch
                raise FetchError(f"cannot move the extracted release into {target}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink(missing_ok=True)
    return target
