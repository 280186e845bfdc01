"""Vowpal Wabbit's contextual bandits on the recbandits MovieLens envs: the open-source peer users name most.

VW learns through its Python API (``vowpalwabbit.Workspace``) with action-dependent features
(``--cb_explore_adf``): a ``shared`` line with the user's context (namespace ``s``) and one line per action
(namespace ``a``): on the MF env the movie's id, on the per-arm env the candidate's features. ``-q sa`` crosses
them, so VW fits one linear model of the context per movie (the model disjoint LinUCB fits), or one model of
the context x candidate features (recbandits' shared model with interaction features). Every step VW predicts a
probability per action, the action is drawn from it (a seeded numpy generator), the env steps, and VW learns
the chosen action's cost (minus its reward) with its probability. Regret is the env's exact ``info["regret"]``,
as for every other contender.

| ``algo`` | exploration | hyperparameters (defaults: VW's own) |
|---|---|---|
| ``vw-squarecb`` | SquareCB (Foster and Rakhlin 2020) | ``gamma_scale`` (10) |
| ``vw-egreedy`` | epsilon-greedy | ``epsilon`` (0.05) |
| ``vw-bag`` | bagging (online bootstrap, greedy per bag) | ``bag`` (5), ``epsilon`` (0) |
| ``vw-cover`` | online cover (Agarwal et al. 2014) | ``cover`` (5), ``psi`` (1) |

Every one also takes ``learning_rate`` (VW's ``-l``, 0.5) and ``power_t`` (0.5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

VW_ALGOS = ("vw-squarecb", "vw-egreedy", "vw-bag", "vw-cover")
VW_HYPERPARAMETERS = {
    "vw-squarecb": ("gamma_scale",),
    "vw-egreedy": ("epsilon",),
    "vw-bag": ("bag", "epsilon"),
    "vw-cover": ("cover", "psi"),
}
COMMON = ("learning_rate", "power_t")
EXPLORATION_ARGUMENTS = {"vw-squarecb": "--squarecb", "vw-egreedy": "", "vw-bag": "", "vw-cover": ""}
INTEGER = ("bag", "cover")


@dataclass
class VWBaselineConfig:
    algo: str
    data_dir: str | None = None
    env: str = "movielens"  # or "movielens-per-arm"
    env_config: dict[str, Any] = field(default_factory=lambda: {"rank": 20, "num_movies": 20})
    seed: int = 0
    settings: dict[str, float] = field(default_factory=dict)  # VW_HYPERPARAMETERS / COMMON names

    def __post_init__(self):
        if self.algo not in VW_ALGOS:
            raise ValueError(f"{self.algo!r} is not one of {', '.join(VW_ALGOS)}")
        allowed = (*VW_HYPERPARAMETERS[self.algo], *COMMON)
        for name, value in self.settings.items():
            if name not in allowed:
                raise ValueError(f"{self.algo} takes {', '.join(allowed)}, not {name}")
            if not (np.isfinite(value) and value >= 0) or (name in INTEGER and (value < 1 or value != int(value))):
                raise ValueError(f"{self.algo}: {name}={value:g} must be " +
                                 ("an integer >= 1" if name in INTEGER else "a number >= 0"))

    def arguments(self) -> str:
        """VW's command line."""
        parts = ["--cb_explore_adf", "-q sa", "--quiet", f"--random_seed {self.seed}",
                 EXPLORATION_ARGUMENTS[self.algo]]
        flags = {"gamma_scale": "--gamma_scale", "epsilon": "--epsilon", "bag": "--bag", "cover": "--cover",
                 "psi": "--psi", "learning_rate": "-l", "power_t": "--power_t"}
        for name, value in self.settings.items():
            parts.append(f"{flags[name]} {int(value) if name in INTEGER else value:g}")
        if self.algo == "vw-bag" and "bag" not in self.settings:
            parts.append("--bag 5")
        if self.algo == "vw-cover" and "cover" not in self.settings:
            parts.append("--cover 5")
        return " ".join(part for part in parts if part)


@dataclass
class VWTrace:
    samples: np.ndarray
    cumulative_regret: np.ndarray
    suboptimal: np.ndarray
    wall_time_s: float


def _features(values: np.ndarray, prefix: str) -> str:
    return " ".join(f"{prefix}{index}:{value:.9g}" for index, value in enumerate(values))


def _lines(observation, per_arm: bool, num_actions: int) -> list[str]:
    """VW's ADF example of one decision: the shared context, then one line per action."""
    if not per_arm:
        return [f"shared |s {_features(observation, 'c')}", *(f"|a m{action}" for action in range(num_actions))]
    return [f"shared |s {_features(observation['global'], 'c')}",
            *(f"|a {_features(features, 'f')}" for features in observation["per_arm"])]


def run_vw_baseline(config: VWBaselineConfig, steps: int) -> VWTrace:
    """``steps`` decisions of VW on one recbandits env seeded ``config.seed`` (one user per step)."""
    import vowpalwabbit

    from recbandits.envs import MovieLensPerArmVectorEnv, MovieLensVectorEnv

    per_arm = config.env == "movielens-per-arm"
    env_class = MovieLensPerArmVectorEnv if per_arm else MovieLensVectorEnv
    env = env_class(num_envs=1, data_dir=config.data_dir, episode_length=None, **config.env_config)
    observations, _ = env.reset(seed=config.seed)
    learner = vowpalwabbit.Workspace(config.arguments(), enable_logging=False)
    rng = np.random.default_rng(config.seed)
    num_actions = int(env.single_action_space.n)
    regret, suboptimal = np.empty(steps), np.empty(steps)
    started = time.perf_counter()
    try:
        for step in range(steps):
            observation = ({key: value[0] for key, value in observations.items()} if per_arm else observations[0])
            lines = _lines(observation, per_arm, num_actions)
            probabilities = np.asarray(learner.predict(lines), dtype=np.float64)
            action = int(rng.choice(num_actions, p=probabilities / probabilities.sum()))
            observations, rewards, _, _, info = env.step(np.array([action]))
            lines[action + 1] = f"0:{-float(rewards[0]):.9g}:{probabilities[action]:.9g} {lines[action + 1]}"
            learner.learn(lines)
            regret[step] = info["regret"][0]
            suboptimal[step] = action != int(info["optimal_action"][0])
    finally:
        learner.finish()
    wall_time = time.perf_counter() - started
    return VWTrace(np.arange(1, steps + 1), np.cumsum(regret), np.cumsum(suboptimal), wall_time)


def describe(config: VWBaselineConfig) -> str:
    return f"`{config.arguments().replace(f' --random_seed {config.seed}', '').replace(' --quiet', '')}`"


def settings_of(hyperparameters) -> dict[str, Any]:
    return {name: float(value) for name, value in hyperparameters}
