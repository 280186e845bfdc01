"""TF-Agents baselines, run the way TF-Agents users run them, for regret and samples/s comparisons.

Everything follows TF-Agents' own MovieLens example (``tf_agents/bandits/agents/examples/v2/
train_eval_movielens.py``) and the script the TF-Agents anchor figures were measured with: TF-Agents'
``MovieLensPyEnvironment`` (rank 20, 20 movies, batch 8) behind a ``TFPyEnvironment``, a
``DynamicStepDriver`` collecting ``batch_size * steps_per_loop`` samples per loop into a
``TFUniformReplayBuffer``, ``agent.train(buffer.gather_all())`` after every loop, and both ``driver.run`` and
``agent.train`` wrapped in ``common.function``.

Regret is exact per sample: the py environment records, inside ``_apply_action``, the users the action is
applied to, so each sample's regret is ``max_j R[u, j] - R[u, a]`` on the environment's approximate ratings
matrix ``R``. TF-Agents' ``RegretMetric`` only keeps the mean of the last driver step, and in the anchor
script it is also off by one step: its ``compute_optimal_reward`` py_function runs before the env step it
belongs to, so it subtracts the rewards of one batch of users from the optimum of the previous batch. Its
long-run average agrees with the exact regret here, but single values are noisy and can be negative.

TensorFlow and TF-Agents are imported lazily, inside the functions that need them, so importing
``recbandits.algos`` stays cheap.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recbandits.algos.options import TF_AGENTS_ALGOS
from recbandits.worker_env import set_worker_env

set_worker_env()  # before TensorFlow is first imported


def _check_algo(algo: str) -> None:
    if algo not in TF_AGENTS_ALGOS:
        raise ValueError(f"algo={algo!r} must be one of {', '.join(TF_AGENTS_ALGOS)}")


# Every baseline's hyperparameters as TF-Agents' own examples ship them (tf_agents/bandits/agents/examples/v2/;
# tests/test_tf_agents_baseline.py reads them back from the installed examples and agents):
# - train_eval_movielens.py: LinearUCBAgent(tikhonov_weight=0.001, alpha=AGENT_ALPHA) with AGENT_ALPHA = 10.0;
#   LinearThompsonSamplingAgent(...) with neither, so the agent's defaults alpha=1.0, tikhonov_weight=1.0;
#   NeuralEpsilonGreedyAgent with EPSILON = 0.05, LAYERS = (50, 50, 50), LR = 0.005.
# - NeuralLinUCB has no MovieLens example; train_eval_sparse_features.py (and train_eval_per_arm_stationary_linear.py)
#   pass alpha=1.0, epsilon_greedy=EPSILON = 0.01, LR = 0.05, ENCODING_DIM = 9, EPS_PHASE_STEPS = 1000; the network
#   keeps the MovieLens example's LAYERS.
AS_SHIPPED: dict[str, dict[str, Any]] = {
    "tfa-linucb": {"alpha": 10.0, "tikhonov_weight": 0.001},
    "tfa-lints": {"alpha": 1.0, "tikhonov_weight": 1.0},
    "tfa-neural-eps-greedy": {"epsilon": 0.05, "layers": (50, 50, 50), "learning_rate": 0.005},
    "tfa-neural-linucb": {"alpha": 1.0, "epsilon": 0.01, "layers": (50, 50, 50), "learning_rate": 0.05,
                          "encoding_dim": 9, "encoding_network_num_train_steps": 1000},
}
_SETTINGS = ("alpha", "tikhonov_weight", "epsilon", "layers", "learning_rate", "encoding_dim",
             "encoding_network_num_train_steps")
_FALLBACK = {"alpha": 1.0, "tikhonov_weight": 1.0, "epsilon": 0.05, "layers": (50, 50, 50), "learning_rate": 0.005,
             "encoding_dim": 9, "encoding_network_num_train_steps": 1000}  # settings an agent does not use


@dataclass
class TFAgentsBaselineConfig:
    """Settings of one TF-Agents baseline run; each left at None is the value TF-Agents' example for that agent
    ships (``AS_SHIPPED``).

    ``alpha`` is the exploration scale of LinUCB, LinTS and NeuralLinUCB; ``tikhonov_weight`` the ridge
    regularisation of LinUCB and LinTS (NeuralLinUCB has none: it always adds the identity).
    ``epsilon``, ``layers`` and ``learning_rate`` (Adam) drive the neural agents; NeuralLinUCB trains its
    encoding network with an epsilon-greedy reward layer for ``encoding_network_num_train_steps`` calls of
    ``agent.train`` (one per loop) and then switches to LinUCB on the ``encoding_dim``-dimensional encoding.
    """

    algo: str
    ratings_file: str | Path
    rank: int = 20
    num_movies: int = 20
    batch_size: int = 8
    steps_per_loop: int = 2
    alpha: float | None = None
    tikhonov_weight: float | None = None
    epsilon: float | None = None
    layers: tuple[int, ...] | None = None
    learning_rate: float | None = None
    encoding_dim: int | None = None
    encoding_network_num_train_steps: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_algo(self.algo)
        for name in _SETTINGS:
            if getattr(self, name) is None:
                setattr(self, name, AS_SHIPPED[self.algo].get(name, _FALLBACK[name]))
        self.layers = tuple(int(n) for n in self.layers)
        for name in ("rank", "num_movies", "batch_size", "steps_per_loop", "encoding_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    @property
    def samples_per_loop(self) -> int:
        return self.batch_size * self.steps_per_loop


# Loops that may include first-call tracing: common.function traces driver.run and agent.train on their first
# call (and the agents' train may retrace once on its second).
WARMUP_LOOPS = 2


@dataclass
class BaselineTrace:
    """Learning curve of one run, one entry per training loop (``batch_size * steps_per_loop`` samples).

    ``cumulative_regret`` and ``suboptimal`` are exact cumulative sums over every sample seen so far;
    ``wall_time_s`` covers the collect/train loop only (first-call tracing of the ``common.function``s
    included, as for a TF-Agents user) and ``samples_per_s`` is its rate; ``steady_samples_per_s`` is the rate
    after the first ``WARMUP_LOOPS`` loops (tracing excluded; None when no loop came after them);
    ``setup_time_s`` is the environment (SVD) and agent construction.
    """

    algo: str
    samples: np.ndarray
    cumulative_regret: np.ndarray
    suboptimal: np.ndarray
    wall_time_s: float
    samples_per_s: float
    setup_time_s: float = 0.0
    steady_samples_per_s: float | None = None

    @property
    def mean_regret(self) -> float:
        """Mean per-sample regret over the whole run."""
        return float(self.cumulative_regret[-1] / self.samples[-1]) if len(self.samples) else float("nan")


def _seed_everything(seed: int) -> None:
    import tensorflow as tf

    # TF-Agents' MovieLensPyEnvironment samples users with the stdlib `random` module.
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)


def _make_recording_env(config: TFAgentsBaselineConfig) -> Any:
    """TF-Agents' MovieLensPyEnvironment that also records, per step, the optimal and obtained reward."""
    from tf_agents.bandits.environments import movielens_py_environment

    class RecordingMovieLensPyEnvironment(movielens_py_environment.MovieLensPyEnvironment):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # numpy 2 rejects the float user indices the env starts with.
            self._current_users = np.zeros(self._batch_size, dtype=np.int64)
            self._previous_users = np.zeros(self._batch_size, dtype=np.int64)
            self.optimal_rewards: list[np.ndarray] = []
            self.rewards: list[np.ndarray] = []

        def _apply_action(self, action: np.ndarray) -> np.ndarray:
            # `_current_users` are the users the observation of this step came from; after the step
            # `_observe` moves them to `_previous_users`, which `compute_optimal_reward` then reads.
            users = np.asarray(self._current_users, dtype=np.int64)
            rewards = super()._apply_action(action)
            self.optimal_rewards.append(self._optimal_reward_table[users])
            self.rewards.append(np.asarray(rewards, dtype=np.float64))
            return rewards

    return RecordingMovieLensPyEnvironment(
        str(config.ratings_file),
        rank_k=config.rank,
        batch_size=config.batch_size,
        num_movies=config.num_movies,
        csv_delimiter="\t",
    )


def _make_agent(config: TFAgentsBaselineConfig, tf_env: Any) -> Any:
    import tensorflow as tf

    time_step_spec, action_spec = tf_env.time_step_spec(), tf_env.action_spec()
    if config.algo == "tfa-linucb":
        from tf_agents.bandits.agents import lin_ucb_agent

        return lin_ucb_agent.LinearUCBAgent(
            time_step_spec=time_step_spec,
            action_spec=action_spec,
            alpha=config.alpha,
            tikhonov_weight=config.tikhonov_weight,
            dtype=tf.float32,
        )
    if config.algo == "tfa-lints":
        from tf_agents.bandits.agents import linear_thompson_sampling_agent

        return linear_thompson_sampling_agent.LinearThompsonSamplingAgent(
            time_step_spec=time_step_spec,
            action_spec=action_spec,
            alpha=config.alpha,
            tikhonov_weight=config.tikhonov_weight,
            dtype=tf.float32,
        )
    if config.algo == "tfa-neural-eps-greedy":
        from tf_agents.bandits.agents import neural_epsilon_greedy_agent
        from tf_agents.networks import q_network

        network = q_network.QNetwork(
            input_tensor_spec=time_step_spec.observation,
            action_spec=action_spec,
            fc_layer_params=config.layers,
        )
        return neural_epsilon_greedy_agent.NeuralEpsilonGreedyAgent(
            time_step_spec=time_step_spec,
            action_spec=action_spec,
            reward_network=network,
            optimizer=tf.compat.v1.train.AdamOptimizer(learning_rate=config.learning_rate),
            epsilon=config.epsilon,
            emit_policy_info=("predicted_rewards_mean",),
            info_fields_to_inherit_from_greedy=["predicted_rewards_mean"],
        )
    if config.algo == "tfa-neural-linucb":
        from tf_agents.bandits.agents import neural_linucb_agent
        from tf_agents.networks import encoding_network

        # The non-per-arm counterpart of the examples' common-tower encoder: hidden layers, then a layer of
        # width `encoding_dim` whose output LinUCB works on.
        network = encoding_network.EncodingNetwork(
            input_tensor_spec=time_step_spec.observation,
            fc_layer_params=(*config.layers, config.encoding_dim),
        )
        return neural_linucb_agent.NeuralLinUCBAgent(
            time_step_spec=time_step_spec,
            action_spec=action_spec,
            encoding_network=network,
            encoding_network_num_train_steps=config.encoding_network_num_train_steps,
            encoding_dim=config.encoding_dim,
            optimizer=tf.compat.v1.train.AdamOptimizer(learning_rate=config.learning_rate),
            alpha=config.alpha,
            gamma=1.0,
            epsilon_greedy=config.epsilon,
        )
    _check_algo(config.algo)
    raise AssertionError("unreachable")


def run_tf_agents_baseline(
    config: TFAgentsBaselineConfig,
    total_samples: int,
    progress: Callable[[int], None] | None = None,
) -> BaselineTrace:
    """Train ``config.algo`` on TF-Agents' MovieLens env for at least ``total_samples`` samples.

    Runs ``ceil(total_samples / (batch_size * steps_per_loop))`` loops of driver.run + agent.train;
    ``progress`` is called after each loop with the number of samples collected so far.
    """
    _check_algo(config.algo)
    if total_samples < 1:
        raise ValueError(f"total_samples must be >= 1, got {total_samples}")
    setup_start = time.perf_counter()
    from tf_agents.drivers import dynamic_step_driver
    from tf_agents.environments import tf_py_environment
    from tf_agents.replay_buffers import tf_uniform_replay_buffer
    from tf_agents.utils import common

    _seed_everything(config.seed)
    env = _make_recording_env(config)
    tf_env = tf_py_environment.TFPyEnvironment(env)
    agent = _make_agent(config, tf_env)
    buffer = tf_uniform_replay_buffer.TFUniformReplayBuffer(
        data_spec=agent.policy.trajectory_spec, batch_size=config.batch_size, max_length=config.steps_per_loop
    )
    driver = dynamic_step_driver.DynamicStepDriver(
        env=tf_env,
        policy=agent.collect_policy,
        num_steps=config.samples_per_loop,
        observers=[buffer.add_batch],
    )
    driver.run = common.function(driver.run)
    agent.train = common.function(agent.train)
    setup_time = time.perf_counter() - setup_start

    per_loop = config.samples_per_loop
    loops = -(-total_samples // per_loop)
    start = time.perf_counter()
    warm = start
    for loop in range(loops):
        driver.run()
        agent.train(buffer.gather_all())
        buffer.clear()
        if progress is not None:
            progress((loop + 1) * per_loop)
        if loop + 1 == WARMUP_LOOPS:
            warm = time.perf_counter()
    end = time.perf_counter()
    wall_time = end - start

    optimal = np.concatenate(env.optimal_rewards)
    obtained = np.concatenate(env.rewards)
    if optimal.shape != (loops * per_loop,):
        raise RuntimeError(f"recorded {optimal.shape[0]} samples, expected {loops * per_loop}")
    regret = (optimal - obtained).reshape(loops, per_loop)
    samples = per_loop * np.arange(1, loops + 1, dtype=np.int64)
    return BaselineTrace(
        algo=config.algo,
        samples=samples,
        cumulative_regret=np.cumsum(regret.sum(axis=1)),
        suboptimal=np.cumsum((regret > 0).sum(axis=1)).astype(np.int64),
        wall_time_s=wall_time,
        samples_per_s=loops * per_loop / wall_time,
        setup_time_s=setup_time,
        steady_samples_per_s=(loops - WARMUP_LOOPS) * per_loop / (end - warm) if loops > WARMUP_LOOPS else None,
    )
