"""Reference policies that bound every regret curve: random (the floor) and oracle (the ceiling)."""

from __future__ import annotations

from dataclasses import dataclass

from recbandits.envs.core import BanditVectorEnv

REFERENCE_POLICIES = ("random", "oracle")


@dataclass(frozen=True)
class RolloutResult:
    policy: str
    env_steps: int
    mean_reward: float
    mean_regret: float
    cumulative_regret: float
    suboptimal_rate: float


def rollout_reference_policy(env: BanditVectorEnv, policy: str, num_steps: int, seed: int = 0) -> RolloutResult:
    """Play `policy` on a vector env for at least `num_steps` env steps; regret comes from the env's oracle."""
    if policy not in REFERENCE_POLICIES:
        raise ValueError(f"policy={policy!r} must be one of {', '.join(REFERENCE_POLICIES)}")
    env.reset(seed=seed)
    env.action_space.seed(seed)
    rewards = regrets = suboptimal = counted = 0.0
    for _ in range(-(-num_steps // env.num_envs)):
        actions = env.oracle_action() if policy == "oracle" else env.action_space.sample()
        _, reward, _, _, info = env.step(actions)
        valid = info["_regret"]
        rewards += float(reward[valid].sum())
        regrets += float(info["regret"][valid].sum())
        suboptimal += float((info["regret"][valid] > 0).sum())
        counted += int(valid.sum())
    return RolloutResult(policy, int(counted), rewards / counted, regrets / counted, regrets, suboptimal / counted)
