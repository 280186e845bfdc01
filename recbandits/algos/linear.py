"""LinUCB, Linear Thompson Sampling, linear epsilon-greedy and the random / oracle references on RLlib.

    config = (
        LinUCBConfig()
        .environment("recbandits/MovieLens-v0", env_config={"rank": 20, "num_movies": 20})
        .env_runners(num_env_runners=2, num_envs_per_env_runner=1024, rollout_fragment_length=16)
        .training(alpha=10.0, lambda_=0.001)
    )
    algo = config.build_algo()
    result = algo.train()          # result["env_runners"]["cumulative_regret"], ...

One ``training_step``: every ``BanditEnvRunner`` samples ``rollout_fragment_length`` batched steps of its
``num_envs_per_env_runner`` sub-envs, learning from its own data as it goes, and returns the sufficient
statistics it gathered; the ``LinearBanditLearner`` adds them all to the global posterior; the posterior is
synced back to every runner.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.annotations import override
from ray.rllib.utils.checkpoints import Checkpointable
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)

from recbandits.algos import metrics as bandit_metrics
from recbandits.algos.env_runner import ORACLE, BanditEnvRunner
from recbandits.algos.learner import LinearBanditLearner
from recbandits.algos.module import LinearBanditModule

POLICY_FROM_MODULE = "module"


class LinearBanditConfig(AlgorithmConfig):
    """Settings shared by the linear bandits (``training()``) and their batched sampling (``env_runners()``).

    | ``training()`` option | meaning |
    |---|---|
    | ``alpha`` | UCB width multiplier (LinUCB) |
    | ``lambda_`` | ridge regularization = prior precision of theta |
    | ``gamma`` | forgetting factor per absorbed batch (< 1 tracks drifting preferences) |
    | ``epsilon`` | exploration rate (linear epsilon-greedy) |
    | ``posterior_scale`` | v of LinTS's N(theta, v^2 A^-1); None estimates it from the residuals |
    | ``noise_prior`` | a0 = b0 of that estimate's inverse-gamma prior |
    | ``interaction`` | shared model: add the outer product of global and arm features (None: on for per-arm envs) |
    | ``record_transitions`` | runners keep every transition they learned from (for exactness checks) |
    | ``record_regret_trace`` | keep regret per vector step in ``algo.regret_trace`` (for regret at exact budgets) |
    """

    exploration = "ucb"
    bandit_policy = POLICY_FROM_MODULE

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or LinearBandit)
        self.env_runner_cls = BanditEnvRunner
        self.num_env_runners = 1
        self.num_envs_per_env_runner = 1024
        self.rollout_fragment_length = 16
        # BanditEnvRunner has no connector pipelines: skip RLlib's per-iteration connector-state round trip.
        self._dont_auto_sync_env_runner_states = True
        self.alpha = 1.0
        self.lambda_ = 1.0
        self.gamma = 1.0
        self.epsilon = 0.05
        self.posterior_scale = None
        self.noise_prior = 1.0
        self.interaction = None
        self.record_transitions = False
        self.record_regret_trace = False

    @override(AlgorithmConfig)
    def training(self, *, alpha=NotProvided, lambda_=NotProvided, gamma=NotProvided, epsilon=NotProvided,
                 posterior_scale=NotProvided, noise_prior=NotProvided, interaction=NotProvided,
                 record_transitions=NotProvided, record_regret_trace=NotProvided, **kwargs):
        super().training(**kwargs)
        for name, value in (("alpha", alpha), ("lambda_", lambda_), ("gamma", gamma), ("epsilon", epsilon),
                            ("posterior_scale", posterior_scale), ("noise_prior", noise_prior),
                            ("interaction", interaction), ("record_transitions", record_transitions),
                            ("record_regret_trace", record_regret_trace)):
            if value is not NotProvided:
                setattr(self, name, value)
        return self

    @override(AlgorithmConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=LinearBanditModule, model_config=self.bandit_model_config())

    def bandit_model_config(self) -> dict:
        return {
            "exploration": self.exploration,
            "alpha": self.alpha,
            "lambda_": self.lambda_,
            "gamma": self.gamma,
            "epsilon": self.epsilon,
            "posterior_scale": self.posterior_scale,
            "noise_prior": self.noise_prior,
            "interaction": self.interaction,
            "seed": self.seed or 0,
        }

    @override(AlgorithmConfig)
    def get_default_learner_class(self):
        return LinearBanditLearner

    @override(AlgorithmConfig)
    def validate(self) -> None:
        super().validate()
        if self.num_envs_per_env_runner < 1 or self.get_rollout_fragment_length() < 1:
            raise ValueError("num_envs_per_env_runner and rollout_fragment_length must be at least 1")
        # Fails early, in the driver, with the module's own message for bad hyperparameters.
        probe = dict(self.bandit_model_config())
        for name in ("alpha", "epsilon", "noise_prior"):
            if not probe[name] >= 0:
                raise ValueError(f"{name}={probe[name]} must be a number >= 0")
        if not probe["lambda_"] > 0:
            raise ValueError(f"lambda_={probe['lambda_']} must be > 0")
        if not 0 < probe["gamma"] <= 1:
            raise ValueError(f"gamma={probe['gamma']} must be in (0, 1]")
        if not 0 <= probe["epsilon"] <= 1:
            raise ValueError(f"epsilon={probe['epsilon']} must be in [0, 1]")

    @property
    def env_steps_per_iteration(self) -> int:
        return max(self.num_env_runners, 1) * self.num_envs_per_env_runner * self.get_rollout_fragment_length()


def local_path(path):
    """A path without a URI scheme, made absolute against the working directory (pyarrow refuses relative ones);
    ``s3://...``-style URIs and None are returned as they are."""
    import os

    if path is None or "://" in str(path):
        return path
    return os.path.abspath(os.path.expanduser(str(path)))


RESOURCE_WAIT_ENV = "RECBANDITS_RESOURCE_WAIT_S"


def wait_for_env_runner_cpus(config: AlgorithmConfig) -> None:
    """Wait until the CPUs the env runners need are free; say what it waits for, and time out with a message.

    RLlib would create the runner actors and wait without a word (e.g. for another algorithm of the same script
    that still holds the CPUs). Inside a Tune trial the placement group has reserved them: nothing to check.
    """
    import ray

    need = config.num_env_runners * (config.num_cpus_per_env_runner or 0)
    if need <= 0 or not ray.is_initialized() or ray.util.get_current_placement_group() is not None:
        return
    timeout_s = float(os.environ.get(RESOURCE_WAIT_ENV, "300"))
    started, told = time.monotonic(), False
    while (free := ray.available_resources().get("CPU", 0.0)) < need:
        waited = time.monotonic() - started
        total = ray.cluster_resources().get("CPU", 0.0)
        what = (f"{config.num_env_runners} env runner(s) need {need:g} CPU(s); {free:g} of the cluster's {total:g} "
                "are free (another algorithm in this process may hold them: stop() it first)")
        if waited >= timeout_s:
            raise RuntimeError(f"gave up after {waited:.0f} s: {what}; ${RESOURCE_WAIT_ENV} sets the wait")
        if waited >= 5 and not told:
            print(f"recbandits: waiting: {what}", file=sys.stderr, flush=True)
            told = True
        time.sleep(0.5)


class LinearBandit(Algorithm):
    """Sample statistics on every runner, add them up in the Learner, sync the posterior back."""

    @classmethod
    @override(Algorithm)
    def get_default_config(cls) -> LinearBanditConfig:
        return LinearBanditConfig()

    @override(Algorithm)
    def setup(self, config) -> None:
        wait_for_env_runner_cpus(config)
        super().setup(config)

    # Checkpoint paths relative to the working directory (RLlib hands them to pyarrow, which needs absolute ones).
    @override(Checkpointable)
    def save_to_path(self, path=None, **kwargs):
        return super().save_to_path(local_path(path), **kwargs)

    @override(Algorithm)
    def restore_from_path(self, path, **kwargs):
        return super().restore_from_path(local_path(path), **kwargs)

    @classmethod
    @override(Algorithm)
    def from_checkpoint(cls, path, filesystem=None, **kwargs):
        return super().from_checkpoint(local_path(path), filesystem, **kwargs)

    @override(Algorithm)
    def training_step(self) -> None:
        started = time.perf_counter()
        runners = self.env_runner_group
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            samples = runners.foreach_env_runner(
                lambda runner: (runner.sample_statistics(), runner.get_metrics()),
                local_env_runner=runners.num_remote_env_runners() == 0,
            )
        self.metrics.aggregate([runner_metrics for _, runner_metrics in samples], key=ENV_RUNNER_RESULTS)
        payloads = [sample["payload"] for sample, _ in samples if sample["payload"] is not None]
        if payloads:
            num_batches = max(sample["num_batches"] for sample, _ in samples)
            with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
                learner_results = self.learner_group.foreach_learner(
                    lambda learner: learner.learn_from_runners(payloads, num_batches)
                )
            for key, value in learner_results.result_or_errors[0].get().items():
                self.metrics.log_value((LEARNER_RESULTS, key), value, window=1)
            with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
                runners.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)
        self._log_bandit_metrics(samples, time.perf_counter() - started)

    def _log_bandit_metrics(self, samples, wall_time_s: float) -> None:
        totals: dict[str, float] = {}
        for sample, _ in samples:
            for key, value in sample["sums"].items():
                totals[key] = totals.get(key, 0.0) + value
        for key, value in bandit_metrics.summarize(totals, wall_time_s).items():
            self.metrics.log_value((ENV_RUNNER_RESULTS, key), value, window=1)
        nodes = sorted({sample["node_id"] for sample, _ in samples if sample["node_id"]})
        self.metrics.log_value((ENV_RUNNER_RESULTS, "num_nodes"), len(nodes), window=1)
        self.metrics.log_value((ENV_RUNNER_RESULTS, "num_healthy_env_runners"), len(samples), window=1)
        self.runner_node_ids = nodes
        traces = [sample["trace"] for sample, _ in samples if sample.get("trace") is not None]
        if traces:
            # Runners step in lockstep: vector step t of every runner is one row (regret, suboptimal, decisions).
            self.regret_trace.append(np.sum(traces, axis=0))

    @property
    def regret_trace(self) -> list[np.ndarray]:
        if not hasattr(self, "_regret_trace"):
            self._regret_trace = []
        return self._regret_trace

    @property
    def module(self) -> LinearBanditModule:
        """The Learner's (authoritative) module."""
        return self.learner_group._learner.bandit_module


class LinUCBConfig(LinearBanditConfig):
    exploration = "ucb"

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or LinUCB)


class LinUCB(LinearBandit):
    """LinUCB (Li et al., 2010): argmax theta.x + alpha sqrt(x^T A^-1 x)."""

    @classmethod
    @override(LinearBandit)
    def get_default_config(cls) -> LinUCBConfig:
        return LinUCBConfig()


class LinTSConfig(LinearBanditConfig):
    exploration = "thompson"

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or LinTS)


class LinTS(LinearBandit):
    """Linear Thompson Sampling (Agrawal & Goyal, 2013): theta~ ~ N(theta, v^2 A^-1) per decision."""

    @classmethod
    @override(LinearBandit)
    def get_default_config(cls) -> LinTSConfig:
        return LinTSConfig()


class LinEpsGreedyConfig(LinearBanditConfig):
    exploration = "eps_greedy"

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or LinEpsGreedy)


class LinEpsGreedy(LinearBandit):
    """Greedy on the ridge estimate, a uniformly random arm with probability epsilon."""

    @classmethod
    @override(LinearBandit)
    def get_default_config(cls) -> LinEpsGreedyConfig:
        return LinEpsGreedyConfig()


class RandomPolicyConfig(LinearBanditConfig):
    exploration = "random"

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or RandomPolicy)


class RandomPolicy(LinearBandit):
    """Uniformly random arms: the floor of every regret curve (learns nothing)."""

    @classmethod
    @override(LinearBandit)
    def get_default_config(cls) -> RandomPolicyConfig:
        return RandomPolicyConfig()


class OraclePolicyConfig(LinearBanditConfig):
    exploration = "greedy"
    bandit_policy = ORACLE

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or OraclePolicy)


class OraclePolicy(LinearBandit):
    """The env's optimal action every step: zero regret, the ceiling of every reward curve."""

    @classmethod
    @override(LinearBandit)
    def get_default_config(cls) -> OraclePolicyConfig:
        return OraclePolicyConfig()


ALGORITHM_CONFIGS: dict[str, type[LinearBanditConfig]] = {
    "linucb": LinUCBConfig,
    "lints": LinTSConfig,
    "eps-greedy": LinEpsGreedyConfig,
    "random": RandomPolicyConfig,
    "oracle": OraclePolicyConfig,
}
