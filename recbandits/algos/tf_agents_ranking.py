"""TF-Agents' ``RankingAgent``, run the way its example runs it, on recbandits' ranking env (for ``compare``).

The agent and the loop follow TF-Agents' ranking example (``tf_agents/bandits/agents/examples/v2/
train_eval_ranking.py`` with ``trainer.py``): a ``RankingAgent`` over the common-tower scoring network
``create_feed_forward_common_tower_network(obs_spec, (40, 10), (40, 10), (20, 10))``, Adam at 0.05, a
``DynamicStepDriver`` of batch 128 x 2 steps per loop into a replay buffer through the example's transform (the
chosen items' features in slate order), then ``agent.train`` on the loop's experience, both ``common.function``.

| ``algo`` | the agent's ``policy_type`` |
|---|---|
| ``tfa-ranking`` | ``COSINE_DISTANCE`` (the agent's default: later slots penalize items similar to those placed) |
| ``tfa-ranking-descending`` | ``DESCENDING_SCORES`` (the top scores in order) |

The environment is not TF-Agents' ``RankingPyEnvironment`` (synthetic users and items with its own click
models) but recbandits' ``MovieLensRankingVectorEnv`` behind a TF-Agents ``BanditPyEnvironment``: the same
MovieLens users, candidates, click model and seeds as recbandits' own cascading ranker, so both learn the same
problem and regret is exact, the env's ``info["regret"]`` (expected clicks of the optimal slate minus those of
the slate shown). Feedback is TF-Agents' format of the env's: ``cascading`` as ``{chosen_index, chosen_value}``
(the clicked slot, ``num_slots`` when none; value 1 for a click, as TF-Agents' env gives), ``score_vector`` as
each slot's click.

TensorFlow and TF-Agents are imported inside the functions, so importing ``recbandits.algos`` stays cheap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recbandits.algos.metrics import SUBOPTIMAL_TOLERANCE
from recbandits.worker_env import set_worker_env

set_worker_env()  # before TensorFlow is first imported

RANKING_POLICIES = {"tfa-ranking": "COSINE_DISTANCE", "tfa-ranking-descending": "DESCENDING_SCORES"}
# As train_eval_ranking.py ships them.
EXAMPLE = {"learning_rate": 0.05, "batch_size": 128, "steps_per_loop": 2,
           "towers": ((40, 10), (40, 10), (20, 10))}  # global, per-arm, common layers


@dataclass
class TFAgentsRankingConfig:
    algo: str = "tfa-ranking"
    data_dir: str | None = None
    env_config: dict[str, Any] = field(default_factory=dict)  # MovieLensRankingVectorEnv's settings
    seed: int = 0
    learning_rate: float = EXAMPLE["learning_rate"]
    batch_size: int = EXAMPLE["batch_size"]
    steps_per_loop: int = EXAMPLE["steps_per_loop"]

    def __post_init__(self):
        if self.algo not in RANKING_POLICIES:
            raise ValueError(f"algo={self.algo!r} must be one of {', '.join(RANKING_POLICIES)}")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"{self.algo}: learning_rate={self.learning_rate:g} must be a number > 0")

    @property
    def samples_per_loop(self) -> int:
        return self.batch_size * self.steps_per_loop


@dataclass
class RankingTrace:
    """One entry per training loop: cumulative exact regret and suboptimal slates over the samples so far."""

    samples: np.ndarray
    cumulative_regret: np.ndarray
    suboptimal: np.ndarray
    wall_time_s: float


def _ranking_py_environment(config: TFAgentsRankingConfig):
    """recbandits' ranking env as a batched TF-Agents ``BanditPyEnvironment`` that records each sample's regret."""
    from tf_agents.bandits.environments import bandit_py_environment
    from tf_agents.bandits.specs import utils as bandit_spec_utils
    from tf_agents.specs import array_spec
    from tf_agents.trajectories import time_step as ts

    from recbandits.envs import MovieLensRankingVectorEnv

    class RecbanditsRankingPyEnvironment(bandit_py_environment.BanditPyEnvironment):
        def __init__(self):
            self.env = MovieLensRankingVectorEnv(num_envs=config.batch_size, data_dir=config.data_dir,
                                                 episode_length=None, **config.env_config)
            self._observation, _ = self.env.reset(seed=config.seed)
            space = self.env.single_observation_space
            num_candidates, self.num_slots = self.env.simulator.num_candidates, self.env.simulator.slate_size
            self.cascading = self.env.simulator.feedback == "cascading"
            observation_spec = {
                bandit_spec_utils.GLOBAL_FEATURE_KEY: array_spec.ArraySpec(space["global"].shape, np.float32),
                bandit_spec_utils.PER_ARM_FEATURE_KEY: array_spec.ArraySpec(space["per_arm"].shape, np.float32),
            }
            action_spec = array_spec.BoundedArraySpec((self.num_slots,), np.int32, 0, num_candidates - 1,
                                                      name="action")
            if self.cascading:  # TF-Agents' RankingPyEnvironment's cascading spec
                reward_spec = {
                    "chosen_index": array_spec.BoundedArraySpec([], np.int32, 0, self.num_slots, name="chosen_index"),
                    "chosen_value": array_spec.ArraySpec([], np.float32, name="chosen_value"),
                }
            else:
                reward_spec = array_spec.ArraySpec([self.num_slots], np.float32, name="score_vector")
            self.regret: list[np.ndarray] = []
            super().__init__(observation_spec, action_spec, reward_spec)

        def batched(self) -> bool:
            return True

        @property
        def batch_size(self) -> int:
            return config.batch_size

        def _observe(self):
            return {bandit_spec_utils.GLOBAL_FEATURE_KEY: self._observation["global"],
                    bandit_spec_utils.PER_ARM_FEATURE_KEY: self._observation["per_arm"]}

        def _apply_action(self, action: np.ndarray):
            self._observation, _, _, _, info = self.env.step(np.asarray(action, dtype=np.int64))
            self.regret.append(np.asarray(info["regret"], dtype=np.float64))
            if self.cascading:
                position = info["clicked_position"]
                return {"chosen_index": np.where(position < 0, self.num_slots, position).astype(np.int32),
                        "chosen_value": (position >= 0).astype(np.float32)}
            return info["slot_clicks"].astype(np.float32)

        def _step(self, action):
            # As RankingPyEnvironment: each reward field in its spec's dtype (chosen_index is an int).
            import tensorflow as tf

            output = super()._step(action)
            reward = tf.nest.map_structure(lambda value, spec: np.asarray(value).astype(spec.dtype), output.reward,
                                           self.reward_spec())
            return ts.TimeStep(output.step_type, reward, output.discount, output.observation)

    return RecbanditsRankingPyEnvironment()


def _slotted_items(num_slots: int):
    """The example's ``order_items_from_action_fn``: the trajectory keeps the chosen items' features in slate
    order (the others are dropped) and no action or policy info, for the replay buffer and ``agent.train``."""
    import tensorflow as tf
    from tf_agents.specs import bandit_spec_utils, tensor_spec
    from tf_agents.trajectories import trajectory

    def transform(original):
        items = original.observation[bandit_spec_utils.PER_ARM_FEATURE_KEY]
        if isinstance(items, tensor_spec.TensorSpec):
            slotted = tensor_spec.TensorSpec(dtype=items.dtype, shape=[num_slots, items.shape[-1]])
        else:
            slotted = tf.gather(items, original.action, batch_dims=1)
        observation = {bandit_spec_utils.GLOBAL_FEATURE_KEY: original.observation[
            bandit_spec_utils.GLOBAL_FEATURE_KEY], bandit_spec_utils.PER_ARM_FEATURE_KEY: slotted}
        return trajectory.Trajectory(step_type=original.step_type, observation=observation, action=(),
                                     policy_info=(), next_step_type=original.next_step_type, reward=original.reward,
                                     discount=original.discount)

    return transform


def run_tf_agents_ranking(config: TFAgentsRankingConfig, total_samples: int) -> RankingTrace:
    """Train ``config.algo`` for at least ``total_samples`` slates (whole loops of ``samples_per_loop``)."""
    if total_samples < 1:
        raise ValueError(f"total_samples must be >= 1, got {total_samples}")
    import random

    import tensorflow as tf
    from tf_agents.bandits.agents import ranking_agent
    from tf_agents.bandits.networks import global_and_arm_feature_network
    from tf_agents.drivers import dynamic_step_driver
    from tf_agents.environments import tf_py_environment
    from tf_agents.replay_buffers import tf_uniform_replay_buffer
    from tf_agents.utils import common

    random.seed(config.seed)
    np.random.seed(config.seed)
    tf.random.set_seed(config.seed)
    env = _ranking_py_environment(config)
    tf_env = tf_py_environment.TFPyEnvironment(env)
    global_layers, arm_layers, common_layers = EXAMPLE["towers"]
    network = global_and_arm_feature_network.create_feed_forward_common_tower_network(
        tf_env.observation_spec(), global_layers, arm_layers, common_layers)
    agent = ranking_agent.RankingAgent(
        time_step_spec=tf_env.time_step_spec(), action_spec=tf_env.action_spec(), scoring_network=network,
        optimizer=tf.compat.v1.train.AdamOptimizer(learning_rate=config.learning_rate),
        policy_type=getattr(ranking_agent.RankingPolicyType, RANKING_POLICIES[config.algo]),
        feedback_model=(ranking_agent.FeedbackModel.CASCADING if env.cascading
                        else ranking_agent.FeedbackModel.SCORE_VECTOR))
    transform = _slotted_items(env.num_slots)
    buffer = tf_uniform_replay_buffer.TFUniformReplayBuffer(
        data_spec=transform(agent.policy.trajectory_spec), batch_size=config.batch_size,
        max_length=config.steps_per_loop)
    driver = dynamic_step_driver.DynamicStepDriver(
        env=tf_env, policy=agent.collect_policy, num_steps=config.samples_per_loop,
        observers=[lambda experience: buffer.add_batch(transform(experience))])
    driver.run = common.function(driver.run)
    agent.train = common.function(agent.train)

    loops = -(-total_samples // config.samples_per_loop)
    started = time.perf_counter()
    for _ in range(loops):
        driver.run()
        agent.train(buffer.gather_all())
        buffer.clear()
    wall_time = time.perf_counter() - started
    regret = np.concatenate(env.regret).reshape(loops, config.samples_per_loop)
    return RankingTrace(samples=config.samples_per_loop * np.arange(1, loops + 1, dtype=np.int64),
                        cumulative_regret=np.cumsum(regret.sum(axis=1)),
                        suboptimal=np.cumsum((regret > SUBOPTIMAL_TOLERANCE).sum(axis=1)), wall_time_s=wall_time)
