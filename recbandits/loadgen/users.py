"""The load test's simulated users: what each arrival asks for, the feedback it sends, and the regret it sees.

Two worlds, picked by the service's policy shape:

- ``MovieLensUsers`` (a disjoint service): the users of the MovieLens matrix-factorization env
  (``MovieLensEnv``); the user's factor vector is the context, the movies are the arms, the reward is the env's
  approximated rating of the chosen movie (plus optional noise). ``drift_rate`` > 0 turns the users' tastes.
- ``RankingUsers`` (a ranking service, shared shape with ``slate_size``): the users of the ranking env
  (``MovieLensRankingEnv``): each arrival is a user with ``num_candidates`` candidate movies and their
  features; the user reacts to the slate served by the env's choice model (``cascade``: the first attractive
  slot is clicked, sent as ``clicks``; ``position_based``: every slot's click, sent as ``slot_rewards``). The
  regret of a slate is the oracle slate's expected clicks minus its own.

Both draw arrival ``i`` the same way in every run of a seed, so two runs (or the served and the frozen policy
of one run) see the same users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson


class LoadTestUsers(Protocol):
    """What the load test needs of a world of simulated users (arrival ``index`` is the index-th request)."""

    def body(self, index: int) -> bytes:
        """The ``POST /v1/rank`` body of arrival ``index``."""

    def shown(self, index: int, answer: dict[str, Any]) -> Any:
        """What the service showed arrival ``index`` (from its rank answer), as ``feedback``/``regret`` take it."""

    def feedback(self, index: int, shown: Any, rng: np.random.Generator) -> dict[str, Any]:
        """The reward fields (``reward``, or ``clicks`` / ``slot_rewards``) arrival ``index`` sends for ``shown``."""

    def regret(self, arrivals: np.ndarray, shown: list[Any]) -> np.ndarray:
        """[n] expected regret of what was shown to these arrivals."""

    def frozen_regret(self, frozen, arrivals: np.ndarray) -> np.ndarray:
        """[n] expected regret of a policy (``CandidatePolicy``) deciding for the same arrivals."""


@dataclass
class MovieLensUsers:
    """The MF env's users as the load test offers them: arrival i is user ``arrival_users[i]``."""

    contexts: np.ndarray  # [U, d] float32 (what the env observes)
    bodies: list[bytes]  # [U] each user's rank request
    arrival_users: np.ndarray  # [N] int64
    movie_of_arm: dict[str, int]  # the service's arm id -> the env's movie index
    expected: np.ndarray  # [U, K] expected reward of each movie while tastes stand still
    arrival_expected: np.ndarray | None  # [N, K] expected rewards in the world of each arrival (drift only)
    arm_ids: list[str]  # the service's arms, in its order
    reward_noise: float = 0.0

    def expected_at(self, arrivals: np.ndarray) -> np.ndarray:
        """[n, K] expected reward of every movie for the given arrivals."""
        if self.arrival_expected is not None:
            return self.arrival_expected[arrivals]
        return self.expected[self.arrival_users[arrivals]]

    def body(self, index: int) -> bytes:
        return self.bodies[self.arrival_users[index]]

    def shown(self, index: int, answer: dict[str, Any]) -> int:
        return self.movie_of_arm[answer["action"]]

    def feedback(self, index: int, shown: int, rng: np.random.Generator) -> dict[str, Any]:
        reward = float(self.expected_at(np.array([index]))[0, shown])
        if self.reward_noise > 0:
            reward += float(rng.normal(0.0, self.reward_noise))
        return {"reward": reward}

    def regret(self, arrivals: np.ndarray, shown: list[int]) -> np.ndarray:
        expected = self.expected_at(arrivals)
        return expected.max(axis=1) - expected[np.arange(len(arrivals)), np.asarray(shown, dtype=np.int64)]

    def frozen_regret(self, frozen, arrivals: np.ndarray) -> np.ndarray:
        from recbandits.algos.candidates import CandidateSet

        positions = np.arange(len(self.arm_ids))
        movie_at_position = np.array([self.movie_of_arm[arm] for arm in self.arm_ids], dtype=np.int64)
        movies = np.empty(len(arrivals), dtype=np.int64)
        for begin in range(0, len(arrivals), 2048):
            chunk = self.arrival_users[arrivals[begin:begin + 2048]]
            decisions = frozen.decide([CandidateSet(context=self.contexts[user].astype(np.float64), arms=positions)
                                       for user in chunk])
            movies[begin:begin + len(chunk)] = movie_at_position[[decision.chosen for decision in decisions]]
        return self.regret(arrivals, movies.tolist())


def movielens_users(spec, context_dim: int, arm_ids: list[str]) -> MovieLensUsers:
    """The MF env's users: contexts, each user's rank request, who arrives when, and the expected rewards."""
    from recbandits.envs import MovieLensEnv
    from recbandits.envs._random import key_from_seed
    from recbandits.envs.core import PreferenceDrift

    env = MovieLensEnv(data_dir=spec.data_dir, rank=spec.rank or context_dim, num_movies=len(arm_ids))
    simulator = env.unwrapped.simulator
    factorization = simulator.factorization
    contexts = factorization.user_factors.astype(np.float32)
    if contexts.shape[1] != context_dim:
        raise ValueError(f"the env's users have {contexts.shape[1]} features, the service expects {context_dim}")
    movie_ids = [str(movie) for movie in factorization.item_ids]
    if arm_ids == [str(k) for k in range(len(arm_ids))]:
        movie_of_arm = {arm: k for k, arm in enumerate(arm_ids)}
    elif sorted(arm_ids) == sorted(movie_ids):
        movie_of_arm = {movie: k for k, movie in enumerate(movie_ids)}
    else:
        raise ValueError("the load test's movies are the env's: the service's arm ids must be 0..K-1 or the env's "
                         f"MovieLens movie ids ({', '.join(movie_ids[:5])}, ...); it has {', '.join(arm_ids[:5])}, ...")
    extra = {} if spec.top_k is None else {"top_k": spec.top_k}
    bodies = [orjson.dumps({"context": row.astype(np.float64).tolist(), **extra}) for row in contexts]
    arrival_users = np.random.default_rng([spec.seed, 1]).integers(len(contexts), size=spec.max_requests)
    expected = simulator.reward_model.expected(factorization.approx_ratings())
    arrival_expected = None
    if spec.drift_rate > 0:
        drift = PreferenceDrift(factorization.rank, spec.drift_rate)
        tastes = drift.along_one_path(key_from_seed(spec.seed), factorization.user_factors[arrival_users])
        arrival_expected = simulator.reward_model.expected(tastes @ factorization.item_factors.T)
    return MovieLensUsers(contexts, bodies, arrival_users, movie_of_arm, expected, arrival_expected, list(arm_ids),
                          spec.reward_noise)


class RankingUsers:
    """The ranking env's users: arrival i is sub-env i of one ``RankingSimulator`` of ``max_requests`` sub-envs
    (its user, candidates and click draws); candidates are named by their MovieLens movie ids."""

    def __init__(self, spec, context_dim: int, arm_dim: int, slate_size: int):
        from recbandits.envs import MovieLensRankingVectorEnv

        if spec.drift_rate > 0:
            raise ValueError("--drift-rate: the ranking users' tastes stand still (drift is simulated for the MF "
                             "env's users, a disjoint service)")
        if spec.reward_noise > 0:
            raise ValueError("--reward-noise: a ranking service's feedback is the users' clicks, not a noisy rating")
        rank = spec.rank or context_dim
        # The settings of `recbandits simulate --env movielens-ranking` (no demographics, no genres).
        env = MovieLensRankingVectorEnv(
            num_envs=spec.max_requests, data_dir=spec.data_dir, rank=rank, num_candidates=spec.num_candidates,
            slate_size=slate_size, choice_model=spec.choice_model, user_demographics=False, movie_genres=False,
            episode_length=None)
        observations, _ = env.reset(seed=spec.seed)
        self.simulator = env.simulator
        dims = (observations["global"].shape[1], observations["per_arm"].shape[2])
        if dims != (context_dim, arm_dim):
            raise ValueError(f"the ranking env's users and movies have {dims[0]} and {dims[1]} features (rank "
                             f"{rank}), the service expects {context_dim} and {arm_dim}: pass --rank (the "
                             "simulate run's --rank)")
        self.contexts = observations["global"].astype(np.float64)  # [N, g]
        self.candidate_features = observations["per_arm"].astype(np.float64)  # [N, C, p]
        self.candidate_ids = [[str(movie) for movie in row] for row in self.simulator.candidate_ids().tolist()]
        self.feedback_kind = self.simulator.feedback

    def body(self, index: int) -> bytes:
        candidates = [{"id": movie, "features": features}
                      for movie, features in zip(self.candidate_ids[index],
                                                 self.candidate_features[index].tolist(), strict=True)]
        return orjson.dumps({"context": self.contexts[index].tolist(), "candidates": candidates})

    def shown(self, index: int, answer: dict[str, Any]) -> tuple[int, ...]:
        position = {movie: k for k, movie in enumerate(self.candidate_ids[index])}
        return tuple(position[item["id"]] for item in answer["ranking"])

    def feedback(self, index: int, shown: tuple[int, ...], rng: np.random.Generator) -> dict[str, Any]:
        _, info = self.simulator.act(np.array([shown], dtype=np.int64), np.array([index]))
        if self.feedback_kind == "score_vector":
            return {"slot_rewards": info["slot_clicks"][0].astype(np.float64).tolist()}
        position = int(info["clicked_position"][0])
        return {"clicks": [position] if position >= 0 else []}

    def regret(self, arrivals: np.ndarray, shown: list[tuple[int, ...]]) -> np.ndarray:
        if not len(arrivals):
            return np.zeros(0)
        expected, optimal = self.simulator.slate_values(np.array(shown, dtype=np.int64), arrivals)
        return optimal - expected

    def frozen_regret(self, frozen, arrivals: np.ndarray) -> np.ndarray:
        from recbandits.algos.candidates import CandidateSet

        slates = []
        for begin in range(0, len(arrivals), 2048):
            chunk = arrivals[begin:begin + 2048]
            decisions = frozen.decide([CandidateSet(context=self.contexts[index],
                                                    arm_features=self.candidate_features[index]) for index in chunk])
            slates += [tuple(decision.slate) for decision in decisions]
        return self.regret(arrivals, slates)


def simulated_users(spec, policy_fields: dict[str, Any]) -> LoadTestUsers:
    """The world of users that fits the service's policy (``GET /v1/policy``'s ``policy``)."""
    if policy_fields["shape"] == "disjoint":
        return movielens_users(spec, policy_fields["context_dim"], policy_fields["arm_ids"])
    if policy_fields.get("slate_size"):
        return RankingUsers(spec, policy_fields["context_dim"], policy_fields["arm_dim"], policy_fields["slate_size"])
    raise ValueError("the load test simulates the MovieLens env (a disjoint service) or the ranking env (a "
                     "service with slate_size): this service is shared-shape without slates")
