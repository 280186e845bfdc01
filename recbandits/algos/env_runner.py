"""BanditEnvRunner: drives a natively vectorized bandit env in numpy batches and returns sufficient statistics.

RLlib's stock ``SingleAgentEnvRunner`` builds an episode object per sub-env and step, runs connector
pipelines and converts info dicts per sub-env: right for long RL episodes, ~100x too slow for bandits, where
an "episode" is one decision. This runner keeps everything batched:

1. the policy scores the whole batch of contexts in one call (``LinearBanditModule.act``);
2. the vector env steps every sub-env at once;
3. the batch's sufficient statistics are absorbed into the runner's own copy of the posterior (so the next
   decisions already use them) and accumulated into a delta since the last weight sync;
4. ``sample_statistics()`` returns the delta and the metrics; the Learner adds the deltas of all runners.

What the runner returns is exact: the Learner's statistics after an iteration are those of the closed-form
ridge regression on every transition sampled by every runner (``record_transitions`` keeps the raw
transitions so tests can check this).
"""

from __future__ import annotations

import os
import time
from typing import Any

import gymnasium as gym
import numpy as np
import ray
import torch
from ray.rllib.core import COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.env import INPUT_ENV_SINGLE_SPACES, INPUT_ENV_SPACES
from ray.rllib.env.env_runner import EnvRunner
from ray.rllib.utils.annotations import override
from ray.rllib.utils.checkpoints import Checkpointable
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED, NUM_ENV_STEPS_SAMPLED_LIFETIME, WEIGHTS_SEQ_NO

import recbandits.envs  # noqa: F401  (registers the env ids in this process)
from recbandits.algos import kernel
from recbandits.algos import metrics as bandit_metrics
from recbandits.algos.module import LinearBanditModule

ORACLE = "oracle"


class BanditEnvRunner(EnvRunner, Checkpointable):
    """Samples ``rollout_fragment_length`` batched steps of ``num_envs_per_env_runner`` sub-envs per call."""

    def __init__(self, *, config, **kwargs):
        super().__init__(config=config, **kwargs)
        # One thread per runner: runners are the unit of parallelism; intra-op threads would oversubscribe.
        torch.set_num_threads(1)
        self.spaces = kwargs.get("spaces") or {}
        self.env: gym.vector.VectorEnv | None = None
        self.num_envs = 0
        if self.worker_index is None or self.worker_index > 0 or self.config.num_env_runners == 0:
            self.make_env()
        self.module: LinearBanditModule | None = None
        self.make_module()
        self._observations = None
        self._weights_seq_no = 0
        self._reset_delta()
        self.recorded: list[dict[str, np.ndarray]] = []
        self._batches_learned = 0

    # ----------------------------------------------------------------------------------------------
    # Construction
    # ----------------------------------------------------------------------------------------------

    @property
    def _runner_offset(self) -> int:
        """Index of this runner among the remote ones (0 for the only, local, runner)."""
        return max((self.worker_index or 1) - 1, 0)

    @override(EnvRunner)
    def make_env(self) -> None:
        env_config = dict(self.config.env_config)
        env_config.setdefault("episode_length", None)  # bandit contexts never end an episode
        self.env = gym.make_vec(
            self.config.env,
            num_envs=self.config.num_envs_per_env_runner,
            vectorization_mode="vector_entry_point",
            **env_config,
        )
        self.num_envs = self.env.num_envs
        # Runner r steps the sub-envs seeded seed + r * num_envs + i: the runners together simulate the same
        # sub-envs as one runner with all of them, so the split over runners (or nodes) changes no world.
        base_seed = self.config.seed if self.config.seed is not None else 0
        self._env_seed = int(base_seed) + self._runner_offset * self.num_envs
        self._observations = None

    @override(EnvRunner)
    def make_module(self) -> None:
        spec = self.config.get_rl_module_spec(spaces=self.get_spaces(), inference_only=True)
        model_config = dict(spec.model_config or {})
        # Each runner draws its own exploration randomness.
        model_config["seed"] = int(model_config.get("seed", 0)) * 1_000_003 + self._runner_offset + 1
        spec.model_config = model_config
        self.module = spec.build()

    @override(EnvRunner)
    def get_spaces(self) -> dict[str, tuple[gym.Space, gym.Space]]:
        if self.env is None:
            return self.spaces
        return {
            INPUT_ENV_SPACES: (self.env.observation_space, self.env.action_space),
            INPUT_ENV_SINGLE_SPACES: (self.env.single_observation_space, self.env.single_action_space),
            DEFAULT_MODULE_ID: (self.env.single_observation_space, self.env.single_action_space),
        }

    @override(EnvRunner)
    def assert_healthy(self):
        assert self.env is not None and self.module is not None, "BanditEnvRunner has no env or module"

    # ----------------------------------------------------------------------------------------------
    # Sampling
    # ----------------------------------------------------------------------------------------------

    def _reset_delta(self) -> None:
        self._delta: list[torch.Tensor] | None = None
        self._delta_batches = 0

    def _accumulate(self, statistics) -> None:
        gamma = self.module.gamma
        if self._delta is None:
            self._delta = [value.clone() for value in statistics]
        else:
            for total, value in zip(self._delta, statistics, strict=True):
                if gamma != 1.0:
                    total.mul_(gamma)
                total.add_(value)
        self._delta_batches += 1

    def _first_reset_seed(self) -> int:
        """A runner joining a run in progress (restarted, or restored from a checkpoint) gets fresh streams.

        Otherwise it would replay the very contexts (and exploration draws) the run started with.
        """
        progress = int(getattr(self.module, "num_updates", 0))  # the Learner's count arrives with set_state
        if progress == 0:
            return self._env_seed  # a fresh run: the seeds depend only on seed and runner index
        seed = int(np.random.SeedSequence([self._env_seed, progress]).generate_state(1)[0])
        generator = getattr(self.module, "_generator", None)
        if generator is not None:
            generator.manual_seed(seed)
        return seed

    def _policy_actions(self, observations, policy: str):
        """(actions as a tensor, whatever ``_learn`` needs of the decision: here the features)."""
        if policy == ORACLE:
            return torch.as_tensor(self.env.unwrapped.oracle_action()), None
        actions, _, features = self.module.act(observations, explore=True)
        return actions, features

    def _learns(self, policy: str) -> bool:
        return policy != ORACLE and self.module.exploration != "random"

    def _take_learning_payload(self):
        """What the Learner needs of this call's data (the statistics delta), then start a new one."""
        delta = self._delta
        self._reset_delta()
        return None if delta is None else [value.numpy() for value in delta]

    @override(EnvRunner)
    def sample(self, **kwargs) -> dict[str, Any]:  # the EnvRunner API name
        return self.sample_statistics(**kwargs)

    def sample_statistics(self, num_steps: int | None = None, policy: str | None = None) -> dict[str, Any]:
        """Run ``num_steps`` vector steps (default ``rollout_fragment_length``); return the stats delta."""
        steps = int(num_steps or self.config.get_rollout_fragment_length(self.worker_index or 0))
        policy = policy or self.config.bandit_policy
        learn = self._learns(policy)
        if self._observations is None:
            self._observations, _ = self.env.reset(seed=self._first_reset_seed())
        tracker = bandit_metrics.StepTracker()
        trace = np.zeros((steps, 3)) if self.config.record_regret_trace else None
        started, started_cpu = time.perf_counter(), time.thread_time()
        for step in range(steps):
            actions, features = self._policy_actions(self._observations, policy)
            next_observations, rewards, _, _, infos = self.env.step(actions.numpy())
            acted = infos["_regret"]
            if trace is not None:
                trace[step] = (tracker.regret, tracker.suboptimal, tracker.steps)
            tracker.add(rewards, infos, acted)
            if learn:
                self._learn(self._observations, features, actions, rewards, infos, acted)
            self._observations = next_observations
        cpu_time = time.thread_time() - started_cpu  # read inside the wall-clock interval
        self._log_metrics(tracker, time.perf_counter() - started, cpu_time)
        if trace is not None:  # per vector step: regret, suboptimal decisions, decisions
            trace = np.diff(np.vstack([trace, [tracker.regret, tracker.suboptimal, tracker.steps]]), axis=0)
        result = {
            "num_batches": self._delta_batches,
            "sums": tracker.sums(),
            "trace": trace,
            "worker_index": self.worker_index,
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
            "pid": os.getpid(),
        }
        result["payload"] = self._take_learning_payload()
        return result

    def _learn(self, observations, features, actions, rewards, infos, acted) -> None:
        """Learn from one vector step: absorb its statistics locally and add them to the delta."""
        module = self.module
        rows = torch.from_numpy(np.flatnonzero(acted))
        if module.slate_size:
            chosen, models, targets = self._slate_feedback(features, actions, infos, rows)
        else:
            chosen, models = module.chosen_features(features[rows], actions[rows])
            targets = torch.from_numpy(np.asarray(rewards, dtype=np.float64))[rows]
        statistics = module.statistics(chosen, models, targets)
        module.absorb(*statistics, decay=module.gamma)
        self._accumulate(statistics)
        if self.config.record_transitions:
            self.recorded.append({"features": chosen.numpy(), "models": models.numpy(), "rewards": targets.numpy(),
                                  "batch": np.full(len(targets), self._batches_learned)})
        self._batches_learned += 1

    def _slate_feedback(self, features, actions, infos, rows):
        """Per-slot observations of a slate: (features, model index, click) of every slot the user examined
        (``kernel.slate_feedback``: the rule the service learns a slate's feedback by, too)."""
        slate = actions[rows]  # [N, S]
        slots = slate.shape[1]
        slot_features = features[rows.unsqueeze(1), slate]  # [N, S, d]
        if "slot_clicks" in infos:
            observed, clicks = kernel.slate_feedback(slots, slot_rewards=infos["slot_clicks"][rows.numpy()])
        else:
            observed, clicks = kernel.slate_feedback(slots, clicked_position=infos["clicked_position"][rows.numpy()])
        chosen = slot_features[observed]
        return chosen, torch.zeros(len(chosen), dtype=torch.int64), clicks[observed]

    def _log_metrics(self, tracker: bandit_metrics.StepTracker, elapsed: float, cpu_time: float) -> None:
        for key, value in tracker.sums().items():
            self.metrics.log_value(key, value, reduce="sum")
        self.metrics.log_value(NUM_ENV_STEPS_SAMPLED, tracker.steps, reduce="sum")
        self.metrics.log_value(NUM_ENV_STEPS_SAMPLED_LIFETIME, tracker.steps, reduce="lifetime_sum")
        self.metrics.log_value(bandit_metrics.CUMULATIVE_REGRET, tracker.regret, reduce="lifetime_sum")
        self.metrics.log_value(bandit_metrics.SAMPLE_TIME, elapsed, reduce="sum")
        self.metrics.log_value(bandit_metrics.SAMPLE_CPU_TIME, cpu_time, reduce="sum")
        self.num_env_steps_sampled_lifetime += tracker.steps

    @override(EnvRunner)
    def get_metrics(self) -> dict[str, Any]:
        return self.metrics.reduce()

    def recorded_transitions(self) -> dict[str, np.ndarray]:
        """Every transition learned from since construction (with ``record_transitions``), concatenated.

        ``batch`` numbers the batches this runner absorbed, which the forgetting factor discounts by.
        """
        if not self.recorded:
            return {"features": np.zeros((0, self.module.feature_dim)), "models": np.zeros(0, np.int64),
                    "rewards": np.zeros(0), "batch": np.zeros(0, np.int64)}
        return {key: np.concatenate([part[key] for part in self.recorded]) for key in self.recorded[0]}

    # ----------------------------------------------------------------------------------------------
    # State (weights sync, checkpoints)
    # ----------------------------------------------------------------------------------------------

    @override(Checkpointable)
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        state: dict[str, Any] = {NUM_ENV_STEPS_SAMPLED_LIFETIME: self.num_env_steps_sampled_lifetime}
        if self._check_component(COMPONENT_RL_MODULE, components, not_components):
            state[COMPONENT_RL_MODULE] = self.module.get_state()
            state[WEIGHTS_SEQ_NO] = self._weights_seq_no
        return state

    @override(Checkpointable)
    def set_state(self, state: dict[str, Any]) -> None:
        if COMPONENT_RL_MODULE in state:
            module_state = state[COMPONENT_RL_MODULE]
            if isinstance(module_state, ray.ObjectRef):
                module_state = ray.get(module_state)
            if isinstance(module_state, dict) and DEFAULT_MODULE_ID in module_state:
                module_state = module_state[DEFAULT_MODULE_ID]
            # The global posterior replaces the local one; local data not yet returned would be lost, but
            # sample_statistics() always returns (and clears) the delta before the algorithm syncs.
            self.module.set_state(module_state)
            self._weights_seq_no = state.get(WEIGHTS_SEQ_NO, self._weights_seq_no)
        if NUM_ENV_STEPS_SAMPLED_LIFETIME in state:
            self.num_env_steps_sampled_lifetime = state[NUM_ENV_STEPS_SAMPLED_LIFETIME]

    @override(Checkpointable)
    def get_ctor_args_and_kwargs(self):
        return (), {"config": self.config}

    @override(Checkpointable)
    def get_checkpointable_components(self):
        return [(COMPONENT_RL_MODULE, self.module)]

    @override(EnvRunner)
    def stop(self) -> None:
        if self.env is not None:
            self.env.close()
