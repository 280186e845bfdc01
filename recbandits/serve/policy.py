"""The served policy: a ``LinearBanditModule``'s posterior scored over any set of candidates.

The module scores a fixed number of arms per observation; a request names its own candidates (a subset of the
arms for the disjoint shape, any number of feature vectors for the shared shape). ``ServingPolicy`` keeps the
module as the holder of the sufficient statistics (``absorb``, ``get_state``/``set_state``, ``refresh``) and
computes scores from its public tensors (``theta``, ``covariance``, ``noise_scale``), as float64 numpy arrays
cached once per policy version:

| exploration | score of candidate k for context x (features f_k) | probability reported |
|---|---|---|
| ``ucb`` | theta.f_k + alpha * sqrt(f_k^T A^-1 f_k) | 1/#ties for the argmax set, 0 otherwise |
| ``greedy`` | theta.f_k | as ucb |
| ``eps_greedy`` | theta.f_k; uniform with probability epsilon | epsilon/n + (1 - epsilon)/#ties on the argmax set |
| ``thompson`` | theta~.f_k, theta~ ~ N(theta, v^2 A^-1) drawn per request (and per arm model) | none (no closed form) |
| ``random`` | a uniform draw | 1/n |

Disjoint: f_k = x and theta, A belong to arm k's model. Shared: f_k = [x, a_k] (+ x (outer) a_k with
``interaction``) and one model. The chosen candidate comes first in the ranking, the others follow by score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recbandits.algos.checkpoints import load_module
from recbandits.serve.config import MODEL_KEYS, ServeConfig

STATE_KEYS = ("data_precision", "data_response", "response_square", "counts", "num_updates")


# --------------------------------------------------------------------------------------------------
# Building the module
# --------------------------------------------------------------------------------------------------


def load_checkpoint_module(path: str | Path):
    from recbandits.algos.module import LinearBanditModule

    module = load_module(path)
    if not isinstance(module, LinearBanditModule):
        raise ValueError(f"checkpoint {path} holds a {type(module).__name__}, not a LinearBanditModule")
    return module


def policy_fields_of_module(module, config: ServeConfig) -> dict[str, Any]:
    """The policy fields (see ``config.POLICY_FIELDS``) describing a loaded module, with the config's overrides."""
    model_config = {key: module.model_config.get(key) for key in MODEL_KEYS if key in (module.model_config or {})}
    model_config.update(config.model_config)
    num_arms = module.num_arms if module.shape == "disjoint" else 0
    arm_ids = config.arm_ids if module.shape == "disjoint" else None
    if arm_ids is not None and len(arm_ids) != num_arms:
        raise ValueError(f"{len(arm_ids)} arm_ids for a checkpoint with {num_arms} arms")
    return {
        "shape": module.shape,
        "context_dim": int(module.global_dim),
        "num_arms": int(num_arms),
        "arm_dim": int(module.arm_dim),
        "arm_ids": arm_ids if arm_ids is not None else ([str(k) for k in range(num_arms)] if num_arms else None),
        "interaction": bool(module.interaction),
        "model_config": model_config,
    }


def cold_policy_fields(config: ServeConfig) -> dict[str, Any]:
    fields = config.policy_fields()
    if config.shape == "disjoint":
        fields["arm_ids"] = config.effective_arm_ids
        fields["arm_dim"] = 0
    else:
        fields["arm_ids"] = None
        fields["num_arms"] = 0
    return fields


def build_module(fields: dict[str, Any]):
    """A fresh LinearBanditModule of these policy fields (zero statistics)."""
    import gymnasium as gym

    from recbandits.algos.module import DEFAULT_MODEL_CONFIG, LinearBanditModule

    box = lambda shape: gym.spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32)  # noqa: E731
    if fields["shape"] == "disjoint":
        observation_space, action_space = box((fields["context_dim"],)), gym.spaces.Discrete(fields["num_arms"])
    else:
        observation_space = gym.spaces.Dict(
            {"global": box((fields["context_dim"],)), "per_arm": box((1, fields["arm_dim"]))}
        )
        action_space = gym.spaces.Discrete(1)
    model_config = {**DEFAULT_MODEL_CONFIG, **fields["model_config"], "interaction": fields["interaction"]}
    return LinearBanditModule(observation_space=observation_space, action_space=action_space, inference_only=False,
                              model_config=model_config)


def initial_policy(config: ServeConfig) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """(policy fields, initial state, origin) of a first start: the checkpoint's module, or a cold start."""
    if config.checkpoint:
        module = load_checkpoint_module(config.checkpoint)
        return policy_fields_of_module(module, config), module.get_state(), f"checkpoint:{config.checkpoint}"
    fields = cold_policy_fields(config)
    return fields, build_module(fields).get_state(), "cold"


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


@dataclass
class ScoreJob:
    """One request, validated: the context and its candidates (arm indices, or per-arm features)."""

    context: np.ndarray  # [g] float64
    arms: np.ndarray | None = None  # disjoint: [c] model index of each candidate
    arm_features: np.ndarray | None = None  # shared: [c, p] float64


@dataclass
class Decision:
    chosen: int  # index into the job's candidates
    order: list[int]  # candidate indices, chosen first, then by score
    scores: list[float]  # [c]
    probabilities: list[float] | None  # [c] probability of each candidate being the chosen one
    model: int  # model the chosen candidate's reward updates
    features: np.ndarray = field(repr=False)  # [D] features of the chosen candidate (what the reward teaches)


@dataclass
class LearningRecord:
    """A reward's contribution to the statistics of one model.

    ``full``: a new observation (precision += x x^T, counts += 1, response += r x, response_square += r^2).
    Otherwise a further reward added to an observation whose reward so far is ``previous``:
    response += r x, response_square += (previous + r)^2 - previous^2.
    """

    seq: int
    model: int
    features: np.ndarray
    reward: float
    full: bool = True
    previous: float = 0.0
    event_id: str = ""


class ServingPolicy:
    """A linear bandit posterior and the rule that turns it into decisions over candidate sets."""

    def __init__(self, fields: dict[str, Any], state: dict[str, np.ndarray] | None = None, seed: int | None = None):
        self.fields = fields
        self.module = build_module(fields)
        if state is not None:
            self.module.set_state(state)
        config = self.module
        self.shape = config.shape
        self.exploration = config.exploration
        self.alpha = config.alpha
        self.epsilon = config.epsilon
        self.context_dim = int(fields["context_dim"])
        self.arm_dim = int(fields["arm_dim"])
        self.num_models = config.num_models
        self.feature_dim = config.feature_dim
        self.interaction = bool(fields["interaction"])
        self.arm_ids: list[str] | None = fields.get("arm_ids")
        self.arm_index = {arm: k for k, arm in enumerate(self.arm_ids or [])}
        model_seed = fields["model_config"].get("seed", 0) if seed is None else seed
        self.rng = np.random.default_rng(model_seed)
        self._cache()

    # ----------------------------------------------------------------------------------------------

    def _cache(self) -> None:
        module = self.module
        self.theta = module.theta.detach().numpy().copy()  # [M, D]
        self.covariance = module.covariance.detach().numpy().copy()  # [M, D, D]
        self.noise = module.noise_scale.detach().numpy().copy()  # [M]
        self.observations = float(module.counts.sum())
        if self.shape == "disjoint":
            # Every arm's A_k^-1 side by side [D, K*D]: x^T A_k^-1 for all k is one matrix product.
            self._stacked = self.covariance.transpose(1, 0, 2).reshape(self.feature_dim, -1)
        self._factor = None

    @property
    def factor(self) -> np.ndarray:
        """Cholesky factor of A^-1 per model (Thompson sampling)."""
        if self._factor is None:
            import torch

            from recbandits.algos.module import covariance_factor

            self._factor = covariance_factor(torch.from_numpy(self.covariance)).numpy()
        return self._factor

    def get_state(self) -> dict[str, np.ndarray]:
        return self.module.get_state()

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.module.set_state(state)
        self._cache()

    @property
    def counts(self) -> np.ndarray:
        return self.module.counts.detach().numpy().copy()

    def statistics(self) -> dict[str, Any]:
        """A summary of the posterior for ``GET /v1/policy``."""
        counts = self.counts
        names = self.arm_ids if self.shape == "disjoint" else ["shared"]
        return {
            "observations": float(counts.sum()),
            "num_updates": int(self.module.num_updates.item()),
            "ill_conditioned_models": int(self.module.ill_conditioned),
            "models": [
                {"model": name, "observations": float(counts[m]), "noise_scale": float(self.noise[m]),
                 "theta_norm": float(np.linalg.norm(self.theta[m])),
                 "mean_uncertainty": float(np.sqrt(max(np.trace(self.covariance[m]) / self.feature_dim, 0.0)))}
                for m, name in enumerate(names)
            ],
        }

    # ----------------------------------------------------------------------------------------------

    def candidate_features(self, context: np.ndarray, arm_features: np.ndarray) -> np.ndarray:
        """Shared shape: [c, D] features of each candidate for this context."""
        repeated = np.broadcast_to(context, (arm_features.shape[0], context.shape[0]))
        parts = [repeated, arm_features]
        if self.interaction:
            parts.append((repeated[:, :, None] * arm_features[:, None, :]).reshape(arm_features.shape[0], -1))
        return np.concatenate(parts, axis=1)

    def _scores(self, jobs: list[ScoreJob]) -> list[tuple[np.ndarray, list[np.ndarray] | None]]:
        """Scores of every job's candidates (and, shared shape, their feature rows)."""
        exploration = self.exploration
        if self.shape == "disjoint":
            contexts = np.array([job.context for job in jobs])  # [B, d]
            if exploration == "random":
                return [(self.rng.random(len(job.arms)), None) for job in jobs]
            if exploration == "thompson":
                normal = self.rng.standard_normal((len(jobs), self.num_models, self.feature_dim))
                sampled = self.theta[None] + self.noise[None, :, None] * np.einsum("kij,bkj->bki", self.factor, normal)
                all_scores = np.einsum("bki,bi->bk", sampled, contexts)
            else:
                all_scores = contexts @ self.theta.T  # [B, K]
                if exploration == "ucb" and self.alpha > 0:
                    projected = (contexts @ self._stacked).reshape(len(jobs), self.num_models, self.feature_dim)
                    variance = (projected @ contexts[:, :, None])[:, :, 0]  # x^T A_k^-1 x for every arm k
                    all_scores += self.alpha * np.sqrt(np.maximum(variance, 0.0))
            return [(all_scores[b, job.arms], None) for b, job in enumerate(jobs)]

        features = [self.candidate_features(job.context, job.arm_features) for job in jobs]
        if exploration == "random":
            return [(self.rng.random(len(rows)), rows) for rows in features]
        if exploration == "thompson":
            normal = self.rng.standard_normal((len(jobs), self.feature_dim))
            sampled = self.theta[0][None] + self.noise[0] * normal @ self.factor[0].T  # [B, D]
            return [(rows @ sampled[b], rows) for b, rows in enumerate(features)]
        stacked = np.concatenate(features)
        scores = stacked @ self.theta[0]
        if exploration == "ucb" and self.alpha > 0:
            variance = np.maximum(((stacked @ self.covariance[0]) * stacked).sum(-1), 0.0)
            scores = scores + self.alpha * np.sqrt(variance)
        bounds = np.cumsum([0] + [len(rows) for rows in features])
        return [(scores[bounds[b]:bounds[b + 1]], rows) for b, rows in enumerate(features)]

    def decide(self, jobs: list[ScoreJob]) -> list[Decision]:
        """One decision per job (a batch of requests scored together)."""
        if not jobs:
            return []
        decisions = []
        exploration = self.exploration
        for job, (scores, rows) in zip(jobs, self._scores(jobs), strict=True):
            # Plain Python on the few candidates of a request: each numpy call costs more than the work here.
            values = scores.tolist()
            if not math.isfinite(sum(values)):  # any NaN or infinity makes the sum so
                # Inputs are finite and bounded (schemas.MAX_ABS_VALUE): this is a broken model, never logged.
                raise FloatingPointError(f"the policy scored candidates {values}: not finite")
            count = len(values)
            # Best first; the sort is stable (reverse=True included), so tied candidates stay in index order and
            # the ties are order[:num_ties].
            order = sorted(range(count), key=values.__getitem__, reverse=True)
            if exploration == "random":
                chosen = int(self.rng.integers(count))
                probabilities = [1.0 / count] * count
            else:
                best, num_ties = values[order[0]], 1
                while num_ties < count and values[order[num_ties]] == best:
                    num_ties += 1
                chosen = order[int(self.rng.integers(num_ties))] if num_ties > 1 else order[0]
                probabilities = None
                if exploration in ("ucb", "greedy", "eps_greedy"):
                    probabilities = [0.0] * count
                    for index in order[:num_ties]:
                        probabilities[index] = 1.0 / num_ties
                if exploration == "eps_greedy":
                    probabilities = [(1.0 - self.epsilon) * p + self.epsilon / count for p in probabilities]
                    if self.rng.random() < self.epsilon:
                        chosen = int(self.rng.integers(count))
            if chosen != order[0]:
                order.remove(chosen)
                order.insert(0, chosen)
            if self.shape == "disjoint":
                model, features = int(job.arms[chosen]), job.context
            else:
                model, features = 0, rows[chosen]
            decisions.append(Decision(chosen, order, values, probabilities, model, features))
        return decisions

    # ----------------------------------------------------------------------------------------------

    def learning_features(self, context: np.ndarray, chosen_features: np.ndarray | None) -> np.ndarray:
        """The features a logged decision's reward updates (replay of the log)."""
        if self.shape == "disjoint":
            return context
        return self.candidate_features(context, chosen_features[None, :])[0]

    def absorb(self, records: list[LearningRecord]) -> list[tuple[LearningRecord, str]]:
        """Add the records' statistics to the posterior (no forgetting: replay gives the same state).

        Returns the records quarantined instead of learned, each with its reason: features or reward not
        finite, or features whose squared norm exceeds the module's ``max_feature_norm_sq`` (a row float64
        cannot add without rounding away the rest of the model; ``algos.module.max_learnable_norm_sq``). The
        test reads the record alone, so live learning, restart replay and rebuilding an old version quarantine
        exactly the same records. Should absorbing a batch still leave the posterior non-finite, the batch is
        undone and absorbed record by record, and the records that break it are quarantined.
        """
        if not records:
            return []
        rows = np.stack([record.features for record in records])
        rewards = np.array([record.reward for record in records])
        norms = np.einsum("ij,ij->i", rows, rows)
        bound = self.module.max_feature_norm_sq
        ok = np.isfinite(norms) & np.isfinite(rewards) & (norms <= bound)
        quarantined = []
        for index in np.flatnonzero(~ok).tolist():
            if not np.isfinite(norms[index]) or not np.isfinite(rewards[index]):
                reason = "features or reward not finite"
            else:
                reason = (f"features too large to learn in float64: squared norm {norms[index]:.3g} > "
                          f"{bound:.3g} (lambda_ / (2 * feature_dim * 2^-53))")
            quarantined.append((records[index], reason))
        learnable = [record for record, keep in zip(records, ok.tolist(), strict=True) if keep]
        if learnable and self._try_add(learnable) is not None:
            for record in learnable:
                failure = self._try_add([record])
                if failure is not None:
                    quarantined.append((record, failure))
        self._cache()
        quarantined.sort(key=lambda item: item[0].seq)
        return quarantined

    def _try_add(self, records: list[LearningRecord]) -> str | None:
        """Absorb ``records``; None, or why they could not be (the posterior is then as before)."""
        before = self.module.get_state()
        try:
            self._add(records)
            module = self.module
            if (module.theta.isfinite().all() and module.covariance.isfinite().all()
                    and module.data_precision.isfinite().all()):
                return None
            failure = "absorbing it made the posterior non-finite"
        except (ArithmeticError, RuntimeError, ValueError) as error:
            failure = f"absorbing it failed: {type(error).__name__}: {error}"
        self.module.set_state(before)
        return failure

    def _add(self, records: list[LearningRecord]) -> None:
        import torch

        models, dim = self.num_models, self.feature_dim
        precision = np.zeros((models, dim, dim))
        response = np.zeros((models, dim))
        response_square = np.zeros(models)
        counts = np.zeros(models)
        full = [record for record in records if record.full]
        if full:
            index = np.array([record.model for record in full])
            rows = np.stack([record.features for record in full])
            np.add.at(precision, index, rows[:, :, None] * rows[:, None, :])
            np.add.at(counts, index, 1.0)
        index = np.array([record.model for record in records])
        rewards = np.array([record.reward for record in records])
        rows = np.stack([record.features for record in records])
        previous = np.array([0.0 if record.full else record.previous for record in records])
        np.add.at(response, index, rewards[:, None] * rows)
        np.add.at(response_square, index, 2.0 * previous * rewards + rewards * rewards)
        self.module.absorb(*(torch.from_numpy(array) for array in (precision, response, response_square, counts)))
