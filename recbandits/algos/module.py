"""The linear bandit RLModule: Bayesian linear regression per arm (disjoint) or over arm features (shared).

The module holds sufficient statistics, not weights learned by gradient descent:

    A = lambda_ * I + D,   D = sum_t gamma^(T-t) x_t x_t^T,   b = sum_t gamma^(T-t) r_t x_t,   theta = A^-1 b

Every quantity the policies need (theta, A^-1, its Cholesky factor, the noise scale) is derived from the
statistics in ``refresh()``, so the statistics alone are the state that is synchronized, checkpointed and
served. Statistics are float64 throughout: the combined result of many env runners must equal the
closed-form ridge solution to 1e-6.

Shapes (observation; models; features of arm k):

- ``disjoint``: ``Box((d,))`` context, ``Discrete(K)`` actions; one per arm (K); the context.
- ``shared``: ``Dict(global=(g,), per_arm=(K, p))``; one; ``[global, per_arm[k]]`` and, with ``interaction``
  (the default), their outer product.

| Exploration | Action of a row |
|---|---|
| ``ucb`` | argmax theta.x + alpha * sqrt(x^T A^-1 x) |
| ``thompson`` | argmax theta~.x with theta~ ~ N(theta, v^2 A^-1) drawn per decision (and per arm's model) |
| ``eps_greedy`` | a uniformly random arm with probability epsilon, else argmax theta.x |
| ``greedy`` | argmax theta.x (also what ``forward_inference`` does for every exploration) |
| ``random`` | a uniformly random arm (the floor of every regret curve) |

For a ranking (a ``MultiDiscrete`` slate action of ``slate_size`` slots) the top scores form the slate, best first.
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


UNIT_ROUNDOFF = 2.0**-53  # float64


def max_learnable_norm_sq(lambda_: float, feature_dim: int) -> float:
    """The largest squared norm ||x||^2 of a feature row that a model can learn from in float64.

    Adding x x^T to the statistics rounds each entry by up to u |x_i x_j| (u = 2^-53), a perturbation of A of
    spectral norm <= feature_dim * u * ||x||^2. Up to lambda_ / 2 it leaves every eigenvalue of the stored A at
    >= lambda_ / 2, so the posterior in every other direction survives the row. A larger row (a context of 1e8
    where the others are ~1) would swamp lambda_ by rounding alone: the serving policy quarantines it instead.
    """
    return lambda_ / (2.0 * feature_dim * UNIT_ROUNDOFF)


def covariance_factor(covariance: torch.Tensor) -> torch.Tensor:
    """L with L L^T = A^-1 per model, for sampling theta~ = theta + v L z.

    Cholesky where it succeeds; a model whose A^-1 rounding left not positive-definite gets the symmetric square
    root of its eigendecomposition (eigenvalues clipped at 0), which has the same L L^T.
    """
    factor, info = torch.linalg.cholesky_ex(covariance)
    failed = (info != 0).nonzero().flatten()
    if len(failed):
        symmetric = 0.5 * (covariance[failed] + covariance[failed].transpose(-1, -2))
        eigenvalues, eigenvectors = torch.linalg.eigh(symmetric)
        factor[failed] = (
            (eigenvectors * eigenvalues.clamp_min(0.0).sqrt().unsqueeze(-2)) @ eigenvectors.transpose(-1, -2)
        )
    return factor


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

        self.max_feature_norm_sq = max_learnable_norm_sq(self.lambda_, self.feature_dim)

        models, dim = self.num_models, self.feature_dim
        # The state: float64 sufficient statistics (persistent buffers = what get_state/set_state carry).
        self.register_buffer("data_precision", torch.zeros(models, dim, dim, dtype=torch.float64))
        self.register_buffer("data_response", torch.zeros(models, dim, dtype=torch.float64))
        self.register_buffer("response_square", torch.zeros(models, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(models, dtype=torch.float64))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        self._generator = torch.Generator().manual_seed(int(config["seed"]))
        self.refresh()

    # ----------------------------------------------------------------------------------------------
    # Posterior
    # ----------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Recompute theta, A^-1 and the sampling factor from the statistics.

        A = lambda_ I + D with D positive semi-definite, so every eigenvalue of A is >= lambda_. Where rounding
        makes the stored A not positive-definite for Cholesky (statistics spanning more than ~1/eps in scale,
        e.g. one context of 1e8 next to contexts of 1), that model's A is factored by its eigendecomposition
        with the eigenvalues clipped at lambda_: the posterior stays finite and positive-definite for any
        finite statistics. ``ill_conditioned`` counts the models that needed it.
        """
        eye = torch.eye(self.feature_dim, dtype=torch.float64)
        precision = self.data_precision + self.lambda_ * eye
        cholesky, info = torch.linalg.cholesky_ex(precision)
        failed = (info != 0).nonzero().flatten()
        self.ill_conditioned = len(failed)
        if len(failed):
            cholesky[failed] = eye  # a placeholder, overwritten below (a failed factor may be singular)
        self.covariance = torch.cholesky_inverse(cholesky)
        self.theta = torch.cholesky_solve(self.data_response.unsqueeze(-1), cholesky).squeeze(-1)
        if len(failed):
            symmetric = 0.5 * (precision[failed] + precision[failed].transpose(-1, -2))
            eigenvalues, eigenvectors = torch.linalg.eigh(symmetric)
            inverse = eigenvectors * eigenvalues.clamp_min(self.lambda_).reciprocal().unsqueeze(-2)
            covariance = inverse @ eigenvectors.transpose(-1, -2)
            self.covariance[failed] = covariance
            self.theta[failed] = (covariance @ self.data_response[failed].unsqueeze(-1)).squeeze(-1)
        self._covariance_factor = None  # computed when Thompson sampling first needs it
        if self.shape == "disjoint":
            # All arms' A_k^-1 side by side [d, K*d], so x^T A_k^-1 for every k is one matrix product. float32:
            # widths only rank arms, and this product dominates the cost of sampling.
            self._covariance_stacked = (
                self.covariance.transpose(0, 1).reshape(self.feature_dim, -1).to(torch.float32)
            )

    @property
    def noise_scale(self) -> torch.Tensor:
        """v per model: fixed, or from a normal-inverse-gamma prior IG(a0, b0) on the noise variance, a0 = b0 =
        ``noise_prior``: v^2 = b_n / a_n = (b0 + (y^T y - b^T theta) / 2) / (a0 + n / 2), the reciprocal of the
        posterior mean of the noise precision."""
        if self.posterior_scale is not None:
            return torch.full((self.num_models,), float(self.posterior_scale), dtype=torch.float64)
        # y^T y - b^T theta: the ridge fit's residual sum of squares plus lambda |theta|^2 (>= 0 up to rounding).
        residual = (self.response_square - (self.data_response * self.theta).sum(-1)).clamp_min(0.0)
        prior = self.noise_prior
        return torch.sqrt((prior + 0.5 * residual) / (prior + 0.5 * self.counts))

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
        models_count, dim = self.num_models, self.feature_dim
        precision = self._grouped_gram(features, models)
        response = torch.zeros(models_count, dim, dtype=torch.float64).index_add_(
            0, models, features * rewards.unsqueeze(1)
        )
        response_square = torch.zeros(models_count, dtype=torch.float64).index_add_(0, models, rewards * rewards)
        counts = torch.bincount(models, minlength=models_count).to(torch.float64)
        return precision, response, response_square, counts

    def _grouped_gram(self, features: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """sum of x x^T per model [M, d, d], as one batched product of the rows grouped by model.

        Grouping keeps the working set at the size of the features; summing per-row outer products would
        write an [N, d*d] temporary that spills out of the core's cache and slows every other runner on the
        machine.
        """
        if self.num_models == 1:
            return (features.T @ features).unsqueeze(0)
        counts = torch.bincount(models, minlength=self.num_models)
        order = torch.argsort(models, stable=True)
        grouped_models = models[order]
        position = torch.arange(len(models)) - (torch.cumsum(counts, 0) - counts)[grouped_models]
        padded = torch.zeros(self.num_models, int(counts.max()) if len(models) else 0, self.feature_dim,
                             dtype=torch.float64)
        padded[grouped_models, position] = features[order]
        return padded.transpose(1, 2) @ padded

    # ----------------------------------------------------------------------------------------------
    # Features and scores
    # ----------------------------------------------------------------------------------------------

    def features(self, obs) -> torch.Tensor:
        """Disjoint: the contexts [B, d]. Shared: every candidate's features [B, K, d]. float64."""
        if self.shape == "disjoint":
            return torch.as_tensor(obs, dtype=torch.float64)
        global_features = torch.as_tensor(obs["global"], dtype=torch.float64)
        arm_features = torch.as_tensor(obs["per_arm"], dtype=torch.float64)
        repeated = global_features.unsqueeze(1).expand(-1, arm_features.shape[1], -1)
        parts = [repeated, arm_features]
        if self.interaction:
            parts.append((repeated.unsqueeze(-1) * arm_features.unsqueeze(-2)).flatten(-2))
        return torch.cat(parts, dim=-1)

    def chosen_features(self, features: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, d], model index [N]) of the chosen arms, the rows to learn from."""
        if self.shape == "disjoint":
            return features, actions
        rows = torch.arange(len(actions))
        return features[rows, actions], torch.zeros_like(actions)

    def mean_scores(self, features: torch.Tensor) -> torch.Tensor:
        if self.shape == "disjoint":
            return features @ self.theta.T  # [B, K]
        return features @ self.theta[0]

    def _variance(self, features: torch.Tensor) -> torch.Tensor:
        """x^T A^-1 x of every (row, arm)."""
        if self.shape == "disjoint":
            contexts = features.to(torch.float32)
            projected = (contexts @ self._covariance_stacked).view(len(contexts), self.num_models, self.feature_dim)
            # In place: a second [B, K, d] temporary costs 4x the time (fresh pages from the allocator).
            return projected.mul_(contexts.unsqueeze(1)).sum(-1).to(torch.float64)
        return ((features @ self.covariance[0]) * features).sum(-1)

    def _sampled_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Thompson sampling: one theta~ ~ N(theta, v^2 A^-1) per decision (per model), scored on every arm."""
        if self._covariance_factor is None:
            self._covariance_factor = covariance_factor(self.covariance)
        batch = features.shape[0]
        normal = torch.randn(batch, self.num_models, self.feature_dim, dtype=torch.float64, generator=self._generator)
        scale = self.noise_scale.view(1, -1, 1)
        sampled = self.theta.unsqueeze(0) + scale * torch.einsum("mij,bmj->bmi", self._covariance_factor, normal)
        if self.shape == "disjoint":
            return (sampled * features.unsqueeze(1)).sum(-1)  # [B, K]: arm k scored with its own theta~
        return torch.einsum("bkd,bd->bk", features, sampled[:, 0])

    def scores(self, features: torch.Tensor, exploration: str) -> torch.Tensor:
        """Score of every (row, arm) under an exploration rule; the action is the argmax (or top-k)."""
        if exploration == "ucb":
            return self.mean_scores(features) + self.alpha * self._variance(features).clamp_min(0.0).sqrt()
        if exploration == "thompson":
            return self._sampled_scores(features)
        if exploration == "random":
            return torch.rand(features.shape[0], self.num_arms, dtype=torch.float64, generator=self._generator)
        return self.mean_scores(features)  # greedy, eps_greedy

    def choose(self, scores: torch.Tensor, exploration: str) -> torch.Tensor:
        """Actions from scores: argmax (ties broken at random) or the top ``slate_size``; epsilon-greedy swaps."""
        batch = scores.shape[0]
        tie_break = torch.rand(scores.shape, dtype=torch.float64, generator=self._generator)
        # Scores are compared first; the random key only orders exact ties (cold start, equal widths).
        keyed = scores + tie_break * 1e-9 * (1.0 + scores.abs())
        if self.slate_size:
            actions = keyed.topk(self.slate_size, dim=-1).indices
        else:
            actions = keyed.argmax(-1)
        if exploration == "eps_greedy" and self.epsilon > 0:
            explore = torch.rand(batch, generator=self._generator) < self.epsilon
            if explore.any():
                random_keys = torch.rand(int(explore.sum()), self.num_arms, generator=self._generator)
                if self.slate_size:
                    actions[explore] = random_keys.topk(self.slate_size, dim=-1).indices
                else:
                    actions[explore] = random_keys.argmax(-1)
        return actions

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
