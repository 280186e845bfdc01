"""The per-arm features bandit: pick one of ``num_actions`` candidate movies sampled from the whole catalogue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gymnasium import spaces

from recbandits.data.movielens import MovieLensData
from recbandits.envs import _random
from recbandits.envs.core import (
    BanditEnv,
    BanditVectorEnv,
    BatchSimulator,
    PreferenceDrift,
    RewardModel,
    RewardType,
    check_action_range,
)
from recbandits.envs.factorization import (
    MovieSelection,
    RatingFactorization,
    factorize_movielens,
    item_genre_features,
    load_cached,
    user_demographic_features,
)


class CandidateFeatures:
    """Global (user) and per-arm (movie) feature tables of a factorized MovieLens release."""

    def __init__(
        self,
        data_dir: str | Path | MovieLensData | None,
        rank: int,
        movie_selection: MovieSelection,
        num_movies: int | None,
        user_demographics: bool | None,
        movie_genres: bool,
    ):
        data = data_dir if isinstance(data_dir, MovieLensData) else load_cached(data_dir)
        self.factorization: RatingFactorization = factorize_movielens(
            data, rank, movie_selection=movie_selection, num_movies=num_movies
        )
        if user_demographics is None:
            user_demographics = data.users is not None
        global_parts = [self.factorization.user_factors]
        self.global_feature_names = [f"user_factor_{i}" for i in range(rank)]
        if user_demographics:
            demographics, names = user_demographic_features(data, self.factorization.user_ids)
            global_parts.append(demographics)
            self.global_feature_names += names
        arm_parts = [self.factorization.item_factors]
        self.arm_feature_names = [f"movie_factor_{i}" for i in range(rank)]
        if movie_genres:
            genres, names = item_genre_features(data, self.factorization.item_ids)
            arm_parts.append(genres)
            self.arm_feature_names += names
        self.global_features = np.column_stack(global_parts).astype(np.float32)
        self.arm_features = np.column_stack(arm_parts).astype(np.float32)


class CandidateSimulator(BatchSimulator):
    """Batched dynamics shared by the per-arm and ranking envs: a user and ``num_candidates`` movies per step."""

    def __init__(
        self,
        features: CandidateFeatures,
        num_envs: int,
        num_candidates: int,
        reward_model: RewardModel,
        drift_rate: float,
    ):
        factorization = features.factorization
        if not 1 <= num_candidates <= factorization.num_items:
            raise ValueError(
                f"num_candidates={num_candidates} must be between 1 and the {factorization.num_items} movies "
                "in the catalogue"
            )
        drift = PreferenceDrift.for_rate(factorization.rank, drift_rate)
        super().__init__(num_envs, reward_model, drift)
        self.features = features
        self.factorization = factorization
        self.num_candidates = num_candidates
        self.users = np.zeros(num_envs, dtype=np.int64)
        self.candidates = np.zeros((num_envs, num_candidates), dtype=np.int64)
        self.single_observation_space = spaces.Dict(
            {
                "global": spaces.Box(-np.inf, np.inf, shape=(features.global_features.shape[1],), dtype=np.float32),
                "per_arm": spaces.Box(
                    -np.inf, np.inf, shape=(num_candidates, features.arm_features.shape[1]), dtype=np.float32
                ),
            }
        )

    def _draw_contexts(self) -> None:
        self.users = _random.integers(
            self.keys, self.counters, _random.STREAM_CONTEXT, self.factorization.num_users
        )[:, 0]
        self.candidates = _random.sample_without_replacement(
            self.keys, self.counters, _random.STREAM_CANDIDATES, self.factorization.num_items, self.num_candidates
        )

    def observations(self) -> dict[str, np.ndarray]:
        return {
            "global": self.features.global_features[self.users],
            "per_arm": self.features.arm_features[self.candidates],
        }

    def candidate_ratings(self, idx=slice(None)) -> np.ndarray:
        """Approximated rating of each candidate for the current user (after drift), shape (n, num_candidates)."""
        tastes = self.factorization.user_factors[self.users[idx]]
        if self.drift is not None:
            tastes = self.drift.apply(tastes, idx)
        movie_vectors = self.factorization.item_factors[self.candidates[idx]]
        return np.einsum("nk,nck->nc", tastes, movie_vectors)

    def candidate_ids(self, idx=slice(None)) -> np.ndarray:
        return self.factorization.item_ids[self.candidates[idx]]


class PerArmSimulator(CandidateSimulator):
    """Batched dynamics of the per-arm env (see ``MovieLensPerArmEnv``)."""

    def __init__(self, features, num_envs, num_actions, reward_model, drift_rate):
        super().__init__(features, num_envs, num_actions, reward_model, drift_rate)
        self.single_action_space = spaces.Discrete(num_actions)

    def _validate_actions(self, actions: np.ndarray) -> None:
        check_action_range(actions, self.num_candidates, "a candidate index")

    def expected_rewards(self, idx=slice(None)) -> np.ndarray:
        """Expected reward of every candidate for the current user of the sub-envs ``idx``."""
        return self.reward_model.expected(self.candidate_ratings(idx))

    def _act(self, actions, idx):
        all_expected = self.expected_rewards(idx)
        expected = np.take_along_axis(all_expected, actions[:, None], axis=1)[:, 0]
        optimal_action = np.argmax(all_expected, axis=1)
        optimal_reward = np.take_along_axis(all_expected, optimal_action[:, None], axis=1)[:, 0]
        info = {
            "user_id": self.factorization.user_ids[self.users[idx]],
            "candidate_ids": self.candidate_ids(idx),
            "movie_id": self.candidate_ids(idx)[np.arange(len(actions)), actions],
            "expected_reward": expected,
            "optimal_action": optimal_action,
            "optimal_reward": optimal_reward,
            "regret": optimal_reward - expected,
        }
        return self.reward_model.sample(expected, self.keys[idx], self.counters[idx]), info

    def oracle_actions(self) -> np.ndarray:
        return np.argmax(self.expected_rewards(), axis=1)

    def oracle_info(self) -> dict[str, np.ndarray]:
        all_expected = self.expected_rewards()
        return {
            "optimal_action": np.argmax(all_expected, axis=1),
            "optimal_reward": np.max(all_expected, axis=1),
            "candidate_ids": self.candidate_ids(),
        }


def _per_arm_simulator(num_envs, data_dir, rank, num_actions, movie_selection, num_movies, user_demographics,
                       movie_genres, reward_type, reward_noise_std, drift_rate) -> PerArmSimulator:
    features = CandidateFeatures(data_dir, rank, movie_selection, num_movies, user_demographics, movie_genres)
    reward_model = RewardModel(reward_type, reward_noise_std, features.factorization.rating_scale)
    return PerArmSimulator(features, num_envs, num_actions, reward_model, drift_rate)


class MovieLensPerArmEnv(BanditEnv):
    """Recommend one of ``num_actions`` candidate movies, each described by its own features.

    Each step a user arrives and ``num_actions`` distinct candidate movies are drawn uniformly from the
    catalogue. The ground truth is the rank-``rank`` SVD factorization of the whole rating matrix
    (``rating(i, j) = u_i . v_j``); the agent sees the user's features and every candidate's features.

    | Observation | ``Dict(global=Box((global_dim,)), per_arm=Box((num_actions, arm_dim)))``, float32 |
    | ``global`` | user factor vector ``u_i`` (rank), then, with ``user_demographics``, the user's demographics |
    | demographics | standardized age, one-hot gender and one-hot occupation |
    | ``per_arm`` | per candidate: movie factor vector ``v_j`` (rank), then, with ``movie_genres``, 0/1 genre flags |
    | Action | ``Discrete(num_actions)``: index of the chosen candidate |
    | Reward | ``rating``: ``u_i . v_j`` (+ noise); ``click``: Bernoulli(``clip(u_i . v_j / 5, 0, 1)``) |
    | Episode end | never terminates; truncated after ``episode_length`` steps |

    Info keys after ``step``: ``user_id``, ``candidate_ids``, ``movie_id`` (of the chosen candidate),
    ``expected_reward``, ``optimal_action`` (best candidate), ``optimal_reward``, ``regret``. ``reset`` returns the
    oracle of the first context plus ``candidate_ids``.

    | Parameter | Meaning |
    | ``data_dir``, ``rank`` | as in ``MovieLensEnv`` |
    | ``num_actions`` | candidates per step |
    | ``movie_selection`` | catalogue: ``"all"`` movies (default), ``"most_rated"`` or ``"first"`` (``num_movies``) |
    | ``num_movies`` | movies kept by ``"most_rated"`` / ``"first"`` |
    | ``user_demographics`` | add demographics to the global features (None: when the release has them) |
    | ``movie_genres`` | add genre flags to the arm features |
    | ``reward_type``, ``reward_noise_std``, ``drift_rate``, ``episode_length`` | as in ``MovieLensEnv`` |
    """

    def __init__(
        self,
        data_dir: str | Path | MovieLensData | None = None,
        rank: int = 20,
        num_actions: int = 20,
        movie_selection: MovieSelection = "all",
        num_movies: int | None = None,
        user_demographics: bool | None = None,
        movie_genres: bool = True,
        reward_type: RewardType = "rating",
        reward_noise_std: float = 0.0,
        drift_rate: float = 0.0,
        episode_length: int | None = 1000,
    ):
        simulator = _per_arm_simulator(1, data_dir, rank, num_actions, movie_selection, num_movies,
                                       user_demographics, movie_genres, reward_type, reward_noise_std, drift_rate)
        super().__init__(simulator, episode_length)


class MovieLensPerArmVectorEnv(BanditVectorEnv):
    """``MovieLensPerArmEnv`` natively vectorized over ``num_envs`` sub-envs (same parameters, same transitions)."""

    def __init__(
        self,
        num_envs: int = 1,
        data_dir: str | Path | MovieLensData | None = None,
        rank: int = 20,
        num_actions: int = 20,
        movie_selection: MovieSelection = "all",
        num_movies: int | None = None,
        user_demographics: bool | None = None,
        movie_genres: bool = True,
        reward_type: RewardType = "rating",
        reward_noise_std: float = 0.0,
        drift_rate: float = 0.0,
        episode_length: int | None = 1000,
    ):
        simulator = _per_arm_simulator(num_envs, data_dir, rank, num_actions, movie_selection, num_movies,
                                       user_demographics, movie_genres, reward_type, reward_noise_std, drift_rate)
        super().__init__(simulator, episode_length)
