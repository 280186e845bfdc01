"""The ranking bandit: place a slate of ``slate_size`` movies out of ``num_candidates``; users click by a choice model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import batch_space

from recbandits.data.movielens import MovieLensData
from recbandits.envs import _random
from recbandits.envs.core import (
    BanditEnv,
    BanditVectorEnv,
    RewardModel,
    check_action_range,
    click_probability,
)
from recbandits.envs.factorization import MovieSelection
from recbandits.envs.per_arm import CandidateFeatures, CandidateSimulator

ChoiceModel = Literal["cascade", "position_based"]
Feedback = Literal["cascading", "score_vector"]
# What each choice model reveals by default: the cascade's first click (and so the slots scanned above it), the
# position-based model's click or not of every slot.
DEFAULT_FEEDBACK: dict[str, str] = {"cascade": "cascading", "position_based": "score_vector"}


def slate_expected_clicks(
    slate_attraction: np.ndarray, choice_model: ChoiceModel, examination: np.ndarray
) -> np.ndarray:
    """Expected clicks of slates, given the attraction probability of the movie in each slot, shape (n, L)."""
    if choice_model == "cascade":
        # The user scans down and clicks the first attractive movie: at most one click.
        return 1.0 - np.prod(1.0 - slate_attraction, axis=1)
    return slate_attraction @ examination


class SlateSpace(spaces.MultiDiscrete):
    """Slates of ``slate_size`` distinct candidates out of ``num_candidates``, top slot first.

    A ``MultiDiscrete([num_candidates] * slate_size)`` whose samples and members never repeat a candidate;
    with ``num_slates`` it is the batch of that many slates a vector env takes.
    """

    def __init__(self, num_candidates: int, slate_size: int, num_slates: int | None = None, seed=None):
        shape = (slate_size,) if num_slates is None else (num_slates, slate_size)
        super().__init__(np.full(shape, num_candidates), dtype=np.int64, seed=seed)
        self.num_candidates, self.slate_size, self.num_slates = num_candidates, slate_size, num_slates

    def sample(self, mask=None, probability=None) -> np.ndarray:
        if mask is not None or probability is not None:
            raise NotImplementedError("SlateSpace.sample() does not take a mask or probabilities")
        rows = 1 if self.num_slates is None else self.num_slates
        slates = np.argsort(self.np_random.random((rows, self.num_candidates)), axis=1)[:, : self.slate_size]
        return slates[0] if self.num_slates is None else slates

    def contains(self, x) -> bool:
        if not super().contains(x):
            return False
        ordered = np.sort(np.asarray(x).reshape(-1, self.slate_size), axis=1)
        return not (ordered[:, 1:] == ordered[:, :-1]).any()

    def __repr__(self) -> str:
        batch = "" if self.num_slates is None else f", num_slates={self.num_slates}"
        return f"SlateSpace(num_candidates={self.num_candidates}, slate_size={self.slate_size}{batch})"

    def __eq__(self, other) -> bool:
        return isinstance(other, SlateSpace) and (other.num_candidates, other.slate_size, other.num_slates) == (
            self.num_candidates, self.slate_size, self.num_slates)


@batch_space.register(SlateSpace)
def _batch_slate_space(space: SlateSpace, n: int = 1) -> SlateSpace:
    return SlateSpace(space.num_candidates, space.slate_size, n, seed=copy.deepcopy(space.np_random))


class RankingSimulator(CandidateSimulator):
    """Batched dynamics of the ranking env (see ``MovieLensRankingEnv``)."""

    def __init__(self, features, num_envs, num_candidates, slate_size, choice_model, eta, feedback, drift_rate):
        # Settings as ``checked_settings`` returns them (``_ranking_simulator`` checks before loading data).
        # Clicks are the reward; the click model turns ratings into attraction probabilities.
        reward_model = RewardModel("click", 0.0, features.factorization.rating_scale)
        super().__init__(features, num_envs, num_candidates, reward_model, drift_rate)
        self.slate_size = slate_size
        self.choice_model = choice_model
        self.feedback = feedback
        self.examination = 1.0 / np.arange(1, slate_size + 1, dtype=np.float64) ** eta
        self.single_action_space = SlateSpace(num_candidates, slate_size)

    def _validate_actions(self, actions: np.ndarray) -> None:
        check_action_range(actions, self.num_candidates, "candidate indices")
        ordered = np.sort(actions, axis=1)
        repeats = ordered[:, 1:] == ordered[:, :-1]
        if repeats.any():
            row, column = np.argwhere(repeats)[0]
            where = f" (sub-env {row})" if len(actions) > 1 else ""
            raise ValueError(
                f"slate {actions[row].tolist()}{where} places candidate {ordered[row, column]} twice: "
                "a slate holds distinct candidates"
            )

    @staticmethod
    def checked_settings(num_candidates, slate_size, choice_model, eta, feedback) -> str:
        """Validate the slate and click settings (before any data is loaded); return the feedback to give."""
        if choice_model not in DEFAULT_FEEDBACK:
            raise ValueError(f"choice_model={choice_model!r} must be 'cascade' or 'position_based'")
        if feedback is None:
            feedback = DEFAULT_FEEDBACK[choice_model]
        if feedback not in ("cascading", "score_vector"):
            raise ValueError(f"feedback={feedback!r} must be 'cascading' or 'score_vector'")
        if choice_model == "position_based" and feedback == "cascading":
            raise ValueError(
                "feedback='cascading' (the first click only) is the cascade model's observation: under "
                "choice_model='position_based' a slot above the first click may not have been examined, and the "
                "clicks below it count in the reward but not in the feedback; use feedback='score_vector' (its "
                "default)")
        if not np.isfinite(eta) or eta < 0:
            raise ValueError(f"eta={eta} must be a finite number >= 0 (examination decays as 1/k**eta)")
        if not 1 <= slate_size <= num_candidates:
            raise ValueError(f"slate_size={slate_size} must be between 1 and num_candidates={num_candidates}")
        return feedback

    def _attraction(self, idx=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        ratings = self.candidate_ratings(idx)
        return ratings, click_probability(ratings, self.factorization.rating_scale)

    def expected_rewards(self, idx=slice(None)) -> np.ndarray:
        """Each candidate's attraction (its click probability once examined) for the current user, (n, candidates)."""
        return self._attraction(idx)[1]

    def _optimal_slates(self, attraction: np.ndarray) -> np.ndarray:
        # Both choice models are maximized by the most attractive movies in decreasing order: for the
        # position-based model by the rearrangement inequality (examination decreases with position); for
        # the cascade any order of the top movies is optimal and we report the sorted one.
        return np.argsort(-attraction, axis=1, kind="stable")[:, : self.slate_size]

    def slate_values(self, slates: np.ndarray, idx=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """(expected clicks of ``slates`` [n, slate_size], expected clicks of the oracle slate) for the current
        users and candidates of the sub-envs ``idx``."""
        attraction = self._attraction(idx)[1]
        expected = slate_expected_clicks(np.take_along_axis(attraction, slates, axis=1), self.choice_model,
                                         self.examination)
        return expected, self._oracle(attraction)[1]

    def _oracle(self, attraction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the oracle slates, their expected clicks) given each candidate's attraction."""
        optimal_slate = self._optimal_slates(attraction)
        optimal = np.take_along_axis(attraction, optimal_slate, axis=1)
        return optimal_slate, slate_expected_clicks(optimal, self.choice_model, self.examination)

    def _act(self, actions, idx):
        ratings, attraction = self._attraction(idx)
        slate_attraction = np.take_along_axis(attraction, actions, axis=1)
        draws = _random.uniform(self.keys[idx], self.counters[idx], _random.STREAM_CLICK, self.slate_size)
        if self.choice_model == "cascade":
            attractive = draws < slate_attraction
            clicked_any = attractive.any(axis=1)
            first = np.argmax(attractive, axis=1)
            clicks = np.zeros_like(attractive)
            clicks[np.flatnonzero(clicked_any), first[clicked_any]] = True
        else:
            clicks = draws < slate_attraction * self.examination
        expected = slate_expected_clicks(slate_attraction, self.choice_model, self.examination)
        optimal_slate, optimal_reward = self._oracle(attraction)
        info = {
            "user_id": self.factorization.user_ids[self.users[idx]],
            "candidate_ids": self.candidate_ids(idx),
            "expected_reward": expected,
            "optimal_action": optimal_slate,
            "optimal_reward": optimal_reward,
            "regret": optimal_reward - expected,
        }
        if self.feedback == "score_vector":
            info["slot_clicks"] = clicks.astype(np.int64)
        else:
            clicked_any = clicks.any(axis=1)
            position = np.where(clicked_any, np.argmax(clicks, axis=1), -1)
            slate_ratings = np.take_along_axis(ratings, actions, axis=1)
            clicked_rating = np.take_along_axis(slate_ratings, np.maximum(position, 0)[:, None], axis=1)[:, 0]
            info["clicked_position"] = position
            info["clicked_value"] = np.where(clicked_any, clicked_rating, 0.0)
        return clicks.sum(axis=1).astype(np.float64), info

    def oracle_actions(self) -> np.ndarray:
        return self._optimal_slates(self._attraction()[1])

    def oracle_info(self) -> dict[str, np.ndarray]:
        optimal_slate, optimal_reward = self._oracle(self._attraction()[1])
        return {
            "optimal_action": optimal_slate, "optimal_reward": optimal_reward, "candidate_ids": self.candidate_ids()
        }


def _ranking_simulator(num_envs, data_dir, rank, num_candidates, slate_size, choice_model, eta, feedback,
                       movie_selection, num_movies, user_demographics, movie_genres, drift_rate) -> RankingSimulator:
    feedback = RankingSimulator.checked_settings(num_candidates, slate_size, choice_model, eta, feedback)
    features = CandidateFeatures(data_dir, rank, movie_selection, num_movies, user_demographics, movie_genres)
    return RankingSimulator(features, num_envs, num_candidates, slate_size, choice_model, eta, feedback, drift_rate)


class MovieLensRankingEnv(BanditEnv):
    """Rank a slate of movies for an arriving user, who clicks following a choice model.

    Each step a user arrives with ``num_candidates`` distinct candidate movies drawn from the catalogue; the
    agent places ``slate_size`` of them in order. The attraction probability of movie j for user i is
    ``clip(u_i . v_j / 5, 0, 1)`` (the rank-``rank`` SVD rating scaled to [0, 1]). Users then behave by
    ``choice_model``:

    - ``"cascade"``: scan the slate top-down and click the first attractive movie, or none (at most one click);
      expected clicks ``1 - prod_k (1 - a_k)``.
    - ``"position_based"``: examine slot k with probability ``1 / k**eta`` and click an examined movie with its
      attraction probability, independently per slot; expected clicks ``sum_k a_k / k**eta``.

    | Observation | ``Dict(global=Box((global_dim,)), per_arm=Box((num_candidates, arm_dim)))`` |
    | ``global``, ``per_arm`` | as in ``MovieLensPerArmEnv`` |
    | Action | ``SlateSpace(num_candidates, slate_size)``: candidate indices from top to bottom |
    | ``SlateSpace`` | a ``MultiDiscrete([num_candidates] * slate_size)`` without repeats |
    | Reward | number of clicks on the slate (0 is the no-click outcome) |
    | Episode end | never terminates; truncated after ``episode_length`` steps |

    The oracle is the slate of highest expected clicks: the most attractive candidates in decreasing order.
    A slate counts as suboptimal (``suboptimal_arm_rate``) when its expected clicks are below the oracle's: under
    the cascade model, when it is not the set of the ``slate_size`` most attractive candidates (order does not
    change expected clicks there); under the position-based model, when the set or its order differs.
    Info keys after ``step``: ``user_id``, ``candidate_ids``, ``expected_reward`` (expected clicks of the slate),
    ``optimal_action`` (the oracle slate), ``optimal_reward``, ``regret`` (exact), and the feedback:
    with ``feedback="cascading"`` ``clicked_position`` (slot of the first click, -1 for none) and
    ``clicked_value`` (the clicked movie's rating, 0 for none); with ``feedback="score_vector"``
    ``slot_clicks`` (0/1 per slot).

    | Parameter | Meaning |
    | ``num_candidates``, ``slate_size`` | candidates per step, slots per slate (``slate_size <= num_candidates``) |
    | ``choice_model``, ``eta`` | ``"cascade"`` or ``"position_based"``; examination decay exponent of the latter |
    | ``feedback`` | ``"cascading"`` or ``"score_vector"``; None: the choice model's own (``DEFAULT_FEEDBACK``) |
    | ``feedback`` (position-based) | ``"score_vector"`` only: the position-based model has no cascading feedback |
    | others | as in ``MovieLensPerArmEnv`` |
    """

    def __init__(
        self,
        data_dir: str | Path | MovieLensData | None = None,
        rank: int = 20,
        num_candidates: int = 20,
        slate_size: int = 5,
        choice_model: ChoiceModel = "cascade",
        eta: float = 1.0,
        feedback: Feedback | None = None,
        movie_selection: MovieSelection = "all",
        num_movies: int | None = None,
        user_demographics: bool | None = None,
        movie_genres: bool = True,
        drift_rate: float = 0.0,
        episode_length: int | None = 1000,
    ):
        simulator = _ranking_simulator(1, data_dir, rank, num_candidates, slate_size, choice_model, eta, feedback,
                                       movie_selection, num_movies, user_demographics, movie_genres, drift_rate)
        super().__init__(simulator, episode_length)


class MovieLensRankingVectorEnv(BanditVectorEnv):
    """``MovieLensRankingEnv`` natively vectorized over ``num_envs`` sub-envs (same parameters, same transitions)."""

    def __init__(
        self,
        num_envs: int = 1,
        data_dir: str | Path | MovieLensData | None = None,
        rank: int = 20,
        num_candidates: int = 20,
        slate_size: int = 5,
        choice_model: ChoiceModel = "cascade",
        eta: float = 1.0,
        feedback: Feedback | None = None,
        movie_selection: MovieSelection = "all",
        num_movies: int | None = None,
        user_demographics: bool | None = None,
        movie_genres: bool = True,
        drift_rate: float = 0.0,
        episode_length: int | None = 1000,
    ):
        simulator = _ranking_simulator(num_envs, data_dir, rank, num_candidates, slate_size, choice_model, eta,
                                       feedback, movie_selection, num_movies, user_demographics, movie_genres,
                                       drift_rate)
        super().__init__(simulator, episode_length)
