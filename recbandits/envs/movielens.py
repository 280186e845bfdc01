"""The MovieLens matrix-factorization bandit: recommend one of ``num_movies`` movies to an arriving user."""

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
from recbandits.envs.factorization import MovieSelection, RatingFactorization, factorize_movielens


class MovieLensSimulator(BatchSimulator):
    """Batched dynamics of the matrix-factorization env (see ``MovieLensEnv`` for the semantics)."""

    def __init__(
        self,
        factorization: RatingFactorization,
        num_envs: int,
        reward_model: RewardModel,
        drift_rate: float = 0.0,
    ):
        drift = PreferenceDrift.for_rate(factorization.rank, drift_rate)
        super().__init__(num_envs, reward_model, drift)
        self.factorization = factorization
        self.num_movies = factorization.num_items
        self.user_vectors = factorization.user_factors
        self.movie_vectors = factorization.item_factors
        self._observation_table = factorization.user_factors.astype(np.float32)
        # Without drift the expected reward of every (user, movie) never changes: look it up.
        self._reward_table = reward_model.expected(factorization.approx_ratings())
        self._optimal_action_table = np.argmax(self._reward_table, axis=1)
        self._optimal_reward_table = np.max(self._reward_table, axis=1)
        self.users = np.zeros(num_envs, dtype=np.int64)
        self.single_observation_space = spaces.Box(-np.inf, np.inf, shape=(factorization.rank,), dtype=np.float32)
        self.single_action_space = spaces.Discrete(self.num_movies)

    def _draw_contexts(self) -> None:
        self.users = _random.integers(
            self.keys, self.counters, _random.STREAM_CONTEXT, self.factorization.num_users
        )[:, 0]

    def observations(self) -> np.ndarray:
        return self._observation_table[self.users]

    def expected_rewards(self, idx=slice(None)) -> np.ndarray:
        """Expected reward of every movie for the current user of the sub-envs ``idx``."""
        users = self.users[idx]
        if self.drift is None:
            return self._reward_table[users]
        tastes = self.drift.apply(self.user_vectors[users], idx)
        return self.reward_model.expected(tastes @ self.movie_vectors.T)

    def _validate_actions(self, actions: np.ndarray) -> None:
        check_action_range(actions, self.num_movies, "a movie index")

    def _act(self, actions, idx):
        users = self.users[idx]
        if self.drift is None:
            expected = self._reward_table[users, actions]
            optimal_action = self._optimal_action_table[users]
            optimal_reward = self._optimal_reward_table[users]
        else:
            all_expected = self.expected_rewards(idx)
            expected = np.take_along_axis(all_expected, actions[:, None], axis=1)[:, 0]
            optimal_action = np.argmax(all_expected, axis=1)
            optimal_reward = np.take_along_axis(all_expected, optimal_action[:, None], axis=1)[:, 0]
        info = {
            "user_id": self.factorization.user_ids[users],
            "expected_reward": expected,
            "optimal_action": optimal_action,
            "optimal_reward": optimal_reward,
            "regret": optimal_reward - expected,
        }
        return self.reward_model.sample(expected, self.keys[idx], self.counters[idx]), info

    def oracle_actions(self) -> np.ndarray:
        if self.drift is None:
            return self._optimal_action_table[self.users]
        return np.argmax(self.expected_rewards(), axis=1)

    def oracle_info(self) -> dict[str, np.ndarray]:
        if self.drift is None:
            return {
                "optimal_action": self._optimal_action_table[self.users],
                "optimal_reward": self._optimal_reward_table[self.users],
            }
        all_expected = self.expected_rewards()
        return {"optimal_action": np.argmax(all_expected, axis=1), "optimal_reward": np.max(all_expected, axis=1)}


def _movielens_simulator(
    num_envs: int,
    data_dir: str | Path | MovieLensData | None,
    rank: int,
    num_movies: int,
    movie_selection: MovieSelection,
    reward_type: RewardType,
    reward_noise_std: float,
    drift_rate: float,
) -> MovieLensSimulator:
    factorization = factorize_movielens(data_dir, rank, movie_selection=movie_selection, num_movies=num_movies)
    reward_model = RewardModel(reward_type, reward_noise_std, factorization.rating_scale)
    return MovieLensSimulator(factorization, num_envs, reward_model, drift_rate)


class MovieLensEnv(BanditEnv):
    """Recommend one movie to each arriving user; the reward is the user's (approximated) rating of it.

    The user x movie rating matrix of a MovieLens release is factorized at rank ``rank`` by SVD, with the
    square root of the singular values on both sides: ``rating(i, j) = u_i . v_j``. Each step a user is drawn
    uniformly from the users with at least one rating among the kept movies; the agent sees ``u_i``.
    With the defaults (``movie_selection="first"``, rating reward, no noise, no drift) the reward matrix,
    contexts and oracle are exactly those of TF-Agents' ``MovieLensPyEnvironment``.

    | Observation | ``Box(-inf, inf, (rank,), float32)``: the user's factor vector ``u_i`` (their profile) |
    | Action | ``Discrete(num_movies)``: index of the recommended movie among the kept movies |
    | Reward (``rating``) | ``u_i . v_j`` (+ Gaussian noise of std ``reward_noise_std``) |
    | Reward (``click``) | 1 with probability ``clip(u_i . v_j / 5, 0, 1)``, else 0 |
    | Episode end | never terminates; truncated after ``episode_length`` steps (a session) |
    | ``reset()`` | continues the same world |

    Info keys after ``step``: ``user_id`` (MovieLens id of the user just served), ``expected_reward`` (of the
    action taken), ``optimal_action``, ``optimal_reward`` (the oracle for that user), ``regret``
    (``optimal_reward - expected_reward``, exact). ``reset`` returns the oracle of the first user;
    ``oracle_action()`` gives the optimal action for the current observation.

    | Parameter | Meaning |
    | ``data_dir`` | MovieLens directory (any release), loaded data, or None for the embedded default data |
    | ``rank`` | factorization rank k (at most the rank of the kept rating matrix) |
    | ``num_movies`` | number of movies (arms) kept |
    | ``movie_selection`` | ``"first"``: the first ``num_movies`` ids (TF-Agents); ``"most_rated"``: the most rated |
    | ``reward_type`` | ``"rating"`` or ``"click"`` |
    | ``reward_noise_std`` | std of Gaussian noise added to rating rewards |
    | ``drift_rate`` | radians per step by which users' tastes turn (0: stationary); the oracle follows |
    | ``episode_length`` | steps per episode before truncation (None: endless) |
    """

    def __init__(
        self,
        data_dir: str | Path | MovieLensData | None = None,
        rank: int = 20,
        num_movies: int = 20,
        movie_selection: MovieSelection = "first",
        reward_type: RewardType = "rating",
        reward_noise_std: float = 0.0,
        drift_rate: float = 0.0,
        episode_length: int | None = 1000,
    ):
        simulator = _movielens_simulator(
            1, data_dir, rank, num_movies, movie_selection, reward_type, reward_noise_std, drift_rate
        )
        super().__init__(simulator, episode_length)


class MovieLensVectorEnv(BanditVectorEnv):
    """``MovieLensEnv`` natively vectorized over ``num_envs`` sub-envs (same parameters, same transitions)."""

    def __init__(
        self,
        num_envs: int = 1,
        data_dir: str | Path | MovieLensData | None = None,
        rank: int = 20,
        num_movies: int = 20,
        movie_selection: MovieSelection = "first",
        reward_type: RewardType = "rating",
        reward_noise_std: float = 0.0,
        drift_rate: float = 0.0,
        episode_length: int | None = 1000,
    ):
        simulator = _movielens_simulator(
            num_envs, data_dir, rank, num_movies, movie_selection, reward_type, reward_noise_std, drift_rate
        )
        super().__init__(simulator, episode_length)
