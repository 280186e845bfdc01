"""What every recbandits simulator shares: batched state, rewards, drift, and the Gymnasium wrappers.

Each simulator is written once, over a batch of ``num_envs`` sub-environments held in numpy arrays. The
single Gymnasium env is that simulator with a batch of one; the natively vectorized env is the same
simulator with a batch of N. Randomness is counter-based (see ``_random``), so sub-env ``i`` of a vector env
reset with seed ``s`` makes exactly the transitions of a single env reset with seed ``s + i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from recbandits.envs import _random

RewardType = Literal["rating", "click"]


@dataclass(frozen=True)
class RewardModel:
    """How an approximated rating becomes a reward.

    ``rating``: the approximated rating plus optional Gaussian noise (std ``noise_std``).
    ``click``: a Bernoulli click with probability ``clip(rating / rating_scale, 0, 1)``.
    """

    reward_type: RewardType = "rating"
    noise_std: float = 0.0
    rating_scale: float = 5.0

    def __post_init__(self):
        if self.reward_type not in ("rating", "click"):
            raise ValueError(f"reward_type={self.reward_type!r} must be 'rating' or 'click'")
        if not np.isfinite(self.noise_std) or self.noise_std < 0:
            raise ValueError(f"reward_noise_std={self.noise_std} must be a finite number >= 0")
        if self.reward_type == "click" and self.noise_std > 0:
            raise ValueError("reward_noise_std applies to rating rewards; a click reward is already random")

    def expected(self, ratings: np.ndarray) -> np.ndarray:
        """Expected reward of approximated ratings: the quantity regret is measured in."""
        if self.reward_type == "click":
            return click_probability(ratings, self.rating_scale)
        return ratings

    def sample(self, expected: np.ndarray, keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
        if self.reward_type == "click":
            return (_random.uniform(keys, counters, _random.STREAM_CLICK, 1)[:, 0] < expected).astype(np.float64)
        if self.noise_std > 0:
            return expected + self.noise_std * _random.normal(keys, counters, _random.STREAM_REWARD_NOISE, 1)[:, 0]
        return expected


def click_probability(ratings: np.ndarray, rating_scale: float) -> np.ndarray:
    """Probability that a user clicks (is attracted by) a movie with this approximated rating."""
    return np.clip(ratings / rating_scale, 0.0, 1.0)


class PreferenceDrift:
    """Users' tastes turn slowly in the latent space: reward = (R_t u) . v with R_t a random walk on rotations.

    The observation keeps showing the user's profile u, so the reward of each movie as a function of the
    observed context changes over time: what a learner must track (forgetting factors exist for this).
    Each step multiplies R by the Cayley transform of a random skew-symmetric matrix scaled so that a vector
    turns by about ``rate`` radians per step. R is exactly a rotation, so ratings keep their scale.
    """

    def __init__(self, rank: int, rate: float):
        if not np.isfinite(rate) or rate < 0:
            raise ValueError(f"drift_rate={rate} must be a finite number >= 0 (radians per step)")
        self.rank = rank
        self.rate = rate
        self._upper = np.triu_indices(rank, k=1)
        self.rotations = np.empty((0, rank, rank))

    @classmethod
    def for_rate(cls, rank: int, rate: float) -> PreferenceDrift | None:
        """A drift for ``rate`` after validating it; None for a stationary world (rate 0) to skip the work."""
        drift = cls(rank, rate)
        return drift if rate > 0 else None

    def reset(self, num_envs: int) -> None:
        self.rotations = np.broadcast_to(np.eye(self.rank), (num_envs, self.rank, self.rank)).copy()

    def apply(self, user_vectors: np.ndarray, idx) -> np.ndarray:
        """The drifted taste vectors R_t u of the given sub-envs."""
        return np.einsum("nij,nj->ni", self.rotations[idx], user_vectors)

    def advance(self, keys: np.ndarray, counters: np.ndarray, idx) -> None:
        self.rotations[idx] = self.rotations[idx] @ self.step_rotations(keys, counters)

    def step_rotations(self, keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
        """One step's rotation [N, rank, rank] for each (key, counter): the Cayley transform of a random
        skew-symmetric matrix."""
        noise = _random.normal(keys, counters, _random.STREAM_DRIFT, len(self._upper[0]))
        skew = np.zeros((len(keys), self.rank, self.rank))
        skew[:, self._upper[0], self._upper[1]] = noise
        skew -= skew.transpose(0, 2, 1)
        half_step = skew * (self.rate / (2.0 * np.sqrt(max(self.rank - 1, 1))))
        identity = np.eye(self.rank)
        return np.linalg.solve(identity - half_step, identity + half_step)

    def along_one_path(self, key: np.uint64, vectors: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """``vectors[i]`` turned by R_i [N, rank], where R_0 = I and R_{i+1} = R_i times step i's rotation: one
        world that turns a step per arrival, the arrivals' users sharing it (the load test's drifting users)."""
        turned = np.empty(vectors.shape, dtype=np.float64)
        rotation = np.eye(self.rank)
        for begin in range(0, len(vectors), chunk):
            counters = np.arange(begin, min(begin + chunk, len(vectors)), dtype=np.uint64)
            turns = self.step_rotations(np.full(len(counters), key, dtype=np.uint64), counters)
            for offset, turn in enumerate(turns):
                turned[begin + offset] = rotation @ vectors[begin + offset]
                rotation = rotation @ turn
        return turned


class BatchSimulator:
    """State and dynamics of ``num_envs`` independent bandit sub-environments.

    Subclasses declare ``single_observation_space`` / ``single_action_space`` and implement
    ``_draw_contexts``, ``observations``, ``_validate_actions``, ``_act`` and ``oracle_actions``. ``idx`` is
    ``slice(None)`` (all sub-envs, the fast path) or an index array of the sub-envs concerned.
    """

    single_observation_space: gym.Space
    single_action_space: gym.Space

    def __init__(self, num_envs: int, reward_model: RewardModel, drift: PreferenceDrift | None):
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs} must be at least 1")
        self.num_envs = num_envs
        self.reward_model = reward_model
        self.drift = drift
        self.keys = np.zeros(num_envs, dtype=np.uint64)
        self.counters = np.full(num_envs, -1, dtype=np.int64)

    def seed(self, keys: np.ndarray) -> None:
        """Start every sub-env afresh from its key: draw counters, drift."""
        self.keys = np.asarray(keys, dtype=np.uint64).reshape(self.num_envs)
        self.counters = np.full(self.num_envs, -1, dtype=np.int64)
        if self.drift is not None:
            self.drift.reset(self.num_envs)

    def next_contexts(self) -> None:
        """Every sub-env moves on to its next context (the next user, and candidates where there are any)."""
        self.counters += 1
        self._draw_contexts()

    def act(self, actions: np.ndarray, idx=slice(None)) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Rewards and info arrays for the actions of the sub-envs ``idx``; drift moves one step for them."""
        rewards, info = self._act(actions, idx)
        if self.drift is not None:
            self.drift.advance(self.keys[idx], self.counters[idx], idx)
        return rewards, info

    def check_actions(self, actions: Any) -> np.ndarray:
        """The actions as an array of the batch action space's shape, or a ValueError saying what is wrong."""
        expected_shape = (self.num_envs, *(self.single_action_space.shape or ()))
        try:
            array = np.asarray(actions)
        except Exception as error:  # noqa: BLE001 - any unconvertible input is the caller's mistake
            raise ValueError(f"action {actions!r} is not an array of integers: {error}") from None
        if array.size != int(np.prod(expected_shape)):
            raise ValueError(
                f"action has shape {array.shape}; expected {expected_shape} for {self.single_action_space}"
            )
        if not (
            np.issubdtype(array.dtype, np.integer)
            or (array.dtype.kind == "f" and np.all(array == np.round(array)))
        ):
            raise ValueError(f"action {actions!r} must be integers for {self.single_action_space}")
        array = array.reshape(expected_shape).astype(np.int64)
        self._validate_actions(array)
        return array

    # Subclass hooks -----------------------------------------------------------------------------------
    def _draw_contexts(self) -> None:
        raise NotImplementedError

    def observations(self):
        raise NotImplementedError

    def _validate_actions(self, actions: np.ndarray) -> None:
        raise NotImplementedError

    def _act(self, actions: np.ndarray, idx) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Sampled rewards and the info arrays of the sub-envs ``idx``, before drift moves."""
        raise NotImplementedError

    def oracle_actions(self) -> np.ndarray:
        """The optimal action of every sub-env for its current context."""
        raise NotImplementedError

    def oracle_info(self) -> dict[str, np.ndarray]:
        """The oracle for the current contexts: optimal action and its expected reward."""
        raise NotImplementedError


def check_action_range(actions: np.ndarray, high: int, what: str) -> None:
    """Reject actions outside [0, high) with the first offending value and where it is."""
    bad = (actions < 0) | (actions >= high)
    if bad.any():
        position = np.argwhere(bad)[0]
        value = actions[tuple(position)]
        where = f" (sub-env {position[0]})" if actions.shape[0] > 1 else ""
        raise ValueError(f"action {value}{where} is out of range: choose {what} in [0, {high})")


def _unbatch(batch) -> Any:
    if isinstance(batch, dict):
        return {key: _unbatch(value) for key, value in batch.items()}
    return batch[0]


class BanditEnv(gym.Env):
    """A single Gymnasium env over a batch-of-one simulator. Episodes are sessions of ``episode_length``
    interactions, then truncated; ``reset()`` without a seed starts the next session in the same world
    (users keep arriving, drift continues), ``reset(seed=...)`` starts the world afresh."""

    metadata = {"render_modes": []}

    def __init__(self, simulator: BatchSimulator, episode_length: int | None):
        if episode_length is not None and episode_length < 1:
            raise ValueError(f"episode_length={episode_length} must be at least 1 (or None for endless episodes)")
        self.simulator = simulator
        self.episode_length = episode_length
        self.observation_space = simulator.single_observation_space
        self.action_space = simulator.single_action_space
        self._episode_steps = 0
        self._world_started = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or not self._world_started:
            self.simulator.seed(np.array([_random.key_from_generator(self.np_random)]))
            self._world_started = True
        self.simulator.next_contexts()
        self._episode_steps = 0
        return _unbatch(self.simulator.observations()), _unbatch(self.simulator.oracle_info())

    def step(self, action):
        if not self._world_started:
            raise gym.error.ResetNeeded("Cannot call step() before reset()")
        actions = self.simulator.check_actions([action])
        rewards, info = self.simulator.act(actions)
        self.simulator.next_contexts()
        self._episode_steps += 1
        truncated = self.episode_length is not None and self._episode_steps >= self.episode_length
        return _unbatch(self.simulator.observations()), float(rewards[0]), False, truncated, _unbatch(info)

    def oracle_action(self):
        """The optimal action for the current observation (what the oracle reference policy plays)."""
        return _unbatch(self.simulator.oracle_actions())


class BanditVectorEnv(VectorEnv):
    """The natively vectorized env: one simulator over ``num_envs`` sub-envs, numpy over the whole batch.

    Autoreset follows Gymnasium's default (next step): the step after a sub-env's episode ends starts its
    next episode, ignoring that sub-env's action, with reward 0 and its info entries masked out.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, simulator: BatchSimulator, episode_length: int | None):
        if episode_length is not None and episode_length < 1:
            raise ValueError(f"episode_length={episode_length} must be at least 1 (or None for endless episodes)")
        self.simulator = simulator
        self.num_envs = simulator.num_envs
        self.episode_length = episode_length
        self.single_observation_space = simulator.single_observation_space
        self.single_action_space = simulator.single_action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._episode_steps = np.zeros(self.num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(self.num_envs, dtype=bool)
        self._world_started = False
        self._all_true = np.ones(self.num_envs, dtype=bool)
        self._all_false = np.zeros(self.num_envs, dtype=bool)

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        if seed is not None or not self._world_started:
            if seed is None:
                seeds = [None] * self.num_envs
            elif isinstance(seed, (int, np.integer)):
                seeds = [int(seed) + i for i in range(self.num_envs)]
            else:
                seeds = list(seed)
                if len(seeds) != self.num_envs:
                    raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} sub-envs")
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seeds[0])
            self.simulator.seed(np.array([_random.key_from_seed(s) for s in seeds], dtype=np.uint64))
            self._world_started = True
        self.simulator.next_contexts()
        self._episode_steps[:] = 0
        self._needs_reset[:] = False
        return self.simulator.observations(), self._with_masks(self.simulator.oracle_info(), self._all_true)

    def step(self, actions):
        if not self._world_started:
            raise gym.error.ResetNeeded("Cannot call step() before reset()")
        actions = self.simulator.check_actions(actions)
        if not self._needs_reset.any():
            rewards, info = self.simulator.act(actions)
            mask = self._all_true
            self._episode_steps += 1
        else:
            # Sub-envs whose episode ended last step start their next one; the others act.
            mask = ~self._needs_reset
            active = np.flatnonzero(mask)
            active_rewards, active_info = self.simulator.act(actions[active], active)
            rewards = np.zeros(self.num_envs)
            rewards[active] = active_rewards
            info = {}
            for key, values in active_info.items():
                full = np.zeros((self.num_envs, *values.shape[1:]), dtype=values.dtype)
                full[active] = values
                info[key] = full
            self._episode_steps[active] += 1
            self._episode_steps[self._needs_reset] = 0
        # Acting sub-envs move on to their next user; resetting ones start their episode with one.
        self.simulator.next_contexts()
        if self.episode_length is None:
            truncated = self._all_false.copy()
        else:
            truncated = self._episode_steps >= self.episode_length
        self._needs_reset = truncated.copy()
        terminated = self._all_false.copy()
        return self.simulator.observations(), rewards, terminated, truncated, self._with_masks(info, mask)

    def oracle_action(self) -> np.ndarray:
        """The optimal action of every sub-env for its current observation."""
        return self.simulator.oracle_actions()

    @staticmethod
    def _with_masks(info: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
        # Gymnasium's vector info convention: "_key" says which sub-envs the entry of "key" is valid for.
        masked = dict(info)
        for key in info:
            masked[f"_{key}"] = mask
        return masked
