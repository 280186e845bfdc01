"""Low-rank factorization of MovieLens ratings: the ground truth behind every simulator.

The approximated rating of movie j for user i is ``user_factors[i] @ item_factors[j]``, with the square root
of the singular values on both sides, exactly as TF-Agents' ``MovieLensPyEnvironment`` builds it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse
import scipy.sparse.linalg

from recbandits.data import load_movielens, ratings_matrix, resolve_data_dir
from recbandits.data.movielens import MovieLensData

MovieSelection = Literal["first", "most_rated", "all"]
MOVIE_SELECTIONS = ("first", "most_rated", "all")

# Above this many cells the dense SVD would not fit comfortably in memory; use a truncated sparse SVD.
_DENSE_SVD_MAX_CELLS = 20_000_000


@dataclass(frozen=True)
class RatingFactorization:
    """A rank-k factorization of a user x movie rating matrix (rows: users with at least one rating)."""

    user_factors: np.ndarray  # (num_users, rank)
    item_factors: np.ndarray  # (num_items, rank)
    user_ids: np.ndarray  # MovieLens user id of each row
    item_ids: np.ndarray  # MovieLens movie id of each column
    singular_values: np.ndarray  # the kept singular values, descending
    rating_scale: float  # the highest rating of the release (5 for MovieLens)

    @property
    def rank(self) -> int:
        return self.user_factors.shape[1]

    @property
    def num_users(self) -> int:
        return self.user_factors.shape[0]

    @property
    def num_items(self) -> int:
        return self.item_factors.shape[0]

    def approx_ratings(self) -> np.ndarray:
        """The (num_users, num_items) matrix of approximated ratings: the simulators' expected reward."""
        return self.user_factors @ self.item_factors.T


def truncated_svd(matrix, rank: int, *, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U_k * sqrt(s_k), V_k * sqrt(s_k), s_k) of a dense or sparse matrix, largest singular values first."""
    num_rows, num_cols = matrix.shape
    if rank < 1:
        raise ValueError(f"rank={rank} must be at least 1")
    if num_rows * num_cols <= _DENSE_SVD_MAX_CELLS:
        dense = matrix.toarray() if scipy.sparse.issparse(matrix) else np.asarray(matrix, dtype=np.float64)
        u, s, vh = np.linalg.svd(dense, full_matrices=False)
        # The same tolerance as np.linalg.matrix_rank: singular values below it are numerical zeros.
        numerical_rank = int(np.sum(s > s.max(initial=0.0) * max(dense.shape) * np.finfo(s.dtype).eps))
        if rank > numerical_rank:
            raise ValueError(
                f"rank={rank} exceeds the rank of the {num_rows}x{num_cols} {name} rating matrix "
                f"({numerical_rank}); choose rank <= {numerical_rank}"
            )
    else:
        if rank >= min(num_rows, num_cols):
            raise ValueError(
                f"rank={rank} must be below min({num_rows}, {num_cols}) for the {name} rating matrix"
            )
        # A fixed start vector keeps the truncated SVD (and so the simulator) deterministic.
        start = np.ones(min(num_rows, num_cols)) / np.sqrt(min(num_rows, num_cols))
        u, s, vh = scipy.sparse.linalg.svds(scipy.sparse.csr_matrix(matrix), k=rank, v0=start)
        order = np.argsort(s)[::-1]
        u, s, vh = u[:, order], s[order], vh[order]
    root = np.sqrt(s[:rank])
    # The same expressions, in the same order, as TF-Agents' MovieLensPyEnvironment: parity to the last bit.
    u_hat = u[:, :rank] * root
    v_hat = np.transpose(np.transpose(vh[:rank, :]) * root)
    return u_hat, v_hat.T, s[:rank]


def _selected_matrix(data: MovieLensData, selection: MovieSelection, num_movies: int | None):
    """The rating matrix the factorization is computed on, with its row (user) and column (movie) ids."""
    if selection not in MOVIE_SELECTIONS:
        raise ValueError(f"movie_selection={selection!r} must be one of {', '.join(MOVIE_SELECTIONS)}")
    if data.num_ratings == 0:
        raise ValueError(f"the ratings in {data.path} are empty: nothing to factorize")
    if selection == "first":
        # TF-Agents' construction: a dense matrix indexed by id - 1, cut to the first `num_movies` columns,
        # then the users without any rating among them are dropped.
        full = ratings_matrix(data)
        if num_movies is None or not 1 <= num_movies <= full.shape[1]:
            raise ValueError(
                f"num_movies={num_movies} must be between 1 and {full.shape[1]} (the movies in {data.path})"
            )
        matrix = full[:, :num_movies]
        kept_users = np.nonzero(np.sum(matrix, axis=1) > 0.0)[0]
        return matrix[kept_users, :], kept_users + 1, np.arange(1, num_movies + 1)
    ratings = data.ratings
    if selection == "most_rated":
        counts = ratings.groupby("item_id").size()
        if num_movies is None or not 1 <= num_movies <= len(counts):
            raise ValueError(
                f"num_movies={num_movies} must be between 1 and {len(counts)} (the rated movies in {data.path})"
            )
        # Most ratings first, ties broken by the smaller id so the choice is deterministic.
        ranked = counts.reset_index(name="count").sort_values(["count", "item_id"], ascending=[False, True])
        item_ids = np.sort(ranked["item_id"].to_numpy()[:num_movies])
        ratings = ratings[ratings["item_id"].isin(item_ids)]
    else:
        item_ids = np.sort(ratings["item_id"].unique())
    user_ids = np.sort(ratings["user_id"].unique())
    rows = pd.Index(user_ids).get_indexer(ratings["user_id"])
    cols = pd.Index(item_ids).get_indexer(ratings["item_id"])
    matrix = scipy.sparse.csr_matrix(
        (ratings["rating"].to_numpy(np.float64), (rows, cols)), shape=(len(user_ids), len(item_ids))
    )
    return matrix, user_ids, item_ids


@functools.lru_cache(maxsize=16)
def _cached_factorization(path: Path, rank: int, selection: str, num_movies: int | None) -> RatingFactorization:
    data = load_movielens(path)
    return factorize_movielens(data, rank, movie_selection=selection, num_movies=num_movies)


def factorize_movielens(
    data: MovieLensData | str | Path | None,
    rank: int,
    *,
    movie_selection: MovieSelection = "first",
    num_movies: int | None = None,
) -> RatingFactorization:
    """Factorize a MovieLens release (loaded data, a directory, or None for the default data).

    ``movie_selection``: ``"first"`` keeps the first ``num_movies`` movie ids (TF-Agents' choice),
    ``"most_rated"`` the ``num_movies`` movies with the most ratings, ``"all"`` the whole catalogue.
    Directories are loaded and factorized once per process.
    """
    if not isinstance(data, MovieLensData):
        return _cached_factorization(Path(resolve_data_dir(data)).resolve(), rank, movie_selection, num_movies)
    matrix, user_ids, item_ids = _selected_matrix(data, movie_selection, num_movies)
    user_factors, item_factors, singular_values = truncated_svd(
        matrix, rank, name=f"{data.path.name} ({movie_selection} movies)"
    )
    rating_scale = float(data.ratings["rating"].max())
    return RatingFactorization(user_factors, item_factors, user_ids, item_ids, singular_values, rating_scale)


@functools.lru_cache(maxsize=16)
def _cached_data(path: Path) -> MovieLensData:
    return load_movielens(path)


def load_cached(data_dir: str | Path | None) -> MovieLensData:
    """The MovieLens data of a directory (None: the default data), loaded once per process."""
    return _cached_data(Path(resolve_data_dir(data_dir)).resolve())


def user_demographic_features(data: MovieLensData, user_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Standardized age, one-hot gender and one-hot occupation for the given users, with feature names."""
    if data.users is None:
        raise ValueError(f"user_demographics=True but {data.path} has no user file (only ml-100k and ml-1m do)")
    users = data.users.set_index("user_id").reindex(user_ids)
    if users["age"].isna().any():
        missing = user_ids[users["age"].isna().to_numpy()][:5]
        raise ValueError(f"users {missing.tolist()} have ratings but no row in the user file of {data.path}")
    age = users["age"].to_numpy(np.float64)
    standardized_age = (age - age.mean()) / (age.std() or 1.0)
    genders = sorted(data.users["gender"].unique())
    occupations = sorted(data.users["occupation"].unique())
    gender_onehot = (users["gender"].to_numpy()[:, None] == np.array(genders)[None, :]).astype(np.float64)
    occupation_onehot = (users["occupation"].to_numpy()[:, None] == np.array(occupations)[None, :]).astype(np.float64)
    features = np.column_stack([standardized_age, gender_onehot, occupation_onehot])
    names = ["age"] + [f"gender={g}" for g in genders] + [f"occupation={o}" for o in occupations]
    return features, names


def item_genre_features(data: MovieLensData, item_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """0/1 genre flags of the given movies, with feature names."""
    genre_table = pd.DataFrame(data.genre_matrix(), index=data.items["item_id"].to_numpy(), columns=list(data.genres))
    flags = genre_table.reindex(item_ids)
    if flags.isna().any().any():
        missing = item_ids[flags.isna().any(axis=1).to_numpy()][:5]
        raise ValueError(f"movies {missing.tolist()} have ratings but no row in the movie file of {data.path}")
    return flags.to_numpy(np.float64), [f"genre={g}" for g in data.genres]
