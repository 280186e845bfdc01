"""TF-Agents bandit agents as RLlib algorithms (new API stack): RLlib samples, TF-Agents acts and trains.

    config = (
        TFALinUCBConfig()   # or TF_AGENTS_ALGORITHM_CONFIGS["tfa-neural-eps-greedy"]() ...
        .environment("recbandits/MovieLens-v0", env_config={"rank": 20, "num_movies": 20})
        .env_runners(num_env_runners=2, num_envs_per_env_runner=8, rollout_fragment_length=2)
        .training(alpha=10.0, tikhonov_weight=0.001)
    )
    algo = config.build_algo()
    result = algo.train()                  # result["env_runners"]["cumulative_regret"], ["learners"]...["loss"]
    export_policy(algo, "policy/")         # TF-Agents PolicySaver SavedModel of the greedy policy

| name | config / algorithm | TF-Agents agent |
|---|---|---|
| ``tfa-linucb`` | ``TFALinUCBConfig`` / ``TFALinUCB`` | ``LinearUCBAgent`` |
| ``tfa-lints`` | ``TFALinTSConfig`` / ``TFALinTS`` | ``LinearThompsonSamplingAgent`` |
| ``tfa-neural-eps-greedy`` | ``TFANeuralEpsGreedyConfig`` / ``TFANeuralEpsGreedy`` | ``NeuralEpsilonGreedyAgent`` |
| ``tfa-neural-linucb`` | ``TFANeuralLinUCBConfig`` / ``TFANeuralLinUCB`` | ``NeuralLinUCBAgent`` |

(``TFAgentsBanditConfig().training(agent="neural-linucb")`` selects an agent by name as well.)

One ``training_step`` (``LinearBandit``'s):

1. every ``TFAgentsEnvRunner`` steps its ``num_envs_per_env_runner`` sub-envs ``rollout_fragment_length`` times,
   each step choosing the whole batch's actions with one call of its module's ``agent.collect_policy``; with
   ``local_updates`` (the default) it trains its own copy of the agent on every vector step, so the next
   step's decisions already use it (as ``BanditEnvRunner`` absorbs statistics); it returns every vector
   step's transitions (observation, action, reward, policy info) as numpy;
2. the ``TFAgentsBanditLearner`` turns them into single-step TF-Agents ``Trajectory`` batches and calls
   ``agent.train`` (wrapped in ``common.function``) on the authoritative agent the way the runner did: per
   vector step (per fragment without ``local_updates``), neural agents once per ``minibatch_size`` rows;
   runner by runner, or on all runners' step k at once (``combine_runner_batches=True``). With one runner
   the Learner's agent ends where the runner's copy did;
3. the agent's variables are synced to every env runner (``sync_weights``).

Why runners learn within a fragment: TF-Agents' LinUCB is deterministic and breaks ties by the first index,
so with a policy fixed for a fragment every cold-start decision of the fragment takes arm 0, the next
fragment's all take arm 1, and so on: at ``simulate``'s layout (256 sub-envs x 8 steps = 2,048 decisions per
fragment) exploring 20 arms once took 40,960 decisions and LinUCB did worse than random. Updating per vector
step bounds that to one vector step per arm. ``local_updates=False`` is TF-Agents' own driver loop (the
policy is fixed for ``batch_size * steps_per_loop`` decisions), right for its example's 8 x 2 layout.

Defaults follow TF-Agents' MovieLens example (``train_eval_movielens.py``) and ``tf_agents_baseline``: one
env runner with 8 sub-envs ("batch 8") and 2 steps per iteration ("2 steps per loop"); LinUCB alpha 10,
tikhonov 0.001; LinTS alpha 10, tikhonov 1.0; neural agents (50, 50, 50) layers, Adam at 0.005, epsilon 0.05;
NeuralLinUCB encoding dim 20, 1000 encoding-network train steps. TensorFlow / torch coexistence and thread
settings: see ``recbandits.algos.tf_agents_setup``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.learner.learner import Learner
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.annotations import override

from recbandits.algos.env_runner import ORACLE, BanditEnvRunner
from recbandits.algos.linear import LinearBandit, LinearBanditConfig
from recbandits.algos.tf_agents_module import TFAgentsBanditModule, export_policy
from recbandits.algos.tf_agents_setup import (
    AGENTS,
    DEFAULT_MODEL_CONFIG,
    canonical_agent_name,
    configure_tensorflow,
    resolve_model_config,
)

# Options of ``TFAgentsBanditConfig.training()`` that become the module's model config.
MODEL_OPTIONS = ("agent", "alpha", "tikhonov_weight", "gamma", "epsilon", "layers", "global_layers", "arm_layers",
                 "common_layers", "learning_rate", "encoding_dim", "encoding_network_num_train_steps",
                 "gradient_clipping")


class TFAgentsBanditConfig(LinearBanditConfig):
    """RLlib config of a TF-Agents bandit agent; ``training()`` exposes the agent's hyperparameters.

    | ``training()`` option | meaning | agents |
    |---|---|---|
    | ``agent`` | ``linucb``, ``lints``, ``neural-eps-greedy``, ``neural-linucb`` (a ``tfa-`` prefix is fine) | |
    | ``alpha`` | UCB width (LinUCB, NeuralLinUCB) / std scale of the sampled rewards (LinTS) | linear, NeuralLinUCB |
    | ``tikhonov_weight`` (alias ``lambda_``) | ridge weight; None: 0.001 LinUCB, 1.0 LinTS | LinUCB, LinTS |
    | ``gamma`` | forgetting factor of the linear statistics per ``agent.train`` | LinUCB, LinTS, NeuralLinUCB |
    | ``epsilon`` | exploration rate | neural |
    | ``layers`` | hidden layers (per-arm: of both towers unless ``global_layers`` / ``arm_layers``) | neural |
    | ``common_layers`` | per-arm NeuralLinUCB's common tower (None: the last of ``layers``) | NeuralLinUCB |
    | ``learning_rate`` | Adam's learning rate | neural |
    | ``encoding_dim`` | width of the encoding LinUCB works on | NeuralLinUCB |
    | ``encoding_network_num_train_steps`` | ``agent.train`` calls that train the encoder before LinUCB | NeuralLinUCB |
    | ``gradient_clipping`` | gradient norm clip (None: off) | neural |
    | ``local_updates`` | runners train their copy on every vector step (default True) | all |
    | ``local_updates=False`` | TF-Agents' loop, the policy fixed per fragment | all |
    | ``minibatch_size`` | rows per ``agent.train`` call (default 16; RLlib's own option) | neural |
    | ``combine_runner_batches`` | train on all runners' step k at once (default: runner by runner) | all |
    | ``tf_num_threads`` | TensorFlow intra/inter-op threads in env runner processes (None: TF's default) | all |
    """

    agent = "linucb"

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or TFAgentsBandit)
        self.env_runner_cls = TFAgentsEnvRunner
        # TF-Agents' MovieLens example: batch 8, 2 steps per loop.
        self.num_env_runners = 1
        self.num_envs_per_env_runner = 8
        self.rollout_fragment_length = 2
        self.agent = type(self).agent
        for name in MODEL_OPTIONS[1:]:
            setattr(self, name, DEFAULT_MODEL_CONFIG[name])
        self.combine_runner_batches = False
        self.local_updates = True
        # Rows per agent.train call of the neural agents: TF-Agents' MovieLens example trains on 16 samples
        # (batch 8 x 2 steps per loop) per call.
        self.minibatch_size = 16
        self.tf_num_threads = 1

    @override(LinearBanditConfig)
    def training(self, *, agent=NotProvided, alpha=NotProvided, tikhonov_weight=NotProvided, lambda_=NotProvided,
                 gamma=NotProvided, epsilon=NotProvided, layers=NotProvided, global_layers=NotProvided,
                 arm_layers=NotProvided, common_layers=NotProvided, learning_rate=NotProvided,
                 encoding_dim=NotProvided, encoding_network_num_train_steps=NotProvided,
                 gradient_clipping=NotProvided, combine_runner_batches=NotProvided, local_updates=NotProvided,
                 tf_num_threads=NotProvided, **kwargs):
        if agent is not NotProvided:
            agent = canonical_agent_name(agent)
        if lambda_ is not NotProvided and tikhonov_weight is NotProvided:
            tikhonov_weight = lambda_
        AlgorithmConfig.training(self, **kwargs)
        options = {"agent": agent, "alpha": alpha, "tikhonov_weight": tikhonov_weight, "gamma": gamma,
                   "epsilon": epsilon, "layers": layers, "global_layers": global_layers, "arm_layers": arm_layers,
                   "common_layers": common_layers, "learning_rate": learning_rate, "encoding_dim": encoding_dim,
                   "encoding_network_num_train_steps": encoding_network_num_train_steps,
                   "gradient_clipping": gradient_clipping, "combine_runner_batches": combine_runner_batches,
                   "local_updates": local_updates, "tf_num_threads": tf_num_threads}
        for name, value in options.items():
            if value is not NotProvided:
                setattr(self, name, tuple(value) if name.endswith("layers") and value is not None else value)
        return self

    @override(LinearBanditConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=TFAgentsBanditModule, model_config=self.bandit_model_config())

    @override(LinearBanditConfig)
    def bandit_model_config(self) -> dict:
        config = {name: getattr(self, name) for name in MODEL_OPTIONS}
        config["seed"] = self.seed or 0
        return config

    @property
    def resolved_model_config(self) -> dict:
        """The module's hyperparameters with TF-Agents' per-agent defaults filled in."""
        return resolve_model_config(self.bandit_model_config())

    @override(LinearBanditConfig)
    def get_default_learner_class(self):
        return TFAgentsBanditLearner

    @override(LinearBanditConfig)
    def validate(self) -> None:
        AlgorithmConfig.validate(self)
        if self.num_envs_per_env_runner < 1 or self.get_rollout_fragment_length() < 1:
            raise ValueError("num_envs_per_env_runner and rollout_fragment_length must be at least 1")
        if self.minibatch_size is not None and int(self.minibatch_size) < 1:
            raise ValueError(f"minibatch_size={self.minibatch_size} must be >= 1 (or None: a whole vector step)")
        if self.tf_num_threads is not None and int(self.tf_num_threads) < 1:
            raise ValueError(f"tf_num_threads={self.tf_num_threads} must be >= 1 (or None)")
        resolve_model_config(self.bandit_model_config())  # fails early, in the driver, on bad hyperparameters


class TFAgentsBandit(LinearBandit):
    """Runners sample with the collect policy and return transitions; the Learner runs ``agent.train``."""

    @classmethod
    @override(LinearBandit)
    def get_default_config(cls) -> TFAgentsBanditConfig:
        return TFAgentsBanditConfig()

    @override(LinearBandit)
    def setup(self, config) -> None:
        super().setup(config)
        # Every runner starts from the Learner's agent (RLlib's setup-time state sync may skip remote runners).
        if self.env_runner_group is not None:
            self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)

    @property
    @override(LinearBandit)
    def module(self) -> TFAgentsBanditModule:
        """The Learner's (authoritative) module."""
        return self.learner_group._learner.bandit_module


class TFAgentsBanditLearner(TorchLearner):
    """Holds the authoritative TF-Agents agent (in its module) and trains it on the runners' transitions."""

    @override(TorchLearner)
    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        """The TF-Agents agent owns its (TensorFlow) optimizer: nothing for torch to optimize."""

    @override(Learner)
    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        raise NotImplementedError("TF-Agents agents compute their own loss in agent.train")

    @property
    def bandit_module(self) -> TFAgentsBanditModule:
        return self.module[DEFAULT_MODULE_ID]

    def learn_from_runners(self, payloads: list[list[dict[str, Any]] | None], num_batches: int) -> dict[str, Any]:
        """Train on every runner's steps as the runner did (see the module docstring); returns the mean loss.

        A payload is one runner's list of training batches (its vector steps, or its whole fragment).
        """
        module = self.bandit_module
        runs = [payload for payload in payloads if payload]
        if self.config.combine_runner_batches and len(runs) > 1:
            longest = max(len(run) for run in runs)
            runs = [[module.concatenate([run[k] for run in runs if k < len(run)]) for k in range(longest)]]
        losses: list[float] = []
        transitions = 0
        for run in runs:
            for batch in run:
                if batch is not None:
                    losses += module.train_on_step(batch, self.config.minibatch_size)
                    transitions += len(batch["reward"])
        self._weights_seq_no += 1
        return {
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "num_train_calls": len(losses),
            "num_transitions": transitions,
            "train_step": module.train_step,
        }


class TFAgentsEnvRunner(BanditEnvRunner):
    """Acts with the module's TF-Agents collect policy on whole batches and returns the transitions."""

    @override(BanditEnvRunner)
    def make_module(self) -> None:
        if self.env is not None and self.config.tf_num_threads:
            # Before this process' TensorFlow runtime starts: 1 thread, like torch in BanditEnvRunner.
            configure_tensorflow(num_threads=int(self.config.tf_num_threads))
        spec = self.config.get_rl_module_spec(spaces=self.get_spaces(), inference_only=True)
        model_config = dict(spec.model_config or {})
        # Same initial weights everywhere ("seed"); each runner draws its own exploration randomness.
        model_config["exploration_seed"] = int(model_config.get("seed", 0)) * 1_000_003 + self._runner_offset + 1
        spec.model_config = model_config
        self.module = spec.build()

    @override(BanditEnvRunner)
    def _reset_delta(self) -> None:
        self._transitions: list[dict[str, Any]] = []
        self._delta_batches = 0

    @override(BanditEnvRunner)
    def _learns(self, policy: str) -> bool:
        return policy != ORACLE

    @override(BanditEnvRunner)
    def _policy_actions(self, observations, policy: str):
        if policy == ORACLE:
            return super()._policy_actions(observations, policy)
        actions, info = self.module.act(observations, "collect")
        return torch.from_numpy(actions), info

    @override(BanditEnvRunner)
    def _learn(self, observations, info, actions, rewards, infos, acted) -> None:
        rows = np.flatnonzero(acted)
        if len(rows):
            step = self.module.transitions(observations, actions.numpy(), rewards, info, rows)
            if self.config.local_updates:
                self.module.train_on_step(step, self.config.minibatch_size)
            self._transitions.append(step)
        self._delta_batches += 1

    @override(BanditEnvRunner)
    def _take_learning_payload(self):
        """The fragment's training batches: one per vector step with ``local_updates``, else one in all."""
        steps = self._transitions
        self._reset_delta()
        if not steps:
            return None
        return steps if self.config.local_updates else [self.module.concatenate(steps)]

    @override(BanditEnvRunner)
    def recorded_transitions(self) -> dict[str, np.ndarray]:
        raise NotImplementedError("TF-Agents runners return their transitions to the Learner every iteration")


class TFALinUCBConfig(TFAgentsBanditConfig):
    agent = "linucb"

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or TFALinUCB)


class TFALinUCB(TFAgentsBandit):
    """TF-Agents' ``LinearUCBAgent`` on RLlib."""

    @classmethod
    @override(TFAgentsBandit)
    def get_default_config(cls) -> TFALinUCBConfig:
        return TFALinUCBConfig()


class TFALinTSConfig(TFAgentsBanditConfig):
    agent = "lints"

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or TFALinTS)


class TFALinTS(TFAgentsBandit):
    """TF-Agents' ``LinearThompsonSamplingAgent`` on RLlib."""

    @classmethod
    @override(TFAgentsBandit)
    def get_default_config(cls) -> TFALinTSConfig:
        return TFALinTSConfig()


class TFANeuralEpsGreedyConfig(TFAgentsBanditConfig):
    agent = "neural-eps-greedy"

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or TFANeuralEpsGreedy)


class TFANeuralEpsGreedy(TFAgentsBandit):
    """TF-Agents' ``NeuralEpsilonGreedyAgent`` on RLlib."""

    @classmethod
    @override(TFAgentsBandit)
    def get_default_config(cls) -> TFANeuralEpsGreedyConfig:
        return TFANeuralEpsGreedyConfig()


class TFANeuralLinUCBConfig(TFAgentsBanditConfig):
    agent = "neural-linucb"

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or TFANeuralLinUCB)


class TFANeuralLinUCB(TFAgentsBandit):
    """TF-Agents' ``NeuralLinUCBAgent`` on RLlib."""

    @classmethod
    @override(TFAgentsBandit)
    def get_default_config(cls) -> TFANeuralLinUCBConfig:
        return TFANeuralLinUCBConfig()


TF_AGENTS_ALGORITHM_CONFIGS: dict[str, type[TFAgentsBanditConfig]] = {
    "tfa-linucb": TFALinUCBConfig,
    "tfa-lints": TFALinTSConfig,
    "tfa-neural-eps-greedy": TFANeuralEpsGreedyConfig,
    "tfa-neural-linucb": TFANeuralLinUCBConfig,
}

__all__ = [
    "AGENTS",
    "TF_AGENTS_ALGORITHM_CONFIGS",
    "TFALinTS",
    "TFALinTSConfig",
    "TFALinUCB",
    "TFALinUCBConfig",
    "TFANeuralEpsGreedy",
    "TFANeuralEpsGreedyConfig",
    "TFANeuralLinUCB",
    "TFANeuralLinUCBConfig",
    "TFAgentsBandit",
    "TFAgentsBanditConfig",
    "TFAgentsBanditLearner",
    "TFAgentsBanditModule",
    "TFAgentsEnvRunner",
    "export_policy",
]
