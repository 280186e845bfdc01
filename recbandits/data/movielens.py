"""Loading and validating the MovieLens releases published by GroupLens.

Three on-disk layouts are understood:

* ``ml-100k``: ``u.data`` (tab-separated), ``u.item``, ``u.genre``, ``u.user`` (pipe-separated, latin-1).
* ``ml-1m``: ``ratings.dat``, ``movies.dat`` and optionally ``users.dat`` (``::``-separated, latin-1).
  ml-10m uses the same layout without ``users.dat`` (and with half-star ratings).
* ``csv``: ``ratings.csv`` and ``movies.csv`` with headers (ml-latest-small, ml-20m, ml-25m, ml-32m).

Ratings go through pandas' C parser; when that parser rejects the file, or the parsed values fail a
check, a line-by-line pass finds the first offending line, so every error names the file and line
(``ratings_file``). The small files are parsed line by line (``text_format``'s helpers); this module holds
what each release's files contain and how they are loaded.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recbandits.data.ratings_file import RatingsLayout, read_ratings
from recbandits.data.text_format import (
    HALF_STARS,
    WHOLE_STARS,
    MovieLensFormatError,
    check_gender,
    check_unique,
    numbered_lines,
    parse_id,
    parse_int,
    read_text,
    require_file,
    split_fields,
)

__all__ = [
    "ML1M_OCCUPATIONS",
    "MovieLensData",
    "MovieLensFormatError",
    "detect_format",
    "load_movielens",
    "ratings_matrix",
]

# Occupation codes of ml-1m's users.dat, as listed in the ml-1m README.
ML1M_OCCUPATIONS: tuple[str, ...] = (
    "other or not specified",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)

NO_GENRE = "(no genres listed)"
MAX_MATRIX_CELLS = 200_000_000
CSV_RATINGS_HEADER = ["userId", "movieId", "rating", "timestamp"]
CSV_MOVIES_HEADER = ["movieId", "title", "genres"]

# The file that identifies each layout, in detection order.
_MARKER_FILES = {"ml-100k": "u.data", "ml-1m": "ratings.dat", "csv": "ratings.csv"}


@dataclass(frozen=True, eq=False)  # eq=False: DataFrames have no boolean equality, and identity is enough
class MovieLensData:
    """One loaded MovieLens release: ratings, movies with genre flags and (when present) users."""

    name: str
    path: Path
    ratings: pd.DataFrame
    items: pd.DataFrame
    genres: tuple[str, ...]
    users: pd.DataFrame | None = field(default=None)

    def genre_matrix(self) -> np.ndarray:
        """0/1 genre flags as float32, one row per row of ``items`` and one column per entry of ``genres``."""
        return self.items[list(self.genres)].to_numpy(dtype=np.float32)

    @property
    def num_users(self) -> int:
        """Distinct user ids that have at least one rating."""
        return int(self.ratings["user_id"].nunique())

    @property
    def num_items(self) -> int:
        """Distinct item ids that have at least one rating."""
        return int(self.ratings["item_id"].nunique())

    @property
    def num_ratings(self) -> int:
        return len(self.ratings)


# --------------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------------


def _release_dir(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"MovieLens data path {path} does not exist")
    if path.is_file():
        if path.name not in _MARKER_FILES.values():
            raise ValueError(
                f"{path} is not a MovieLens ratings file: pass the release directory, "
                f"or one of {', '.join(_MARKER_FILES.values())}"
            )
        return path.parent
    return path


def detect_format(path: str | Path) -> str:
    """Return ``"ml-100k"``, ``"ml-1m"`` or ``"csv"`` from the files in a release directory.

    ``path`` may also point at the ratings file itself (``u.data``, ``ratings.dat``, ``ratings.csv``).
    """
    directory = _release_dir(path)
    for name, marker in _MARKER_FILES.items():
        if (directory / marker).is_file():
            return name
    looked_for = ", ".join(_MARKER_FILES.values())
    message = f"{directory} does not look like a MovieLens release: none of {looked_for} is in it"
    # A common slip is passing the folder the zip was extracted into rather than the release itself.
    nested = sorted(
        child.name
        for child in directory.iterdir()
        if child.is_dir() and any((child / m).is_file() for m in _MARKER_FILES.values())
    )
    if nested:
        message += f" (did you mean {directory / nested[0]}?)"
    raise ValueError(message)


def _items_frame(
    ids: list[int], titles: list[str], flags: np.ndarray, genres: tuple[str, ...]
) -> pd.DataFrame:
    items = pd.DataFrame({"item_id": np.asarray(ids, dtype=np.int64), "title": pd.Series(titles, dtype=str)})
    genre_columns = pd.DataFrame(flags.astype(np.int8), columns=list(genres))
    return pd.concat([items, genre_columns], axis=1)


def _items_from_genre_strings(
    ids: list[int], titles: list[str], genre_strings: list[str]
) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Items table for the ml-1m and csv layouts, whose genres are pipe-separated names."""
    dummies = pd.Series(genre_strings, dtype=str).str.get_dummies(sep="|")
    genres = tuple(sorted(name for name in dummies.columns if name != NO_GENRE))
    flags = dummies.reindex(columns=list(genres), fill_value=0).to_numpy()
    return _items_frame(ids, titles, flags.reshape(len(ids), len(genres)), genres), genres


def _users_frame(
    ids: list[int], ages: list[int], genders: list[str], occupations: list[str], zips: list[str]
):
    return pd.DataFrame(
        {
            "user_id": np.asarray(ids, dtype=np.int64),
            "age": np.asarray(ages, dtype=np.int64),
            "gender": pd.Series(genders, dtype=str),
            "occupation": pd.Series(occupations, dtype=str),
            "zip_code": pd.Series(zips, dtype=str),
        }
    )


# ml-100k ---------------------------------------------------------------------------------------------


def _read_100k_genres(path: Path) -> tuple[str, ...]:
    names: list[str] = []
    for line_no, line in numbered_lines(path):
        name, index = split_fields(path.name, line_no, line, "|", 2, "'|'-separated")
        position = parse_int(path.name, line_no, index, "genre index")
        if position != len(names):
            raise MovieLensFormatError(
                path.name, f"genre index {position} is out of order (expected {len(names)})", line_no
            )
        names.append(name)
    if not names:
        raise MovieLensFormatError(path.name, "the genre list is empty")
    return tuple(names)


def _read_100k_items(path: Path, genres: tuple[str, ...]) -> pd.DataFrame:
    expected = 5 + len(genres)
    ids: list[int] = []
    titles: list[str] = []
    flag_rows: list[list[str]] = []
    line_numbers: list[int] = []
    for line_no, line in numbered_lines(path):
        fields = line.split("|")
        if len(fields) != expected:
            raise MovieLensFormatError(
                path.name,
                f"expected {expected} '|'-separated fields (5 + {len(genres)} genre flags), found {len(fields)}",
                line_no,
            )
        ids.append(parse_id(path.name, line_no, fields[0], "movie id"))
        titles.append(fields[1])
        flags = fields[5:]
        for genre, flag in zip(genres, flags, strict=True):
            if flag not in ("0", "1"):
                raise MovieLensFormatError(
                    path.name, f"genre flag for {genre!r} is {flag!r}, not 0 or 1", line_no
                )
        flag_rows.append(flags)
        line_numbers.append(line_no)
    if not ids:
        raise MovieLensFormatError(path.name, "the movie file is empty")
    check_unique(path.name, ids, line_numbers, "movie id")
    flags_array = np.asarray(flag_rows, dtype=np.int8).reshape(len(ids), len(genres))
    return _items_frame(ids, titles, flags_array, genres)


def _read_100k_users(path: Path, occupations: set[str] | None) -> pd.DataFrame:
    columns: tuple[list, ...] = ([], [], [], [], [])
    line_numbers: list[int] = []
    for line_no, line in numbered_lines(path):
        user_id, age, gender, occupation, zip_code = split_fields(path.name, line_no, line, "|", 5, "'|'-separated")
        columns[0].append(parse_id(path.name, line_no, user_id, "user id"))
        columns[1].append(parse_int(path.name, line_no, age, "age"))
        columns[2].append(check_gender(path.name, line_no, gender))
        if occupations is not None and occupation not in occupations:
            raise MovieLensFormatError(
                path.name, f"occupation {occupation!r} is not listed in u.occupation", line_no
            )
        columns[3].append(occupation)
        columns[4].append(zip_code)
        line_numbers.append(line_no)
    check_unique(path.name, columns[0], line_numbers, "user id")
    return _users_frame(*columns)


def _read_occupations(path: Path) -> set[str] | None:
    if not path.is_file():
        return None
    return {line.strip() for _, line in numbered_lines(path) if line.strip()}


# ml-1m -----------------------------------------------------------------------------------------------


def _read_1m_items(path: Path) -> tuple[pd.DataFrame, tuple[str, ...]]:
    ids: list[int] = []
    titles: list[str] = []
    genre_strings: list[str] = []
    line_numbers: list[int] = []
    for line_no, line in numbered_lines(path):
        movie_id, title, genres = split_fields(path.name, line_no, line, "::", 3, "'::'-separated")
        ids.append(parse_id(path.name, line_no, movie_id, "movie id"))
        titles.append(title)
        genre_strings.append(genres)
        line_numbers.append(line_no)
    if not ids:
        raise MovieLensFormatError(path.name, "the movie file is empty")
    check_unique(path.name, ids, line_numbers, "movie id")
    return _items_from_genre_strings(ids, titles, genre_strings)


def _read_1m_users(path: Path) -> pd.DataFrame:
    columns: tuple[list, ...] = ([], [], [], [], [])
    line_numbers: list[int] = []
    for line_no, line in numbered_lines(path):
        user_id, gender, age, occupation, zip_code = split_fields(
            path.name, line_no, line, "::", 5, "'::'-separated"
        )
        columns[0].append(parse_id(path.name, line_no, user_id, "user id"))
        columns[1].append(parse_int(path.name, line_no, age, "age"))
        columns[2].append(check_gender(path.name, line_no, gender))
        code = parse_int(path.name, line_no, occupation, "occupation code")
        if not 0 <= code < len(ML1M_OCCUPATIONS):
            raise MovieLensFormatError(
                path.name, f"occupation code {code} is not one of 0-{len(ML1M_OCCUPATIONS) - 1}", line_no
            )
        columns[3].append(ML1M_OCCUPATIONS[code])
        columns[4].append(zip_code)
        line_numbers.append(line_no)
    check_unique(path.name, columns[0], line_numbers, "user id")
    return _users_frame(*columns)


# csv -------------------------------------------------------------------------------------------------


def _read_csv_items(path: Path) -> tuple[pd.DataFrame, tuple[str, ...]]:
    text = read_text(path, "utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""))
    ids: list[int] = []
    titles: list[str] = []
    genre_strings: list[str] = []
    line_numbers: list[int] = []
    header_seen = False
    while True:
        line_no = reader.line_num + 1  # first physical line of the next record
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise MovieLensFormatError(path.name, f"malformed CSV ({exc})", line_no) from None
        if not row:
            continue
        if not header_seen:
            if row != CSV_MOVIES_HEADER:
                raise MovieLensFormatError(
                    path.name,
                    f"expected header {','.join(CSV_MOVIES_HEADER)!r}, found {','.join(row)!r}",
                    line_no,
                )
            header_seen = True
            continue
        if len(row) != 3:
            raise MovieLensFormatError(
                path.name, f"expected 3 comma-separated fields, found {len(row)}", line_no
            )
        ids.append(parse_id(path.name, line_no, row[0], "movie id"))
        titles.append(row[1])
        genre_strings.append(row[2])
        line_numbers.append(line_no)
    if not ids:
        raise MovieLensFormatError(path.name, "the movie file is empty")
    check_unique(path.name, ids, line_numbers, "movie id")
    return _items_from_genre_strings(ids, titles, genre_strings)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _load_100k(directory: Path) -> MovieLensData:
    files = "u.data, u.item, u.genre and u.user"
    data_path = require_file(directory, "u.data", "ml-100k", files)
    item_path = require_file(directory, "u.item", "ml-100k", files)
    genre_path = require_file(directory, "u.genre", "ml-100k", files)
    genres = _read_100k_genres(genre_path)
    items = _read_100k_items(item_path, genres)
    user_path = directory / "u.user"
    users = (
        _read_100k_users(user_path, _read_occupations(directory / "u.occupation"))
        if user_path.is_file()
        else None
    )
    layout = RatingsLayout("u.data", "\t", "tab-separated", None, WHOLE_STARS)
    ratings = read_ratings(
        data_path,
        layout,
        "ml-100k",
        "u.item",
        items["item_id"].to_numpy(),
        "u.user",
        None if users is None else users["user_id"].to_numpy(),
    )
    return MovieLensData("ml-100k", directory, ratings, items, genres, users)


def _load_1m(directory: Path) -> MovieLensData:
    files = "ratings.dat, movies.dat and (ml-1m only) users.dat"
    ratings_path = require_file(directory, "ratings.dat", "ml-1m", files)
    items, genres = _read_1m_items(require_file(directory, "movies.dat", "ml-1m", files))
    user_path = directory / "users.dat"
    users = _read_1m_users(user_path) if user_path.is_file() else None
    # ml-1m (with users.dat) uses whole stars; ml-10m (same layout, no users.dat) uses half stars.
    scale = WHOLE_STARS if users is not None else HALF_STARS
    release = "ml-1m" if users is not None else "ml-10m style"
    layout = RatingsLayout("ratings.dat", "::", "'::'-separated", None, scale)
    ratings = read_ratings(
        ratings_path,
        layout,
        release,
        "movies.dat",
        items["item_id"].to_numpy(),
        "users.dat",
        None if users is None else users["user_id"].to_numpy(),
    )
    return MovieLensData("ml-1m", directory, ratings, items, genres, users)


def _load_csv(directory: Path) -> MovieLensData:
    files = "ratings.csv and movies.csv"
    ratings_path = require_file(directory, "ratings.csv", "csv", files)
    items, genres = _read_csv_items(require_file(directory, "movies.csv", "csv", files))
    layout = RatingsLayout("ratings.csv", ",", "comma-separated", CSV_RATINGS_HEADER, HALF_STARS)
    ratings = read_ratings(ratings_path, layout, "csv", "movies.csv", items["item_id"].to_numpy())
    return MovieLensData("csv", directory, ratings, items, genres, None)


_LOADERS = {"ml-100k": _load_100k, "ml-1m": _load_1m, "csv": _load_csv}


def load_movielens(path: str | Path) -> MovieLensData:
    """Load and validate a MovieLens release directory (or its ratings file)."""
    directory = _release_dir(path)
    return _LOADERS[detect_format(directory)](directory)


def ratings_matrix(data: MovieLensData, *, index_by: str = "id") -> np.ndarray:
    """Dense float64 rating matrix, 0 where unrated.

    ``index_by="id"``: shape ``[max user id, max item id]`` with the rating of user ``u`` for item ``i`` at
    ``[u - 1, i - 1]``, the layout of TF-Agents' ``dataset_utilities.load_movielens_data``.
    ``index_by="position"``: shape ``[num_users, num_items]``, rows and columns in ascending id order of
    the users and items that have ratings (no empty rows or columns for unused ids).
    """
    users = data.ratings["user_id"].to_numpy()
    items = data.ratings["item_id"].to_numpy()
    if index_by == "id":
        rows, cols = users - 1, items - 1
        shape = (int(users.max()), int(items.max())) if len(users) else (0, 0)
    elif index_by == "position":
        user_ids, rows = np.unique(users, return_inverse=True)
        item_ids, cols = np.unique(items, return_inverse=True)
        shape = (len(user_ids), len(item_ids))
    else:
        raise ValueError(f"index_by must be 'id' or 'position', not {index_by!r}")
    cells = shape[0] * shape[1]
    if cells > MAX_MATRIX_CELLS:
        raise ValueError(
            f"a dense {shape[0]} x {shape[1]} rating matrix ({cells:,} cells) is too large to build "
            f"(limit {MAX_MATRIX_CELLS:,}); use a smaller release such as ml-100k, ml-1m or ml-latest-small"
        )
    matrix = np.zeros(shape, dtype=np.float64)
    matrix[rows, cols] = data.ratings["rating"].to_numpy(np.float64)
    return matrix
