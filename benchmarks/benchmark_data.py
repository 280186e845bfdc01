"""Where the benchmarks find real data: ``$RECBANDITS_ML100K``, else ``../shared/data/ml-100k`` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ml100k_dir() -> Path:
    """The ml-100k directory the benchmarks default to (it may not exist)."""
    return Path(os.environ.get("RECBANDITS_ML100K", REPO.parent / "shared" / "data" / "ml-100k"))


def ml100k_or_none() -> Path | None:
    """``ml100k_dir()`` when it holds ``u.data``, else None (the embedded synthetic data)."""
    path = ml100k_dir()
    return path if (path / "u.data").is_file() else None
