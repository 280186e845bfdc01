"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The real MovieLens 100K files: $RECBANDITS_ML100K, else <repo root>/../shared/data/ml-100k.

    MovieLens may not be redistributed, so the files are never in the repository; tests needing them skip
    when they are absent.
    """
    configured = os.environ.get("RECBANDITS_ML100K")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "ml-100k"
    if not (path / "u.data").is_file():
        pytest.skip(f"real MovieLens 100K not found at {path} (set RECBANDITS_ML100K to its directory)")
    return path
