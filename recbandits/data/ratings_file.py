"""A MovieLens ratings file: pandas' C parser, and when it fails or a value is wrong, a line-by-line pass that
names the first bad line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd

from recbandits.data.text_format import (
    FLOAT_RE,
    MovieLensFormatError,
    RatingScale,
    parse_id,
    parse_int,
    split_fields,
)

RATING_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]


@dataclass(frozen=True)
class RatingsLayout:
    """How one release lays out its ratings file."""

    file: str
    separator: str  # "\t", "::" or ","
    separator_name: str
    header: list[str] | None
    scale: RatingScale


def _read_ratings_fast(path: Path, layout: RatingsLayout) -> pd.DataFrame | None:
    """Parse with pandas' C parser; ``None`` when the file is not in the expected shape."""
    try:
        if layout.separator == "::":
            # The C parser takes single-character separators only, so split on ":" and expect the
            # empty fields between the doubled colons: 1::2::5::9 -> 1, '', 2, '', 5, '', 9.
            raw = pd.read_csv(path, sep=":", header=None, encoding="latin-1", engine="c")
            if raw.shape[1] != 7 or raw[[1, 3, 5]].notna().to_numpy().any():
                return None
            frame = raw[[0, 2, 4, 6]]
        else:
            header = 0 if layout.header else None
            frame = pd.read_csv(path, sep=layout.separator, header=header, encoding="latin-1", engine="c")
            if layout.header and list(frame.columns) != layout.header:
                return None
            if frame.shape[1] != 4:
                return None
    except (ValueError, pd.errors.ParserError, OSError):  # EmptyDataError is a ValueError
        return None
    frame.columns = RATING_COLUMNS
    dtypes = frame.dtypes
    integer_columns = ["user_id", "item_id", "timestamp"]
    if not all(pd.api.types.is_integer_dtype(dtypes[c]) for c in integer_columns):
        return None
    if not pd.api.types.is_numeric_dtype(dtypes["rating"]) or frame["rating"].isna().any():
        return None
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].to_numpy(np.int64),
            "item_id": frame["item_id"].to_numpy(np.int64),
            "rating": frame["rating"].to_numpy(np.float64),
            "timestamp": frame["timestamp"].to_numpy(np.int64),
        }
    )


def _values_ok(
    ratings: pd.DataFrame, scale: RatingScale, item_ids: np.ndarray, user_ids: np.ndarray | None
) -> bool:
    if len(ratings) == 0:
        return False
    users = ratings["user_id"].to_numpy()
    items = ratings["item_id"].to_numpy()
    ok = (users >= 1).all() and (items >= 1).all() and scale.valid(ratings["rating"].to_numpy()).all()
    ok = ok and np.isin(items, item_ids).all()
    if user_ids is not None:
        ok = ok and np.isin(users, user_ids).all()
    return bool(ok)


def _diagnose_ratings(
    path: Path,
    layout: RatingsLayout,
    release: str,
    items_file: str,
    item_ids: np.ndarray,
    users_file: str | None,
    user_ids: np.ndarray | None,
) -> NoReturn:
    """Find the first bad line of a ratings file and raise an error naming it."""
    file = path.name
    known_items = set(item_ids.tolist())
    known_users = set(user_ids.tolist()) if user_ids is not None else None
    rows = 0
    with open(path, encoding="latin-1", newline="") as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            if layout.header and line_no == 1:
                if line.split(",") != layout.header:
                    raise MovieLensFormatError(
                        file, f"expected header {','.join(layout.header)!r}, found {line!r}", line_no
                    )
                continue
            user, item, rating, timestamp = split_fields(
                file, line_no, line, layout.separator, 4, layout.separator_name
            )
            user_id = parse_id(file, line_no, user, "user id")
            item_id = parse_id(file, line_no, item, "movie id")
            if not FLOAT_RE.fullmatch(rating):
                raise MovieLensFormatError(file, f"rating {rating!r} is not a number", line_no)
            parse_int(file, line_no, timestamp, "timestamp")
            if not layout.scale.valid(np.array([float(rating)])).all():
                raise MovieLensFormatError(
                    file,
                    f"rating {rating.strip()} is outside the {release} scale ({layout.scale.describe()})",
                    line_no,
                )
            if item_id not in known_items:
                raise MovieLensFormatError(
                    file, f"unknown ids: movie id {item_id} is not in {items_file}", line_no
                )
            if known_users is not None and user_id not in known_users:
                raise MovieLensFormatError(
                    file, f"unknown ids: user id {user_id} is not in {users_file}", line_no
                )
            rows += 1
    if rows == 0:
        raise MovieLensFormatError(file, "the ratings file is empty (no ratings)")
    # Every line passed the checks, yet pandas could not read the file: report that rather than guess.
    raise MovieLensFormatError(file, "could not be parsed as a ratings table, although each line looks valid")


def read_ratings(
    path: Path,
    layout: RatingsLayout,
    release: str,
    items_file: str,
    item_ids: np.ndarray,
    users_file: str | None = None,
    user_ids: np.ndarray | None = None,
) -> pd.DataFrame:
    ratings = _read_ratings_fast(path, layout)
    if ratings is None or not _values_ok(ratings, layout.scale, item_ids, user_ids):
        _diagnose_ratings(path, layout, release, items_file, item_ids, users_file, user_ids)
    return ratings
