"""The TF-Agents side of the RLlib bridge: one TF-Agents bandit agent inside a torch ``RLModule``.

``TFAgentsBanditModule`` is a ``TorchRLModule`` (so RLlib's ``LearnerGroup`` / ``TorchLearner``, weight sync
and checkpoints handle it like any module) that owns a TF-Agents agent. Its state is the agent's variables
as numpy arrays; the torch side has no parameters.

Agents (``agent``: TF-Agents class; network for a ``Box`` context / a per-arm ``Dict`` observation):

- ``linucb``: ``LinearUCBAgent``; none
- ``lints``: ``LinearThompsonSamplingAgent``; none
- ``neural-eps-greedy``: ``NeuralEpsilonGreedyAgent``; ``QNetwork(layers)`` / dot product of a global and an arm tower
- ``neural-linucb``: ``NeuralLinUCBAgent``; ``EncodingNetwork(layers + (encoding_dim,))`` / common tower ending in
  ``encoding_dim``

Three policies share the agent's variables:

- ``collect`` (``agent.collect_policy``): what env runners explore with;
- ``policy`` (``agent.policy``): TF-Agents' own "trained" policy (LinUCB's optimistic one, LinTS's sampling
  one, NeuralEpsilonGreedy's epsilon-greedy one, NeuralLinUCB's epsilon-greedy / LinUCB one);
- ``greedy``: argmax of the predicted mean reward (a ``LinearBanditPolicy`` on theta with alpha 0, the
  reward network's ``GreedyRewardPredictionPolicy``, a ``NeuralLinUCBPolicy`` with alpha 0 and no
  epsilon). Deterministic: what ``forward_inference``, checkpoints and ``export_policy`` are compared on.

TensorFlow next to torch, the agents and their options: ``recbandits.algos.tf_agents_setup``.

Every agent gets its own ``train_step_counter`` variable, set after construction: TF-Agents' default is the
process-wide global step, which every agent in a process (the Learner's, the driver's local env runner's, a
restored one) would share, and ``NeuralLinUCBAgent`` ignores the constructor argument.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.annotations import override

from recbandits.algos.tf_agents_setup import (
    configure_tensorflow,
    observation_layout,
    resolve_model_config,
)

POLICIES = ("greedy", "policy", "collect")
SCORES = "scores"


def _to_numpy(value):
    if isinstance(value, dict):
        return {key: _to_numpy(item) for key, item in value.items()}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _concatenate(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Concatenate transition payloads (dicts of arrays / lists of arrays) along the batch axis."""
    parts = [part for part in parts if part is not None and len(part["reward"])]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, Any] = {}
    for key, first in parts[0].items():
        if isinstance(first, list):
            merged[key] = [np.concatenate([part[key][i] for part in parts]) for i in range(len(first))]
        else:
            merged[key] = np.concatenate([part[key] for part in parts])
    return merged


def _rows(payload: dict[str, Any], rows: slice) -> dict[str, Any]:
    """The ``rows`` of a transition payload."""
    return {key: [array[rows] for array in value] if isinstance(value, list) else value[rows]
            for key, value in payload.items()}


class TFAgentsBanditModule(TorchRLModule):
    """A TF-Agents bandit agent as an RLlib module (see the module docstring)."""

    @override(RLModule)
    def setup(self):
        self.agent_config = resolve_model_config(self.model_config)
        self.agent_name = self.agent_config["agent"]
        self.per_arm, self.num_actions, self.global_dim, self.arm_dim = observation_layout(
            self.observation_space, self.action_space
        )
        tf = configure_tensorflow()
        # The same initial network weights in every process (Learner, every env runner, a restored module).
        tf.random.set_seed(int(self.agent_config["seed"]))
        self._build_agent(tf)
        if self.agent_config["exploration_seed"] is not None:
            tf.random.set_seed(int(self.agent_config["exploration_seed"]))

    # ----------------------------------------------------------------------------------------------
    # Construction
    # ----------------------------------------------------------------------------------------------

    def _build_agent(self, tf) -> None:
        from tf_agents.bandits.specs import utils as bandit_spec_utils
        from tf_agents.specs import tensor_spec
        from tf_agents.trajectories import time_step as ts
        from tf_agents.utils import common

        if self.per_arm:
            observation_spec = bandit_spec_utils.create_per_arm_observation_spec(
                self.global_dim, self.arm_dim, self.num_actions
            )
        else:
            observation_spec = tf.TensorSpec([self.global_dim], tf.float32)
        self.time_step_spec = ts.time_step_spec(observation_spec)
        self.action_spec = tensor_spec.BoundedTensorSpec((), tf.int32, minimum=0, maximum=self.num_actions - 1)
        self._optimizer = None
        self._trainable: list = []
        builder = {
            "linucb": self._linear_agent,
            "lints": self._linear_agent,
            "neural-eps-greedy": self._neural_eps_greedy_agent,
            "neural-linucb": self._neural_linucb_agent,
        }[self.agent_name]
        self.agent, self.greedy_policy = builder(tf)
        # Its own counter: TF-Agents' default (and NeuralLinUCB's only choice) is the process-wide global step.
        self.agent._train_step_counter = tf.Variable(0, dtype=tf.int64, name="train_step", trainable=False)
        self._policy_variables = list(self.agent.policy.variables())
        if not self.inference_only and self._optimizer is not None:
            self._create_optimizer_slots(tf)
        self._train_fn = common.function(self.agent.train)
        self._action_fns: dict[str, Any] = {}

    def _linear_agent(self, tf):
        from tf_agents.bandits.agents import lin_ucb_agent, linear_thompson_sampling_agent
        from tf_agents.bandits.policies import linear_bandit_policy

        config = self.agent_config
        agent_cls = (lin_ucb_agent.LinearUCBAgent if self.agent_name == "linucb"
                     else linear_thompson_sampling_agent.LinearThompsonSamplingAgent)
        agent = agent_cls(
            time_step_spec=self.time_step_spec,
            action_spec=self.action_spec,
            alpha=config["alpha"],
            gamma=config["gamma"],
            tikhonov_weight=config["tikhonov_weight"],
            accepts_per_arm_features=self.per_arm,
            dtype=tf.float32,
        )
        # TF-Agents' documented greedy form: theta supplied and alpha ~ 0 -> argmax of theta . x.
        greedy = linear_bandit_policy.LinearBanditPolicy(
            action_spec=self.action_spec,
            cov_matrix=agent.cov_matrix,
            data_vector=agent.data_vector,
            num_samples=agent.num_samples,
            time_step_spec=self.time_step_spec,
            exploration_strategy=linear_bandit_policy.ExplorationStrategy.optimistic,
            alpha=0.0,
            tikhonov_weight=config["tikhonov_weight"],
            emit_policy_info=("predicted_rewards_mean",),
            accepts_per_arm_features=self.per_arm,
            theta=agent._theta,
            name="greedy_policy",
        )
        return agent, greedy

    def _neural_eps_greedy_agent(self, tf):
        from tf_agents.bandits.agents import neural_epsilon_greedy_agent
        from tf_agents.bandits.networks import global_and_arm_feature_network
        from tf_agents.networks import q_network

        config = self.agent_config
        observation_spec = self.time_step_spec.observation
        if self.per_arm:  # train_eval_movielens.py --per_arm: dot product of a global and an arm tower
            network = global_and_arm_feature_network.create_feed_forward_dot_product_network(
                observation_spec,
                global_layers=config["global_layers"] or config["layers"],
                arm_layers=config["arm_layers"] or config["layers"],
            )
        else:
            network = q_network.QNetwork(
                input_tensor_spec=observation_spec, action_spec=self.action_spec, fc_layer_params=config["layers"]
            )
        self._optimizer = tf.compat.v1.train.AdamOptimizer(learning_rate=config["learning_rate"])
        agent = neural_epsilon_greedy_agent.NeuralEpsilonGreedyAgent(
            time_step_spec=self.time_step_spec,
            action_spec=self.action_spec,
            reward_network=network,
            optimizer=self._optimizer,
            epsilon=config["epsilon"],
            accepts_per_arm_features=self.per_arm,
            gradient_clipping=config["gradient_clipping"],
            emit_policy_info=("predicted_rewards_mean",),
            info_fields_to_inherit_from_greedy=["predicted_rewards_mean"],
        )
        network.create_variables()
        self._trainable = list(agent._variables_to_train())
        # agent.policy is the epsilon-greedy policy too; the greedy one is what it wraps.
        return agent, agent.policy.wrapped_policy

    def _neural_linucb_agent(self, tf):
        from tf_agents.bandits.agents import neural_linucb_agent
        from tf_agents.bandits.networks import global_and_arm_feature_network
        from tf_agents.bandits.policies import neural_linucb_policy
        from tf_agents.networks import encoding_network

        config = self.agent_config
        observation_spec = self.time_step_spec.observation
        if self.per_arm:  # train_eval_per_arm_stationary_linear.py: common tower ending in encoding_dim
            network = global_and_arm_feature_network.create_feed_forward_common_tower_network(
                observation_spec,
                global_layers=config["global_layers"] or config["layers"],
                arm_layers=config["arm_layers"] or config["layers"],
                common_layers=config["common_layers"] or config["layers"][-1:],
                output_dim=config["encoding_dim"],
            )
        else:
            network = encoding_network.EncodingNetwork(
                input_tensor_spec=observation_spec, fc_layer_params=(*config["layers"], config["encoding_dim"])
            )
        self._optimizer = tf.compat.v1.train.AdamOptimizer(learning_rate=config["learning_rate"])
        agent = neural_linucb_agent.NeuralLinUCBAgent(
            time_step_spec=self.time_step_spec,
            action_spec=self.action_spec,
            encoding_network=network,
            encoding_network_num_train_steps=config["encoding_network_num_train_steps"],
            encoding_dim=config["encoding_dim"],
            optimizer=self._optimizer,
            alpha=config["alpha"],
            gamma=config["gamma"],
            epsilon_greedy=config["epsilon"],
            accepts_per_arm_features=self.per_arm,
            gradient_clipping=config["gradient_clipping"],
        )
        self._trainable = list(network.trainable_weights) + list(agent._reward_layer.trainable_weights)
        greedy = neural_linucb_policy.NeuralLinUCBPolicy(
            encoding_network=network,
            encoding_dim=config["encoding_dim"],
            reward_layer=agent._reward_layer,
            epsilon_greedy=0.0,
            actions_from_reward_layer=agent.actions_from_reward_layer,
            cov_matrix=agent.cov_matrix,
            data_vector=agent.data_vector,
            num_samples=agent.num_samples,
            time_step_spec=self.time_step_spec,
            alpha=0.0,
            emit_policy_info=("predicted_rewards_mean",),
            accepts_per_arm_features=self.per_arm,
            name="greedy_policy",
        )
        return agent, greedy

    def _create_optimizer_slots(self, tf) -> None:
        """Create Adam's slots now (TF creates them in the first ``apply_gradients``) so a restored Learner can
        load them before it trains. Optimizer state is then part of the full (non-inference) module state."""
        try:
            with tf.init_scope():
                self._optimizer._create_slots(self._trainable)
        except (AttributeError, TypeError, ValueError) as error:  # another optimizer API: no optimizer state
            warnings.warn(f"optimizer state is not checkpointed: {error}", RuntimeWarning, stacklevel=2)
            self._optimizer = None

    def _optimizer_variables(self) -> list:
        """Adam's beta powers, then every slot of every trained variable, in construction order."""
        optimizer = self._optimizer
        if optimizer is None:
            return []
        variables = list(optimizer._non_slot_variables())
        for slot_name in sorted(optimizer.get_slot_names()):
            for variable in self._trainable:
                slot = optimizer.get_slot(variable, slot_name)
                if slot is not None:
                    variables.append(slot)
        return variables

    # ----------------------------------------------------------------------------------------------
    # Acting
    # ----------------------------------------------------------------------------------------------

    def policy_by_name(self, which: str = "greedy"):
        if which not in POLICIES:
            raise ValueError(f"policy {which!r} must be one of {', '.join(POLICIES)}")
        return {"greedy": self.greedy_policy, "policy": self.agent.policy, "collect": self.agent.collect_policy}[which]

    def time_step(self, observations):
        """A batched ``ts.restart`` TimeStep of numpy / torch observations (a dict for the per-arm env)."""
        import tensorflow as tf
        from tf_agents.trajectories import time_step as ts

        observations = _to_numpy(observations)
        spec = self.time_step_spec.observation
        if self.per_arm:
            observations = {key: observations[key] for key in spec}
        tensors = tf.nest.map_structure(lambda s, x: tf.convert_to_tensor(x, dtype=s.dtype), spec, observations)
        batch_size = int(tf.nest.flatten(tensors)[0].shape[0])
        return ts.restart(tensors, batch_size=batch_size)

    def act(self, observations, which: str = "collect"):
        """(actions int64 [B], the policy's info nest as numpy) of one policy on a batch of observations."""
        import tensorflow as tf
        from tf_agents.utils import common

        function = self._action_fns.get(which)
        if function is None:
            function = self._action_fns[which] = common.function(self.policy_by_name(which).action)
        step = function(self.time_step(observations))
        info = tf.nest.map_structure(lambda t: t.numpy(), step.info)
        return step.action.numpy().astype(np.int64), info

    def greedy_actions(self, observations) -> tuple[np.ndarray, np.ndarray]:
        """(actions, predicted mean reward of every arm) of the greedy policy."""
        actions, info = self.act(observations, "greedy")
        return actions, np.asarray(info.predicted_rewards_mean)

    @override(TorchRLModule)
    def _forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        actions, scores = self.greedy_actions(batch[Columns.OBS])
        scores = torch.from_numpy(scores)
        return {Columns.ACTIONS: torch.from_numpy(actions), SCORES: scores, Columns.ACTION_DIST_INPUTS: scores}

    @override(TorchRLModule)
    def _forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        actions, _ = self.act(batch[Columns.OBS], "collect")
        return {Columns.ACTIONS: torch.from_numpy(actions)}

    @override(RLModule)
    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        raise NotImplementedError("TF-Agents agents train with agent.train on trajectories (TFAgentsBanditLearner)")

    # ----------------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------------

    def transitions(self, observations, actions: np.ndarray, rewards: np.ndarray, info, rows: np.ndarray):
        """The rows of one vector step the agent trains on, as numpy (a Learner payload).

        Only what ``agent.training_data_spec`` holds travels: for per-arm agents the global features and the
        chosen arm's features (``policy_info.chosen_arm_features``), not every candidate's.
        """
        import tensorflow as tf
        from tf_agents.utils import nest_utils

        spec = self.agent.training_data_spec
        observations = _to_numpy(observations)
        if self.per_arm:
            observations = nest_utils.prune_extra_keys(spec.observation, observations)
        info = nest_utils.prune_extra_keys(spec.policy_info, info)
        return {
            "observation": [np.asarray(x)[rows] for x in tf.nest.flatten(observations)],
            "action": np.asarray(actions)[rows].astype(np.int32),
            "reward": np.asarray(rewards, dtype=np.float32)[rows],
            "policy_info": [np.asarray(x)[rows] for x in tf.nest.flatten(info)],
        }

    def logged_transitions(self, contexts: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                           chosen_arm_features: np.ndarray | None) -> dict[str, Any]:
        """A Learner payload of logged decisions (``transitions``' layout): the contexts, the actions, the
        rewards and, for per-arm agents, the chosen arm's features. Policy-info fields a logging policy could not
        have recorded (this agent's own predictions at decision time) are zeros: training does not read them."""
        import tensorflow as tf

        spec = self.agent.training_data_spec.policy_info
        rows = len(rewards)

        def leaf(name: str, tensor_spec):
            if name == "chosen_arm_features":
                return np.asarray(chosen_arm_features, dtype=np.float32)
            return np.zeros((rows, *tensor_spec.shape), dtype=tensor_spec.dtype.as_numpy_dtype)

        if hasattr(spec, "_fields"):
            info = type(spec)(*(tf.nest.map_structure(lambda item, name=name: leaf(name, item), getattr(spec, name))
                                for name in spec._fields))
        else:
            info = tf.nest.map_structure(lambda item: leaf("", item), spec)
        return {
            "observation": [np.asarray(contexts, dtype=np.float32)],
            "action": np.asarray(actions).astype(np.int32),
            "reward": np.asarray(rewards, dtype=np.float32),
            "policy_info": tf.nest.flatten(info),
        }

    concatenate = staticmethod(_concatenate)

    def experience(self, payload: dict[str, Any]):
        """A payload as a TF-Agents bandit ``Trajectory``: single steps (FIRST -> LAST), shape [N, 1, ...]."""
        import tensorflow as tf
        from tf_agents.trajectories import trajectory

        spec = self.agent.training_data_spec

        def tensors(arrays, structure):
            leaves = [tf.expand_dims(tf.convert_to_tensor(np.asarray(array), dtype=leaf.dtype), 1)
                      for array, leaf in zip(arrays, tf.nest.flatten(structure), strict=True)]
            return tf.nest.pack_sequence_as(structure, leaves)

        return trajectory.single_step(
            observation=tensors(payload["observation"], spec.observation),
            action=tensors([payload["action"]], spec.action),
            policy_info=tensors(payload["policy_info"], spec.policy_info),
            reward=tensors([payload["reward"]], spec.reward),
            discount=tf.ones([len(payload["reward"]), 1], dtype=tf.float32),
        )

    def train_on(self, payload: dict[str, Any]) -> float:
        """One ``agent.train`` call on a payload's transitions; returns TF-Agents' loss."""
        loss_info = self._train_fn(self.experience(payload))
        return float(loss_info.loss.numpy())

    @property
    def trains_by_gradient(self) -> bool:
        """Neural agents take optimizer steps; linear agents add closed-form statistics (whatever the batch)."""
        return self.agent_name.startswith("neural")

    def train_on_step(self, payload: dict[str, Any], minibatch_size: int | None = None) -> list[float]:
        """Train on one vector step's transitions; returns the loss of every ``agent.train`` call.

        Linear agents absorb the step in one call (splitting it would only apply the forgetting factor more
        often). Neural agents take one optimizer step per ``minibatch_size`` rows, in order, so the number of
        gradient steps per decision does not depend on how many sub-envs a runner steps at once.
        """
        rows = len(payload["reward"])
        if not rows:
            return []
        if not self.trains_by_gradient or not minibatch_size or rows <= minibatch_size:
            return [self.train_on(payload)]
        return [self.train_on(_rows(payload, slice(start, start + int(minibatch_size))))
                for start in range(0, rows, int(minibatch_size))]

    @property
    def train_step(self) -> int:
        """The agent's ``train_step_counter``: samples absorbed (linear agents) or ``train`` calls (neural)."""
        return int(self.agent.train_step_counter.numpy())

    # ----------------------------------------------------------------------------------------------
    # State (weights sync, checkpoints) and export
    # ----------------------------------------------------------------------------------------------

    def _state_variables(self, inference_only: bool) -> dict[str, Any]:
        named = {f"policy/{index:03d}": variable for index, variable in enumerate(self._policy_variables)}
        named["train_step"] = self.agent.train_step_counter
        if not inference_only:
            for index, variable in enumerate(self._optimizer_variables()):
                named[f"optimizer/{index:03d}"] = variable
        return named

    @override(TorchRLModule)
    def get_state(self, components=None, *, not_components=None, inference_only: bool = False,
                  **kwargs) -> dict[str, Any]:
        variables = self._state_variables(inference_only or self.inference_only)
        return {name: np.array(variable.numpy()) for name, variable in variables.items()}

    @override(TorchRLModule)
    def set_state(self, state: dict[str, Any]) -> None:
        for name, variable in self._state_variables(self.inference_only).items():
            if name not in state:
                continue
            value = np.asarray(state[name])
            if not variable.shape.is_compatible_with(value.shape):
                raise ValueError(f"state {name!r} ({variable.name}) has shape {value.shape}, the agent "
                                 f"{tuple(variable.shape)}: was it saved with other spaces or hyperparameters?")
            variable.assign(value.astype(variable.dtype.as_numpy_dtype, copy=False))

    def export(self, path: str | Path, policy: str = "greedy") -> Path:
        """Save one policy with TF-Agents' ``PolicySaver`` (a SavedModel with ``action``) to ``path``."""
        from tf_agents.policies import policy_saver

        path = Path(path)
        saver = policy_saver.PolicySaver(self.policy_by_name(policy), batch_size=None,
                                         train_step=self.agent.train_step_counter)
        saver.save(str(path))
        return path


def export_policy(algo_or_module, path: str | Path, policy: str = "greedy") -> Path:
    """Export the greedy (or ``"policy"`` / ``"collect"``) TF-Agents policy of an algorithm's Learner module
    (or of a ``TFAgentsBanditModule``) as a SavedModel for serving.

    Load it with ``tf.saved_model.load(path)`` and call ``.action(time_step)`` on a batched ``ts.restart``
    TimeStep (``TFAgentsBanditModule.time_step`` builds one); ``.get_train_step()`` is the agent's counter.
    """
    module = algo_or_module.module if hasattr(algo_or_module, "learner_group") else algo_or_module
    if not isinstance(module, TFAgentsBanditModule):
        raise TypeError(f"export_policy needs a TF-Agents algorithm or TFAgentsBanditModule, got {type(module)}")
    return module.export(path, policy=policy)
