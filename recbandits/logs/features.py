"""Feature tables: each id's feature vector, as a private .npz (``ids``, ``features`` and optional ``names``).

``recbandits logs from-ratings`` writes the user and movie tables its rows were built from next to the
dataset; ``recbandits serve --user-table`` reads a user table to answer ``user_id`` requests.

    >>> import tempfile, pathlib
    >>> path = write_feature_table(pathlib.Path(tempfile.mkdtemp()) / "users.npz", [7, "u8"], [[0.5], [1.0]])
    >>> ids, features, names = read_feature_table(path)
    >>> ids.tolist(), features[:, 0].tolist(), names
    (['7', 'u8'], [0.5, 1.0], None)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_feature_table(path: str | Path, ids, features, names: Sequence[str] | None = None) -> Path:
    """Write ids (as strings) and their [len(ids), d] float64 features to ``path``, private (0600)."""
    path = Path(path)
    arrays = {"ids": np.asarray([str(item) for item in ids]), "features": np.asarray(features, dtype=np.float64)}
    if names is not None:
        arrays["names"] = np.asarray(list(names), dtype=str)
    with open(path, "wb") as handle:  # np.savez on a path would append .npz to a name without it
        np.savez(handle, **arrays)
    os.chmod(path, 0o600)
    return path


def read_feature_table(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """(ids, features, names or None) of a table ``write_feature_table`` wrote."""
    with np.load(path, allow_pickle=False) as data:
        names = data["names"].tolist() if "names" in data.files else None
        return data["ids"].astype(str), np.asarray(data["features"], dtype=np.float64), names
