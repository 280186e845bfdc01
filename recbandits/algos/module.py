"""The linear bandit RLModule: Bayesian linear regression per arm (disjoint) or over arm features (shared).

The module holds sufficient statistics, not weights learned by gradient descent:

    A = lambda_ * I + D,   D = sum_t gamma^(T-t) x_t x_t^T,   b = sum_t gamma^(T-t) r_t x_t,   theta = A^-1 b

The statistics alone are the state that is synchronized, checkpointed and served; ``refresh()`` derives the
posterior from them, and scores, choices and probabilities follow ``recbandits.algos.kernel`` (its table), the
same code the serving policy runs. Statistics are float64 throughout: the combined result of many env runners
must equal the closed-form ridge solution to 1e-6.

Shapes (observation; models; features of arm k):

- ``disjoint``: ``Box((d,))`` context, ``Discrete(K)`` actions; one per arm (K); the context.
- ``shared``: ``Dict(global=(g,), per_arm=(K, p))``; one; ``[global, per_arm[k]]`` and, with ``interaction``
  (the default), their outer product.

``forward_inference`` acts greedily whatever the exploration; ``random`` (uniform arms) is the floor of every
regret curve. For a ranking (a ``MultiDiscrete`` slate action of ``slate_size`` slots) the top scores form the
slate, best first.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.annotations import override

from recbandits.algos import kernel
from recbandits.algos.options import EXPLORATIONS

DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "exploration": "ucb",
    "alpha": 1.0,  # UCB width multiplier
    "lambda_": 1.0,  # ridge / prior precision
    "gamma": 1.0,  # forgetting factor per absorbed batch
    "epsilon": 0.05,
    "posterior_scale": None,  # v of LinTS; None: estimated from the residuals (normal-inverse-gamma prior)
    "noise_prior": 1.0,  # a0 = b0 of that prior: v^2 = (b0 + RSS/2) / (a0 + n/2)
    # Shared model: also the outer product of global and arm features. None: on for the shared shape, whose
    # MovieLens reward u . v no linear function of [u, v] can express.
    "interaction": None,
    "seed": 0,
}

SCORES = "scores"


def _observation_layout(observation_space: gym.Space, action_space: gym.Space) -> tuple[str, int, int, int]:
    """(shape, number of arms, global dim, arm dim) of the spaces, or a clear error."""
    if isinstance(observation_space, gym.spaces.Box) and isinstance(action_space, gym.spaces.Discrete):
        if len(observation_space.shape) != 1:
            raise ValueError(f"a disjoint linear bandit needs a flat context Box, got {observation_space}")
        return "disjoint", int(action_space.n), int(observation_space.shape[0]), 0
    if isinstance(observation_space, gym.spaces.Dict) and {"global", "per_arm"} <= set(observation_space.spaces):
        per_arm = observation_space["per_arm"].shape
        return "shared", int(per_arm[0]), int(observation_space["global"].shape[0]), int(per_arm[1])
    raise ValueError(
        "linear bandits need a Box context with Discrete actions (disjoint models) or a Dict observation with "
        f"'global' and 'per_arm' features (shared model); got {observation_space} and {action_space}"
    )


class LinearBanditModule(TorchRLModule):
    """Linear bandit policy over sufficient statistics (see the module docstring for the tables)."""

    @override(RLModule)
    def setup(self):
        config = {**DEFAULT_MODEL_CONFIG, **(self.model_config or {})}
        if config["exploration"] not in EXPLORATIONS:
            raise ValueError(f"exploration={config['exploration']!r} must be one of {', '.join(EXPLORATIONS)}")
        for name in ("alpha", "epsilon", "noise_prior"):
            if not np.isfinite(config[name]) or config[name] < 0:
                raise ValueError(f"{name}={config[name]} must be a finite number >= 0")
        if not config["lambda_"] > 0:
            raise ValueError(f"lambda_={config['lambda_']} must be > 0 (it keeps A invertible)")
        if not 0 < config["gamma"] <= 1:
            raise ValueError(f"gamma={config['gamma']} must be in (0, 1]")
        if config["epsilon"] > 1:
            raise ValueError(f"epsilon={config['epsilon']} must be in [0, 1]")
        self.exploration = config["exploration"]
        self.alpha = float(config["alpha"])
        self.lambda_ = float(config["lambda_"])
        self.gamma = float(config["gamma"])
        self.epsilon = float(config["epsilon"])
        self.posterior_scale = config["posterior_scale"]
        self.noise_prior = float(config["noise_prior"])
        # A MultiDiscrete action (recbandits' SlateSpace) is a ranking of that many slots.
        ranking = isinstance(self.action_space, gym.spaces.MultiDiscrete)
        self.slate_size = len(self.action_space.nvec) if ranking else 0
        self.shape, self.num_arms, self.global_dim, self.arm_dim = _observation_layout(
            self.observation_space,
            gym.spaces.Discrete(int(self.action_space.nvec[0])) if ranking else self.action_space,
        )
        interaction = config["interaction"]
        self.interaction = self.shape == "shared" if interaction is None else bool(interaction)
        if self.interaction and self.shape != "shared":
            raise ValueError("interaction applies to per-arm (shared) observations only; the disjoint shape "
                             "already has one model per arm")
        if self.shape == "disjoint":
            self.num_models, self.feature_dim = self.num_arms, self.global_dim
        else:
            self.num_models = 1
            self.feature_dim = self.global_dim + self.arm_dim
            if self.interaction:
                self.feature_dim += self.global_dim * self.arm_dim
        if self.slate_size > self.num_arms:
            raise ValueError(f"slate_size={self.slate_size} exceeds the {self.num_arms} candidates")

        self.max_feature_norm_sq = kernel.max_learnable_norm_sq(self.lambda_, self.feature_dim)

        models, dim = self.num_models, self.feature_dim
        # The state: float64 sufficient statistics (persistent buffers = what get_state/set_state carry).
        self.register_buffer("data_precision", torch.zeros(models, dim, dim, dtype=torch.float64))
        self.register_buffer("data_response", torch.zeros(models, dim, dtype=torch.float64))
        self.register_buffer("response_square", torch.zeros(models, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(models, dtype=torch.float64))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        self._generator = torch.Generator().manual_seed(int(config["seed"]))
        # Precision of the disjoint UCB widths: float32 where widths only rank the arms of a simulated step (their
        # product dominates its cost); the serving policy, which reports scores, sets float64.
        self.width_dtype = torch.float32
        self.refresh()

    # ----------------------------------------------------------------------------------------------
    # Posterior
    # ----------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Recompute the posterior (theta, A^-1, v: ``kernel.Posterior``) from the statistics."""
        self.posterior = kernel.Posterior.from_statistics(
            self.shape, self.data_precision, self.data_response, self.response_square, self.counts,
            lambda_=self.lambda_, posterior_scale=self.posterior_scale, noise_prior=self.noise_prior,
            width_dtype=self.width_dtype,
        )
        if self.shape == "shared":
            self.posterior.layout = (int(self.global_dim), int(self.arm_dim), bool(self.interaction))

    @property
    def theta(self) -> torch.Tensor:
        return self.posterior.theta

    @property
    def covariance(self) -> torch.Tensor:
        return self.posterior.covariance

    @property
    def noise_scale(self) -> torch.Tensor:
        return self.posterior.noise_scale

    @property
    def ill_conditioned(self) -> int:
        return self.posterior.ill_conditioned

    def absorb(self, precision: torch.Tensor, response: torch.Tensor, response_square: torch.Tensor,
               counts: torch.Tensor, decay: float = 1.0) -> None:
        """D <- decay * D + precision (and likewise b, sum r^2, n), then refresh the posterior."""
        if decay != 1.0:
            self.data_precision.mul_(decay)
            self.data_response.mul_(decay)
            self.response_square.mul_(decay)
            self.counts.mul_(decay)
        self.data_precision.add_(precision)
        self.data_response.add_(response)
        self.response_square.add_(response_square)
        self.counts.add_(counts)
        self.num_updates.add_(1)
        self.refresh()

    def statistics(self, features: torch.Tensor, models: torch.Tensor, rewards: torch.Tensor):
        """Sufficient statistics (precision, response, response_square, counts) of transitions.

        ``features`` [N, d] float64, ``models`` [N] index of the model each row updates, ``rewards`` [N].
        """
        return kernel.sufficient_statistics(features, models, rewards, self.num_models)

    # ----------------------------------------------------------------------------------------------
    # Features and scores
    # ----------------------------------------------------------------------------------------------

    def features(self, obs) -> torch.Tensor:
        """Disjoint: the contexts [B, d]. Shared: every candidate's features [B, K, d]. float64."""
        if self.shape == "disjoint":
            return torch.as_tensor(obs, dtype=torch.float64)
        return kernel.candidate_features(torch.as_tensor(obs["global"], dtype=torch.float64),
                                         torch.as_tensor(obs["per_arm"], dtype=torch.float64), self.interaction)

    def chosen_features(self, features: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, d], model index [N]) of the chosen arms, the rows to learn from."""
        if self.shape == "disjoint":
            return features, actions
        rows = torch.arange(len(actions))
        return features[rows, actions], torch.zeros_like(actions)

    def scores(self, features: torch.Tensor, exploration: str) -> torch.Tensor:
        """Score [B, K] of every (row, arm) under an exploration rule (``kernel``'s table)."""
        return self.posterior.scores(features, exploration, self.alpha, self._generator, self.num_arms)

    def choose(self, scores: torch.Tensor, exploration: str) -> torch.Tensor:
        """Actions from scores: argmax (uniform among exact ties) or the top ``slate_size``; epsilon-greedy swaps."""
        return kernel.choose(scores, exploration, self.epsilon, self._generator, self.slate_size)

    def probabilities(self, scores: torch.Tensor, exploration: str | None = None) -> torch.Tensor | None:
        """The probability [B, K] of each arm being the action ``choose`` takes (None for Thompson sampling)."""
        return kernel.action_probabilities(scores, exploration or self.exploration, self.epsilon)

    def act(self, obs, explore: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(actions, scores, features) for a batch of observations."""
        exploration = self.exploration if explore else "greedy"
        features = self.features(obs)
        scores = self.scores(features, exploration)
        return self.choose(scores, exploration), scores, features

    # ----------------------------------------------------------------------------------------------
    # RLModule API
    # ----------------------------------------------------------------------------------------------

    @override(TorchRLModule)
    def _forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        actions, scores, _ = self.act(batch[Columns.OBS], explore=False)
        return {Columns.ACTIONS: actions, SCORES: scores, Columns.ACTION_DIST_INPUTS: scores}

    @override(TorchRLModule)
    def _forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        actions, scores, _ = self.act(batch[Columns.OBS], explore=True)
        return {Columns.ACTIONS: actions, SCORES: scores, Columns.ACTION_DIST_INPUTS: scores}

    @override(RLModule)
    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        raise NotImplementedError("linear bandits learn from sufficient statistics, not from a training forward pass")

    @override(TorchRLModule)
    def get_state(self, *args, **kwargs) -> dict[str, Any]:
        return {name: buffer.detach().cpu().numpy().copy() for name, buffer in self.named_buffers()}

    @override(TorchRLModule)
    def set_state(self, state: dict[str, Any]) -> None:
        # RLlib's default converts float64 to float32; the statistics must stay float64 to remain exact.
        for name, buffer in self.named_buffers():
            if name in state:
                value = torch.from_numpy(np.array(state[name]))  # a copy: states may be read-only views
                if value.shape != buffer.shape:
                    raise ValueError(f"state {name!r} has shape {tuple(value.shape)}, the module {tuple(buffer.shape)}")
                buffer.copy_(value.to(buffer.dtype))
        self.refresh()
