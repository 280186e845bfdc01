"""Loading and validating the MovieLens releases published by GroupLens.

Three on-disk layouts are understood:

* ``ml-100k``: ``u.data`` (tab-separated), ``u.item``, ``u.genre``, ``u.user`` (pipe-separated, latin-1).
* ``ml-1m``: ``ratings.dat``, ``movies.dat`` and optionally ``users.dat`` (``::``-separated, latin-1).
  ml-10m uses the same layout without ``users.dat`` (and with half-star ratings).
* ``csv``: ``ratings.csv`` and ``movies.csv`` with headers (ml-latest-small, ml-20m, ml-25m, ml-32m).

Ratings go through pandas' C parser; when that parser rejects the file, or the parsed values fail a
check, a line-by-line pass finds the first offending line, so every error names the file and line.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd

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
RATING_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
CSV_RATINGS_HEADER = ["userId", "movieId", "rating", "timestamp"]
CSV_MOVIES_HEADER = ["movieId", "title", "genres"]

# Strict number syntax: Python's int()/float() also accept "1_000", "nan" and "inf", pandas does not.
_INT_RE = re.compile(r"\s*[+-]?\d+\s*")
_FLOAT_RE = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")

# The file that identifies each layout, in detection order.
_MARKER_FILES = {"ml-100k": "u.data", "ml-1m": "ratings.dat", "csv": "ratings.csv"}


class MovieLensFormatError(ValueError):
    """A MovieLens file is missing or malformed; the message names the file and, when known, the line."""

    def __init__(self, file: str, message: str, line: int | None = None):
        self.file = file
        self.line = line
        self.reason = message
        where = f"{file} line {line}" if line is not None else file
        super().__init__(f"{where}: {message}")


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


@dataclass(frozen=True)
class _Scale:
    """The rating values a release allows."""

    low: float
    high: float
    step: float  # 1.0 for whole stars, 0.5 for half stars

    def describe(self) -> str:
        if self.step == 1.0:
            return f"whole numbers {self.low:g}-{self.high:g}"
        return f"{self.low:g}-{self.high:g} in steps of {self.step:g}"

    def valid(self, ratings: np.ndarray) -> np.ndarray:
        steps = ratings / self.step
        return (ratings >= self.low) & (ratings <= self.high) & (steps == np.round(steps))


WHOLE_STARS = _Scale(1.0, 5.0, 1.0)
HALF_STARS = _Scale(0.5, 5.0, 0.5)


@dataclass(frozen=True)
class _RatingsLayout:
    """How one release lays out its ratings file."""

    file: str
    separator: str  # "\t", "::" or ","
    separator_name: str
    header: list[str] | None
    scale: _Scale


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


# --------------------------------------------------------------------------------------------------
# Small text files: parsed in Python, which gives exact line numbers for free
# --------------------------------------------------------------------------------------------------


def _require(directory: Path, file: str, release: str, files: str) -> Path:
    path = directory / file
    if not path.is_file():
        raise MovieLensFormatError(
            file, f"required file is missing from {directory} ({release} releases contain {files})"
        )
    return path


def _read_text(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MovieLensFormatError(path.name, f"text is not valid {encoding}", line) from None


def _lines(path: Path, encoding: str = "latin-1") -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, line)`` for the non-empty lines of a file."""
    # split("\n") rather than splitlines(): latin-1 byte 0x85 decodes to NEL, which splitlines() breaks on.
    for number, line in enumerate(_read_text(path, encoding).split("\n"), start=1):
        line = line.rstrip("\r")
        if line:
            yield number, line


def _split(file: str, line_no: int, line: str, separator: str, expected: int, what: str) -> list[str]:
    fields = line.split(separator)
    if len(fields) != expected:
        raise MovieLensFormatError(file, f"expected {expected} {what} fields, found {len(fields)}", line_no)
    return fields


def _parse_int(file: str, line_no: int, value: str, what: str) -> int:
    if not _INT_RE.fullmatch(value):
        raise MovieLensFormatError(file, f"{what} {value!r} is not an integer", line_no)
    return int(value)


def _parse_id(file: str, line_no: int, value: str, what: str) -> int:
    number = _parse_int(file, line_no, value, what)
    if number < 1:
        raise MovieLensFormatError(file, f"{what} {number} is not a positive integer", line_no)
    return number


def _check_unique(file: str, ids: list[int], line_numbers: list[int], what: str) -> None:
    seen: dict[int, int] = {}
    for item_id, line_no in zip(ids, line_numbers, strict=True):
        if item_id in seen:
            raise MovieLensFormatError(
                file, f"duplicate {what} {item_id} (first defined on line {seen[item_id]})", line_no
            )
        seen[item_id] = line_no


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


def _check_gender(file: str, line_no: int, gender: str) -> str:
    if gender not in ("M", "F"):
        raise MovieLensFormatError(file, f"gender {gender!r} is not M or F", line_no)
    return gender


# ml-100k ---------------------------------------------------------------------------------------------


def _read_100k_genres(path: Path) -> tuple[str, ...]:
    names: list[str] = []
    for line_no, line in _lines(path):
        name, index = _split(path.name, line_no, line, "|", 2, "'|'-separated")
        position = _parse_int(path.name, line_no, index, "genre index")
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
    for line_no, line in _lines(path):
        fields = line.split("|")
        if len(fields) != expected:
            raise MovieLensFormatError(
                path.name,
                f"expected {expected} '|'-separated fields (5 + {len(genres)} genre flags), found {len(fields)}",
                line_no,
            )
        ids.append(_parse_id(path.name, line_no, fields[0], "movie id"))
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
    _check_unique(path.name, ids, line_numbers, "movie id")
    flags_array = np.asarray(flag_rows, dtype=np.int8).reshape(len(ids), len(genres))
    return _items_frame(ids, titles, flags_array, genres)


def _read_100k_users(path: Path, occupations: set[str] | None) -> pd.DataFrame:
    columns: tuple[list, ...] = ([], [], [], [], [])
    line_numbers: list[int] = []
    for line_no, line in _lines(path):
        user_id, age, gender, occupation, zip_code = _split(path.name, line_no, line, "|", 5, "'|'-separated")
        columns[0].append(_parse_id(path.name, line_no, user_id, "user id"))
        columns[1].append(_parse_int(path.name, line_no, age, "age"))
        columns[2].append(_check_gender(path.name, line_no, gender))
        if occupations is not None and occupation not in occupations:
            raise MovieLensFormatError(
                path.name, f"occupation {occupation!r} is not listed in u.occupation", line_no
            )
        columns[3].append(occupation)
        columns[4].append(zip_code)
        line_numbers.append(line_no)
    _check_unique(path.name, columns[0], line_numbers, "user id")
    return _users_frame(*columns)


def _read_occupations(path: Path) -> set[str] | None:
    if not path.is_file():
        return None
    return {line.strip() for _, line in _lines(path) if line.strip()}


# ml-1m -----------------------------------------------------------------------------------------------


def _read_1m_items(path: Path) -> tuple[pd.DataFrame, tuple[str, ...]]:
    ids: list[int] = []
    titles: list[str] = []
    genre_strings: list[str] = []
    line_numbers: list[int] = []
    for line_no, line in _lines(path):
        movie_id, title, genres = _split(path.name, line_no, line, "::", 3, "'::'-separated")
        ids.append(_parse_id(path.name, line_no, movie_id, "movie id"))
        titles.append(title)
        genre_strings.append(genres)
        line_numbers.append(line_no)
    if not ids:
        raise MovieLensFormatError(path.name, "the movie file is empty")
    _check_unique(path.name, ids, line_numbers, "movie id")
    return _items_from_genre_strings(ids, titles, genre_strings)


def _read_1m_users(path: Path) -> pd.DataFrame:
    columns: tuple[list, ...] = ([], [], [], [], [])
    line_numbers: list[int] = []
    for line_no, line in _lines(path):
        user_id, gender, age, occupation, zip_code = _split(
            path.name, line_no, line, "::", 5, "'::'-separated"
        )
        columns[0].append(_parse_id(path.name, line_no, user_id, "user id"))
        columns[1].append(_parse_int(path.name, line_no, age, "age"))
        columns[2].append(_check_gender(path.name, line_no, gender))
        code = _parse_int(path.name, line_no, occupation, "occupation code")
        if not 0 <= code < len(ML1M_OCCUPATIONS):
            raise MovieLensFormatError(
                path.name, f"occupation code {code} is not one of 0-{len(ML1M_OCCUPATIONS) - 1}", line_no
            )
        columns[3].append(ML1M_OCCUPATIONS[code])
        columns[4].append(zip_code)
        line_numbers.append(line_no)
    _check_unique(path.name, columns[0], line_numbers, "user id")
    return _users_frame(*columns)


# csv -------------------------------------------------------------------------------------------------


def _read_csv_items(path: Path) -> tuple[pd.DataFrame, tuple[str, ...]]:
    text = _read_text(path, "utf-8-sig")
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
        ids.append(_parse_id(path.name, line_no, row[0], "movie id"))
        titles.append(row[1])
        genre_strings.append(row[2])
        line_numbers.append(line_no)
    if not ids:
        raise MovieLensFormatError(path.name, "the movie file is empty")
    _check_unique(path.name, ids, line_numbers, "movie id")
    return _items_from_genre_strings(ids, titles, genre_strings)


# --------------------------------------------------------------------------------------------------
# Ratings: fast pandas path, and a line-by-line diagnosis when it fails
# --------------------------------------------------------------------------------------------------


def _read_ratings_fast(path: Path, layout: _RatingsLayout) -> pd.DataFrame | None:
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
    ratings: pd.DataFrame, scale: _Scale, item_ids: np.ndarray, user_ids: np.ndarray | None
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
    layout: _RatingsLayout,
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
            user, item, rating, timestamp = _split(
                file, line_no, line, layout.separator, 4, layout.separator_name
            )
            user_id = _parse_id(file, line_no, user, "user id")
            item_id = _parse_id(file, line_no, item, "movie id")
            if not _FLOAT_RE.fullmatch(rating):
                raise MovieLensFormatError(file, f"rating {rating!r} is not a number", line_no)
            _parse_int(file, line_no, timestamp, "timestamp")
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


def _read_ratings(
    path: Path,
    layout: _RatingsLayout,
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


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _load_100k(directory: Path) -> MovieLensData:
    files = "u.data, u.item, u.genre and u.user"
    data_path = _require(directory, "u.data", "ml-100k", files)
    item_path = _require(directory, "u.item", "ml-100k", files)
    genre_path = _require(directory, "u.genre", "ml-100k", files)
    genres = _read_100k_genres(genre_path)
    items = _read_100k_items(item_path, genres)
    user_path = directory / "u.user"
    users = (
        _read_100k_users(user_path, _read_occupations(directory / "u.occupation"))
        if user_path.is_file()
        else None
    )
    layout = _RatingsLayout("u.data", "\t", "tab-separated", None, WHOLE_STARS)
    ratings = _read_ratings(
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
    ratings_path = _require(directory, "ratings.dat", "ml-1m", files)
    items, genres = _read_1m_items(_require(directory, "movies.dat", "ml-1m", files))
    user_path = directory / "users.dat"
    users = _read_1m_users(user_path) if user_path.is_file() else None
    # ml-1m (with users.dat) uses whole stars; ml-10m (same layout, no users.dat) uses half stars.
    scale = WHOLE_STARS if users is not None else HALF_STARS
    release = "ml-1m" if users is not None else "ml-10m style"
    layout = _RatingsLayout("ratings.dat", "::", "'::'-separated", None, scale)
    ratings = _read_ratings(
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
    ratings_path = _require(directory, "ratings.csv", "csv", files)
    items, genres = _read_csv_items(_require(directory, "movies.csv", "csv", files))
    layout = _RatingsLayout("ratings.csv", ",", "comma-separated", CSV_RATINGS_HEADER, HALF_STARS)
    ratings = _read_ratings(ratings_path, layout, "csv", "movies.csv", items["item_id"].to_numpy())
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
