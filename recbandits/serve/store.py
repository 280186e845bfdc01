"""Policy snapshots on disk: the statistics of a policy version, one ``.npz`` per version.

``<state_dir>/snapshots/v000000042.npz`` holds the module state (``data_precision``, ``data_response``,
``response_square``, ``counts``, ``num_updates``) and ``meta`` (a JSON string: the version's row from the event
log). Files are written to a temporary name, fsynced, then renamed, so a snapshot is either whole or absent.
``initial.npz`` is the starting policy (checkpoint or cold start) written by the first start.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

SNAPSHOT_DIR = "snapshots"
INITIAL = "initial.npz"
_NAME = re.compile(r"^v(\d{9})\.npz$")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_npz_atomic(path: Path, state: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(
                handle, meta=np.array(json.dumps(meta)), **{key: np.asarray(value) for key, value in state.items()}
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
        return {key: data[key].copy() for key in data.files if key != "meta"}, meta


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, temporary = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


class SnapshotStore:
    """Snapshots of policy versions under ``<state_dir>/snapshots``."""

    def __init__(self, state_dir: Path, keep: int = 20):
        self.directory = Path(state_dir) / SNAPSHOT_DIR
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.keep = keep
        for stale in self.directory.glob("*.tmp"):
            stale.unlink(missing_ok=True)

    def path(self, version: int) -> Path:
        return self.directory / f"v{version:09d}.npz"

    @property
    def initial_path(self) -> Path:
        return self.directory / INITIAL

    def versions(self) -> list[int]:
        found = (_NAME.match(path.name) for path in self.directory.iterdir())
        return sorted(int(match.group(1)) for match in found if match)

    def has(self, version: int) -> bool:
        return self.path(version).is_file()

    def save(self, version: int, state: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
        path = self.path(version)
        write_npz_atomic(path, state, meta)
        return path

    def load(self, version: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return read_npz(self.path(version))

    def discard(self, version: int) -> None:
        self.path(version).unlink(missing_ok=True)

    def prune(self, protected: set[int]) -> list[int]:
        """Delete all but the newest ``keep`` snapshots and the ``protected`` ones; return what was deleted."""
        versions = self.versions()
        kept = set(versions[-self.keep:]) | protected
        removed = [version for version in versions if version not in kept]
        for version in removed:
            self.discard(version)
        return removed
