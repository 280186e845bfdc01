"""Bandit metrics: what env runners count per step and how the algorithm turns the counts into results.

Env runners log sums (reward, regret, suboptimal decisions, steps); ``summarize`` derives the means from the
sums aggregated over all runners, so a mean is weighted by steps, never an average of runner averages.
Everything lands in ``train()`` results under ``env_runners/`` (RLlib's metrics structure), where
TensorBoard and Tune pick it up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REWARD_SUM = "reward_sum"
REGRET_SUM = "regret_sum"
SUBOPTIMAL_SUM = "suboptimal_sum"
STEPS = "steps"
CUMULATIVE_REGRET = "cumulative_regret"
SAMPLE_TIME = "sample_time_s"
# CPU seconds of the sampling thread: against SAMPLE_TIME it shows whether a runner waited for a CPU, and against
# the same work on an idle machine whether the hardware itself slowed down (busy neighbours sharing the core).
SAMPLE_CPU_TIME = "sample_cpu_time_s"

MEAN_REWARD = "mean_reward"
PER_STEP_REGRET = "per_step_regret"
SUBOPTIMAL_RATE = "suboptimal_arm_rate"
ENV_STEPS_PER_S = "env_steps_per_s"

# A decision is suboptimal when its expected regret exceeds rounding noise (ties with the oracle are optimal).
# For a slate: when its expected clicks are below the oracle slate's. Under the cascade model expected clicks
# depend on the set shown, not its order (1 - prod(1 - a_k)), so a slate is suboptimal exactly when it is not
# the set of the slate_size most attractive candidates; under the position-based model the order counts too.
# Near-ties make this rate high while regret is low: one swap of the 5th and 6th best counts.
SUBOPTIMAL_TOLERANCE = 1e-9


@dataclass
class StepTracker:
    """Running sums over the steps of one ``sample`` call."""

    reward: float = 0.0
    regret: float = 0.0
    suboptimal: int = 0
    steps: int = 0

    def add(self, rewards: np.ndarray, infos: dict, acted: np.ndarray) -> None:
        """Count the sub-envs that acted this step (autoreset steps are not decisions)."""
        regret = infos["regret"][acted]
        self.reward += float(np.asarray(rewards)[acted].sum())
        self.regret += float(regret.sum())
        self.suboptimal += int((regret > SUBOPTIMAL_TOLERANCE).sum())
        self.steps += int(acted.sum())

    def sums(self) -> dict[str, float]:
        return {REWARD_SUM: self.reward, REGRET_SUM: self.regret, SUBOPTIMAL_SUM: self.suboptimal, STEPS: self.steps}


def summarize(runner_results: dict, wall_time_s: float) -> dict[str, float]:
    """Means and rates of one iteration from the runners' aggregated sums."""
    steps = runner_results.get(STEPS, 0) or 0
    if not steps:
        return {}
    return {
        MEAN_REWARD: runner_results[REWARD_SUM] / steps,
        PER_STEP_REGRET: runner_results[REGRET_SUM] / steps,
        SUBOPTIMAL_RATE: runner_results[SUBOPTIMAL_SUM] / steps,
        ENV_STEPS_PER_S: steps / wall_time_s if wall_time_s > 0 else float("nan"),
    }
