"""Supervised-to-bandit MovieLens (``logs from-ratings``), and what a policy trained on it is worth.

The rows are checked against the ratings they come from (split in time, the rated movie among unrated
negatives at a uniform slot, features from the train part only). The usefulness test serves the policy the
service would start from after ``recbandits train`` on the train split, and a cold start, on the same users
and candidates of the MovieLens per-arm simulator, learning online as the service does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recbandits.jobs.from_ratings import MOVIE_TABLE, USER_TABLE, from_ratings
from recbandits.logs.dataset import read_dataset
from recbandits.logs.features import read_feature_table


@pytest.fixture(scope="module")
def ml100k_logs(ml100k_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ml100k-logs")
    return out, from_ratings(ml100k_dir, out, rank=10, num_negatives=9, seed=0)


def test_every_rating_is_a_decision_split_in_time_with_train_only_features(ml100k_dir, ml100k_logs):
    from recbandits.data import load_movielens

    out, summary = ml100k_logs
    assert summary["rows"] == {"train": 80_000, "test": 20_000}
    train, test = read_dataset(out / "train").frame, read_dataset(out / "test").frame
    assert train["timestamp"].max() <= test["timestamp"].min()
    frame = pd.concat([train, test], ignore_index=True)
    assert frame["propensity"].isna().all() and frame["action_probabilities"].isna().all()  # unknown, never invented

    ratings = load_movielens(ml100k_dir).ratings
    ordered = ratings.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    np.testing.assert_array_equal(frame["action"].astype(int), ordered["item_id"])
    np.testing.assert_array_equal(frame["reward"], ordered["rating"].astype(float))

    user_ids, user_features, user_names = read_feature_table(out / USER_TABLE)
    movie_ids, movie_features, movie_names = read_feature_table(out / MOVIE_TABLE)
    assert len(user_names) == user_features.shape[1] == 34 and len(movie_names) == movie_features.shape[1] == 30
    users = pd.Index(user_ids.astype(int))
    np.testing.assert_array_equal(np.stack(frame["context"]), user_features[users.get_indexer(ordered["user_id"])])

    candidates = np.stack(frame["candidates"]).astype(int)
    assert candidates.shape == (100_000, 10)
    assert (np.sort(candidates, 1)[:, 1:] != np.sort(candidates, 1)[:, :-1]).all()  # distinct within a row
    slots = (candidates == frame["action"].astype(int).to_numpy()[:, None])
    assert (slots.sum(1) == 1).all()
    # The rated movie's slot is uniform: each of the 10 slots within 5 standard deviations of 10,000.
    assert np.abs(slots.sum(0) - 10_000).max() < 5 * np.sqrt(100_000 * 0.1 * 0.9)
    # Every other candidate is a movie the user had not rated: a train row's in the train part (nothing of the
    # test part leaks into training), a test row's at all.
    negatives = candidates[~slots].reshape(-1, 9)
    row_users = ordered["user_id"].to_numpy()
    for part, known in ((slice(0, 80_000), ordered.iloc[:80_000]), (slice(80_000, None), ordered)):
        rated = set(zip(known["user_id"], known["item_id"], strict=True))
        pairs = zip(np.repeat(row_users[part], 9), negatives[part].ravel(), strict=True)
        assert not any(pair in rated for pair in pairs)
    movies = pd.Index(movie_ids.astype(int))
    np.testing.assert_array_equal(np.stack([np.stack(row) for row in frame["candidate_features"][:500]]),
                                  movie_features[movies.get_indexer(candidates[:500].ravel())].reshape(500, 10, -1))

    # Factors are learned from the train part only: a user or movie first rated in the test part has zeros.
    train_part = ordered.iloc[:80_000]
    test_only_users = sorted(set(ordered["user_id"]) - set(train_part["user_id"]))
    test_only_movies = sorted(set(ordered["item_id"]) - set(train_part["item_id"]))
    assert test_only_users and test_only_movies
    user_factors = [user_names.index(f"user_factor_{i}") for i in range(10)]
    movie_factors = [movie_names.index(f"movie_factor_{i}") for i in range(10)]
    assert not user_features[users.get_indexer(test_only_users)][:, user_factors].any()
    assert not movie_features[movies.get_indexer(test_only_movies)][:, movie_factors].any()
    assert user_features[users.get_indexer(train_part["user_id"].unique())][:, user_factors].any(1).all()


def test_reward_variants_and_refusals(small_data_dir, tmp_path):
    frames = {}
    for reward in ("rating", "scaled", "binary"):
        from_ratings(small_data_dir, tmp_path / reward, rank=3, num_negatives=4, reward=reward, rows_per_file=2_000)
        frames[reward] = read_dataset(tmp_path / reward / "train").frame
    ratings = frames["rating"]["reward"].to_numpy()
    np.testing.assert_array_equal(frames["scaled"]["reward"], ratings / 5.0)
    np.testing.assert_array_equal(frames["binary"]["reward"], (ratings >= 4).astype(float))
    assert len(list((tmp_path / "rating" / "train").glob("*.parquet"))) == 4  # 7,200 train rows, 2,000 a file
    for settings, message in (({"reward": "stars"}, "--reward 'stars' must be one of rating, scaled, binary"),
                              ({"test_fraction": 1.0}, "--test-fraction 1.0 must be in (0, 1)"),
                              ({"num_negatives": 200}, "--num-negatives 200 must be below the 200 movies")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            from_ratings(small_data_dir, tmp_path / "refused", **settings)


def _serve_in_simulator(fields, state, user_table, movie_table, data_dir, decisions=5_000, batch=50, seed=3):
    """Regret of the service's policy over ``decisions`` decisions of the MovieLens per-arm simulator.

    The policy sees the from-ratings features of each arriving user and candidate movie (looked up by id), and
    learns every ``batch`` decisions from the simulator's rewards, as the service learns from joined rewards.
    """
    from recbandits.algos.candidates import CandidateSet, LearningRecord, LinearCandidatePolicy
    from recbandits.envs import MovieLensPerArmVectorEnv

    policy = LinearCandidatePolicy(fields, state)
    env = MovieLensPerArmVectorEnv(num_envs=batch, data_dir=data_dir, num_actions=10, episode_length=None)
    simulator = env.simulator
    env.reset(seed=seed)
    users = pd.Index(user_table[0])
    movies = pd.Index(movie_table[0])
    regret, seen_users, seq = 0.0, [], 0
    for _ in range(decisions // batch):
        user_ids = simulator.factorization.user_ids[simulator.users].astype(str)
        candidate_ids = simulator.candidate_ids().astype(str)
        contexts = user_table[1][users.get_indexer(user_ids)]
        arm_features = movie_table[1][movies.get_indexer(candidate_ids.ravel())].reshape(batch, 10, -1)
        chosen = policy.decide([CandidateSet(context=contexts[b], arm_features=arm_features[b]) for b in range(batch)])
        _, rewards, _, _, info = env.step(np.array([decision.chosen for decision in chosen]))
        regret += float(info["regret"].sum())
        seen_users.append(user_ids)
        records = []
        for decision, reward in zip(chosen, rewards, strict=True):
            records.append(LearningRecord(seq=seq, model=decision.model, features=decision.features,
                                          reward=float(reward)))
            seq += 1
        assert policy.absorb(records) == []
    return regret, np.concatenate(seen_users), (policy.exploration, policy.alpha)


@pytest.mark.slow  # from-ratings, training on 400,000 learning rows and 2 x 5,000 decisions with 779 features
def test_a_service_warm_started_from_ratings_has_lower_regret_than_a_cold_start(ml100k_dir, tmp_path):
    from recbandits.jobs.train import train
    from recbandits.serve.config import ServeConfig
    from recbandits.serve.policy import initial_policy

    summary = from_ratings(ml100k_dir, tmp_path / "logs", rank=5, num_negatives=4, seed=0)
    trained = train(tmp_path / "logs" / "train", "linucb", tmp_path / "offline", use_ray=False)
    assert trained["learned_rows"] == 80_000 * 5  # slot rewards: the rated movie and its four unrated ones
    tables = (read_feature_table(tmp_path / "logs" / USER_TABLE), read_feature_table(tmp_path / "logs" / MOVIE_TABLE),
              ml100k_dir)
    spec = summary["spec"]
    warm_fields, warm_state, origin = initial_policy(ServeConfig(checkpoint=str(tmp_path / "offline")))
    assert origin.startswith("checkpoint:") and warm_state["counts"].sum() == 400_000
    cold_fields, cold_state, origin = initial_policy(ServeConfig(
        shape="shared", context_dim=spec["context_dim"], arm_dim=spec["arm_dim"], interaction=True))
    assert origin == "cold"

    warm_regret, warm_users, warm_rule = _serve_in_simulator(warm_fields, warm_state, *tables)
    cold_regret, cold_users, cold_rule = _serve_in_simulator(cold_fields, cold_state, *tables)
    np.testing.assert_array_equal(warm_users, cold_users)  # the same arrivals and candidates
    assert warm_rule == cold_rule == ("ucb", 1.0)
    assert warm_regret < 0.8 * cold_regret, (warm_regret, cold_regret)


def _other_layouts(source, directory):
    """The same ratings in the ml-1m layout (``::``, users.dat) and in the ml-latest-small / ml-25m layout (csv,
    no user file)."""
    from recbandits.data import load_movielens

    data = load_movielens(source)
    genres = data.items[list(data.genres)].to_numpy().astype(bool)
    genre_lists = ["|".join(np.array(data.genres)[row]) or "(no genres listed)" for row in genres]
    one_m, csv = directory / "ml-1m", directory / "ml-latest-small"
    one_m.mkdir()
    csv.mkdir()
    ratings = data.ratings.astype({"rating": int})
    (one_m / "ratings.dat").write_text("".join(f"{r.user_id}::{r.item_id}::{r.rating}::{r.timestamp}\n"
                                               for r in ratings.itertuples()))
    (one_m / "movies.dat").write_text("".join(f"{item}::{title}::{listed}\n" for item, title, listed in zip(
        data.items["item_id"], data.items["title"], genre_lists, strict=True)), encoding="latin-1")
    occupations = {name: code for code, name in enumerate(sorted(data.users["occupation"].unique()))}
    (one_m / "users.dat").write_text("".join(f"{u.user_id}::{u.gender}::{u.age}::{occupations[u.occupation]}::"
                                             f"{u.zip_code}\n" for u in data.users.itertuples()))
    data.ratings.rename(columns={"user_id": "userId", "item_id": "movieId"}).to_csv(csv / "ratings.csv", index=False)
    data.items.assign(genres=genre_lists).rename(columns={"item_id": "movieId"})[["movieId", "title", "genres"]].to_csv(
        csv / "movies.csv", index=False)
    return one_m, csv


def test_every_release_layout_gives_the_same_decisions(small_data_dir, tmp_path):
    one_m, csv = _other_layouts(small_data_dir, tmp_path)
    frames = {}
    for name, directory in (("ml-100k", small_data_dir), ("ml-1m", one_m), ("csv", csv)):
        summary = from_ratings(directory, tmp_path / f"out-{name}", rank=3, num_negatives=4)
        frames[name] = read_dataset(tmp_path / f"out-{name}" / "train").frame
        assert summary["rows"] == {"train": 7_200, "test": 1_800}, name
    for name in ("ml-1m", "csv"):  # the same ratings, in the same order, with the same sampled candidates
        np.testing.assert_array_equal(frames[name]["action"], frames["ml-100k"]["action"])
        np.testing.assert_array_equal(np.stack(frames[name]["candidates"]), np.stack(frames["ml-100k"]["candidates"]))
        np.testing.assert_array_equal(frames[name]["reward"], frames["ml-100k"]["reward"])
    # Without a user file the users' features are their train-part factors only.
    assert len(frames["csv"]["context"][0]) == 3 and len(frames["ml-1m"]["context"][0]) > 3
    with pytest.raises(ValueError, match="has no user file: give --rank > 0"):
        from_ratings(csv, tmp_path / "refused", rank=0)
