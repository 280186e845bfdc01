"""MovieLens data: loading and validating releases, fetching them, and a synthetic stand-in.

``resolve_data_dir`` picks the dataset every command uses: an explicit path, else
``$RECBANDITS_DATA_DIR``, else the synthetic ml-100k-format dataset generated into the cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from recbandits.data.fetch import RELEASES, FetchError, Release, default_cache_dir, fetch
from recbandits.data.movielens import (
    MovieLensData,
    MovieLensFormatError,
    detect_format,
    load_movielens,
    ratings_matrix,
)
from recbandits.data.summary import format_summary, summarize
from recbandits.data.synthetic import default_data_dir, write_synthetic_movielens

__all__ = [
    "RELEASES",
    "FetchError",
    "MovieLensData",
    "MovieLensFormatError",
    "Release",
    "default_cache_dir",
    "default_data_dir",
    "detect_format",
    "fetch",
    "format_summary",
    "load_movielens",
    "ratings_matrix",
    "resolve_data_dir",
    "summarize",
    "write_synthetic_movielens",
]

DATA_DIR_ENV = "RECBANDITS_DATA_DIR"


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The dataset to use: ``data_dir`` if given, else ``$RECBANDITS_DATA_DIR``, else the synthetic default."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise ValueError(f"data directory {path} does not exist")
        return path
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not path.exists():
            raise ValueError(
                f"{DATA_DIR_ENV}={configured} does not exist; unset it or point it at a MovieLens release"
            )
        return path
    return default_data_dir()
