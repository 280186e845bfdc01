"""Supervised-to-bandit: MovieLens ratings as logged decisions of the per-arm (shared) shape.

    recbandits logs from-ratings --data-dir ../shared/data/ml-100k --out logs/ml-100k
    # logs/ml-100k/train and logs/ml-100k/test: two datasets, split in time;
    # logs/ml-100k/users.npz and movies.npz: the feature tables the rows were built from; titles.json

Every rating becomes one decision: the user (global features) was shown the rated movie and
``num_negatives`` movies they had not rated (sampled uniformly, seeded; a train row's among the movies unrated in
the train part, a test row's among those never rated), each with its movie features, and chose
the rated one; the reward is the rating (``rating``), the rating over the scale's maximum (``scaled``) or
whether it is 4 or more of 5 (``binary``). The logging policy is the users' own choice, so the propensity is
unknown: null, never invented. With ``negative_reward`` (default 0) every row also carries ``slot_rewards``, the
feedback of every candidate: the rating for the rated movie and ``negative_reward`` for the movies the user did
not rate (the implicit-feedback view of a zero-filled rating matrix, which the MovieLens simulators' ground truth
also takes); training then learns every candidate, not only the rated one. None: only the rated movie's reward.

Features never look at the test part: the ratings are split in time (the last ``test_fraction`` of them, by
timestamp, are the test set), and the learned factors are the rank-``rank`` SVD of the train part only
(users or movies with no train rating get zeros).

| features | global (user) | per candidate (movie) |
|---|---|---|
| demographics | standardized age, one-hot gender and occupation (releases with a user file) | |
| content | | genre flags, standardized release year (0 when the title has none) |
| learned (``rank`` > 0) | train-part SVD user factor | train-part SVD movie factor |
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recbandits.data.movielens import MovieLensData
from recbandits.logs.dataset import DatasetSpec, table_from_arrays, write_dataset
from recbandits.logs.features import write_feature_table

REWARDS = ("rating", "scaled", "binary")
SPLITS = ("train", "test")
USER_TABLE = "users.npz"  # what `recbandits serve --user-table` reads
MOVIE_TABLE = "movies.npz"
TITLES_FILE = "titles.json"  # what `recbandits serve --item-titles` reads


def _release_years(titles: pd.Series) -> np.ndarray:
    """Standardized year from titles like "Toy Story (1995)"; 0 where a title has no year."""
    years = titles.str.extract(r"\((\d{4})\)\s*$")[0].astype(float).to_numpy()
    known = ~np.isnan(years)
    standardized = np.zeros(len(years))
    if known.any():
        standardized[known] = (years[known] - years[known].mean()) / (years[known].std() or 1.0)
    return standardized


def feature_tables(data: MovieLensData, train: pd.DataFrame, rank: int):
    """(user ids, user features, user names, movie ids, movie features, movie names), train-part factors only."""
    from recbandits.envs.factorization import item_genre_features, truncated_svd, user_demographic_features

    user_ids = np.sort(data.ratings["user_id"].unique())
    movie_ids = data.items["item_id"].to_numpy()
    user_parts, user_names = [], []
    if data.users is not None:
        demographics, names = user_demographic_features(data, user_ids)
        user_parts.append(demographics)
        user_names += names
    genres, genre_names = item_genre_features(data, movie_ids)
    movie_parts = [genres, _release_years(data.items["title"])[:, None]]
    movie_names = genre_names + ["year"]
    if rank > 0:
        user_index = pd.Index(user_ids)
        movie_index = pd.Index(movie_ids)
        import scipy.sparse

        rows, columns = user_index.get_indexer(train["user_id"]), movie_index.get_indexer(train["item_id"])
        # Sparse: ml-25m's dense matrix would be 162,541 x 59,047 floats (77 GB).
        matrix = scipy.sparse.csr_matrix((train["rating"].to_numpy(np.float64), (rows, columns)),
                                         shape=(len(user_ids), len(movie_ids)))
        user_factors, movie_factors, _ = truncated_svd(matrix, min(rank, min(matrix.shape) - 1),
                                                       name=f"{data.path.name} (train part)")
        # Exact zeros (the solver leaves ~1e-16) for who has no train rating: nothing of the test part leaks.
        user_factors[np.bincount(rows, minlength=len(user_ids)) == 0] = 0.0
        movie_factors[np.bincount(columns, minlength=len(movie_ids)) == 0] = 0.0
        user_parts.append(user_factors)
        movie_parts.append(movie_factors)
        user_names += [f"user_factor_{i}" for i in range(user_factors.shape[1])]
        movie_names += [f"movie_factor_{i}" for i in range(movie_factors.shape[1])]
    if not user_parts:
        raise ValueError(f"{data.path} has no user file: give --rank > 0 so users have (learned) features")
    return (user_ids, np.column_stack(user_parts), user_names, movie_ids, np.column_stack(movie_parts),
            movie_names)


def sample_negatives(user_index: np.ndarray, rated_codes: np.ndarray, num_movies: int, count: int,
                     rng: np.random.Generator, max_rounds: int = 100) -> np.ndarray:
    """[N, count] movie indices per row, distinct within a row and never rated by the row's user.

    ``rated_codes``: sorted user_index * num_movies + movie_index of every rating.
    """
    negatives = rng.integers(num_movies, size=(len(user_index), count))
    for _ in range(max_rounds):
        codes = user_index[:, None] * num_movies + negatives
        position = np.searchsorted(rated_codes, codes).clip(max=len(rated_codes) - 1)
        bad = rated_codes[position] == codes
        order = np.argsort(negatives, axis=1, kind="stable")
        ordered = np.take_along_axis(negatives, order, axis=1)
        repeated = np.zeros_like(bad)
        np.put_along_axis(repeated, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
        bad |= repeated
        if not bad.any():
            return negatives
        negatives[bad] = rng.integers(num_movies, size=int(bad.sum()))
    raise ValueError(f"could not sample {count} distinct unrated movies for every rating: some users rated "
                     f"nearly all {num_movies} movies; lower --num-negatives")


def from_ratings(data_dir: str | Path | None, out: str | Path, *, rank: int = 10, num_negatives: int = 9,
                 test_fraction: float = 0.2, reward: str = "rating", negative_reward: float | None = 0.0,
                 seed: int = 0, rows_per_file: int = 25_000) -> dict[str, Any]:
    """Write ``out/train`` and ``out/test`` (see the module docstring); return a summary."""
    from recbandits.data import load_movielens, resolve_data_dir

    if reward not in REWARDS:
        raise ValueError(f"--reward {reward!r} must be one of {', '.join(REWARDS)}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction {test_fraction} must be in (0, 1)")
    if negative_reward is not None and not np.isfinite(negative_reward):
        raise ValueError(f"--negative-reward {negative_reward} must be finite")
    if num_negatives < 1 or rows_per_file < 1 or rank < 0:
        raise ValueError("--num-negatives and --rows-per-file must be >= 1, --rank >= 0")
    data = load_movielens(resolve_data_dir(data_dir))
    ratings = data.ratings.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    split_at = int(round(len(ratings) * (1 - test_fraction)))
    train_ratings = ratings.iloc[:split_at]
    user_ids, user_features, user_names, movie_ids, movie_features, movie_names = feature_tables(
        data, train_ratings, rank)
    if num_negatives >= len(movie_ids):
        raise ValueError(f"--num-negatives {num_negatives} must be below the {len(movie_ids)} movies")
    user_index = pd.Index(user_ids).get_indexer(ratings["user_id"])
    movie_index = pd.Index(movie_ids).get_indexer(ratings["item_id"])
    codes = user_index.astype(np.int64) * len(movie_ids) + movie_index
    rng = np.random.default_rng(seed)
    # A train row's negatives are unrated in the train part (what was known then: a movie the user rates later
    # may be one); a test row's are unrated in all the ratings.
    negatives = np.concatenate([
        sample_negatives(user_index[:split_at].astype(np.int64), np.unique(codes[:split_at]), len(movie_ids),
                         num_negatives, rng),
        sample_negatives(user_index[split_at:].astype(np.int64), np.unique(codes), len(movie_ids), num_negatives,
                         rng)])
    candidates = np.column_stack([movie_index, negatives])
    # The rated movie at a random slot, so its position says nothing.
    slots = rng.integers(num_negatives + 1, size=len(ratings))
    rows = np.arange(len(ratings))
    candidates[rows, 0], candidates[rows, slots] = candidates[rows, slots], movie_index
    scale = float(data.ratings["rating"].max())
    values = ratings["rating"].to_numpy(np.float64)
    rewards = {"rating": values, "scaled": values / scale, "binary": (values >= 0.8 * scale).astype(np.float64)}[
        reward]
    movie_id_strings = movie_ids.astype(str)
    timestamps = ratings["timestamp"].to_numpy(np.float64)
    spec = DatasetSpec(shape="shared", context_dim=user_features.shape[1], arm_dim=movie_features.shape[1],
                       interaction=True, context_names=user_names, arm_feature_names=movie_names,
                       producer={"command": "from-ratings", "data": data.name, "rank": rank,
                                 "num_negatives": num_negatives, "test_fraction": test_fraction, "reward": reward,
                                 "negative_reward": negative_reward, "seed": seed})
    summary: dict[str, Any] = {"out": str(Path(out)), "rows": {}, "spec": dataclasses.asdict(spec)}
    for split, part in (("train", slice(0, split_at)), ("test", slice(split_at, len(ratings)))):
        indices = rows[part]

        def parts(indices=indices, split=split):
            for start in range(0, len(indices), rows_per_file):
                chunk = indices[start:start + rows_per_file]
                columns = {}
                if negative_reward is not None:
                    slot_rewards = np.full((len(chunk), num_negatives + 1), float(negative_reward))
                    slot_rewards[np.arange(len(chunk)), slots[chunk]] = rewards[chunk]
                    columns = {"position": slots[chunk].astype(np.int32), "slot_rewards": slot_rewards}
                yield table_from_arrays({
                    **columns,
                    "event_id": np.char.add(f"{split}-", chunk.astype(str)),
                    "timestamp": timestamps[chunk],
                    "context": user_features[user_index[chunk]],
                    "candidates": movie_id_strings[candidates[chunk]],
                    "candidate_features": movie_features[candidates[chunk]],
                    "action": movie_id_strings[movie_index[chunk]],
                    "reward": rewards[chunk],
                    "reward_source": "observed",
                    "policy": "movielens-users",
                })

        write_dataset(Path(out) / split, spec, parts())
        summary["rows"][split] = int(len(indices))
    write_feature_table(Path(out) / USER_TABLE, user_ids, user_features, user_names)
    write_feature_table(Path(out) / MOVIE_TABLE, movie_ids, movie_features, movie_names)
    titles = dict(zip(movie_id_strings.tolist(), data.items["title"].astype(str).tolist(), strict=True))
    (Path(out) / TITLES_FILE).write_text(json.dumps(titles, ensure_ascii=False) + "\n", encoding="utf-8")
    summary["tables"] = {"users": str(Path(out) / USER_TABLE), "movies": str(Path(out) / MOVIE_TABLE),
                         "titles": str(Path(out) / TITLES_FILE)}
    return summary
