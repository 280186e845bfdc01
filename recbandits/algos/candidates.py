"""Policies over candidate sets: what serving and off-policy evaluation ask of a policy.

A request, or a logged decision, is a context and its candidates (``CandidateSet``): arms of the disjoint
shape, or feature vectors of the shared shape. A ``CandidatePolicy`` decides a batch of them: per decision the
chosen candidate, the ranking (chosen first, the others best first) and each candidate's probability of being
chosen. ``LinearCandidatePolicy`` is the linear bandits' implementation: a ``LinearBanditModule`` holds the
sufficient statistics (``absorb``, ``get_state``/``set_state``) and the kernel (``recbandits.algos.kernel``,
whose table gives every exploration's score and probability) scores, chooses and reports probabilities on a
float64 posterior, so the widths it reports are exact. Requests of a batch are padded to one candidate count.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from recbandits.algos import kernel
from recbandits.algos.options import MODEL_KEYS


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


def module_policy_fields(module) -> dict[str, Any]:
    """The policy fields (``build_module``'s input) describing a LinearBanditModule; arms are named 0..K-1."""
    model_config = {key: module.model_config.get(key) for key in MODEL_KEYS if key in (module.model_config or {})}
    num_arms = module.num_arms if module.shape == "disjoint" else 0
    return {
        "shape": module.shape,
        "context_dim": int(module.global_dim),
        "num_arms": int(num_arms),
        "arm_dim": int(module.arm_dim),
        "arm_ids": [str(k) for k in range(num_arms)] if num_arms else None,
        "interaction": bool(module.interaction),
        "model_config": model_config,
        "slate_size": int(module.slate_size),
    }


# --------------------------------------------------------------------------------------------------


@dataclass
class CandidateSet:
    """One decision to make: the context and its candidates (arm indices, or per-arm features)."""

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
    # A ranking policy's slate: candidate indices top slot first (``chosen`` is the first), the probability that
    # each slot shows its candidate (None for Thompson sampling), each slot's features [S, D].
    slate: list[int] | None = None
    slot_probabilities: list[float] | None = None
    slate_features: np.ndarray | None = field(default=None, repr=False)


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


class CandidatePolicy(abc.ABC):
    """Decides batches of candidate sets; what the service and off-policy evaluation depend on."""

    @abc.abstractmethod
    def decide(self, jobs: list[CandidateSet]) -> list[Decision]:
        """One decision per candidate set, in order; ``Decision.probabilities`` None where no closed form exists."""


class LinearCandidatePolicy(CandidatePolicy):
    """A linear bandit posterior and the rule that turns it into decisions over candidate sets."""

    def __init__(self, fields: dict[str, Any], state: dict[str, np.ndarray] | None = None, seed: int | None = None):
        self.fields = fields
        self.module = module = build_module(fields)
        module.width_dtype = torch.float64  # served scores report exact widths
        if state is not None:
            module.set_state(state)
        else:
            module.refresh()
        self.shape = module.shape
        self.exploration = module.exploration
        self.alpha = module.alpha
        self.epsilon = module.epsilon
        self.context_dim = int(fields["context_dim"])
        self.arm_dim = int(fields["arm_dim"])
        self.num_models = module.num_models
        self.feature_dim = module.feature_dim
        self.interaction = bool(fields["interaction"])
        self.arm_ids: list[str] | None = fields.get("arm_ids")
        self.slate_size = int(fields.get("slate_size") or 0)  # 0: one action per decision
        self.arm_index = {arm: k for k, arm in enumerate(self.arm_ids or [])}
        model_seed = fields["model_config"].get("seed", 0) if seed is None else seed
        self.generator = torch.Generator().manual_seed(int(model_seed))
        self._cache()

    # ----------------------------------------------------------------------------------------------

    def _cache(self) -> None:
        self.posterior = self.module.posterior
        self.theta = self.posterior.theta  # [M, D]
        self.covariance = self.posterior.covariance  # [M, D, D]
        self.noise = self.posterior.noise_scale  # [M]
        self.observations = float(self.module.counts.sum())

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
        theta, covariance, noise = self.theta.numpy(), self.covariance.numpy(), self.noise.numpy()
        names = self.arm_ids if self.shape == "disjoint" else ["shared"]
        return {
            "observations": float(counts.sum()),
            "num_updates": int(self.module.num_updates.item()),
            "ill_conditioned_models": int(self.posterior.ill_conditioned),
            "models": [
                {"model": name, "observations": float(counts[m]), "noise_scale": float(noise[m]),
                 "theta_norm": float(np.linalg.norm(theta[m])),
                 "mean_uncertainty": float(np.sqrt(max(np.trace(covariance[m]) / self.feature_dim, 0.0)))}
                for m, name in enumerate(names)
            ],
        }

    # ----------------------------------------------------------------------------------------------

    def candidate_features(self, context: np.ndarray, arm_features: np.ndarray) -> np.ndarray:
        """Shared shape: [c, D] features of each candidate for this context."""
        return kernel.candidate_features(torch.from_numpy(context), torch.from_numpy(arm_features),
                                         self.interaction).numpy()

    def _scores(self, jobs: list[CandidateSet]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(scores [B, C] padded with -inf, valid [B, C], shared shape: candidate features [B, C, D])."""
        sizes = [len(job.arms) if self.shape == "disjoint" else len(job.arm_features) for job in jobs]
        width = max(sizes)
        valid = torch.arange(width).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
        contexts = torch.from_numpy(np.stack([job.context for job in jobs]))
        if self.shape == "disjoint":
            arms = torch.zeros(len(jobs), width, dtype=torch.int64)
            for b, job in enumerate(jobs):
                arms[b, :sizes[b]] = torch.from_numpy(np.asarray(job.arms, dtype=np.int64))
            all_arms = self.posterior.scores(contexts, self.exploration, self.alpha, self.generator, self.num_models)
            scores, features = all_arms.gather(1, arms), None
        else:
            arm_features = torch.zeros(len(jobs), width, self.arm_dim, dtype=torch.float64)
            for b, job in enumerate(jobs):
                arm_features[b, :sizes[b]] = torch.from_numpy(job.arm_features)
            features = kernel.candidate_features(contexts, arm_features, self.interaction)
            scores = self.posterior.scores(features, self.exploration, self.alpha, self.generator, width)
        return scores.masked_fill(~valid, -torch.inf), valid, features

    def decide(self, jobs: list[CandidateSet]) -> list[Decision]:
        if not jobs:
            return []
        scores, valid, features = self._scores(jobs)
        if not bool(torch.isfinite(scores[valid]).all()):
            # Inputs are finite and bounded (schemas.MAX_ABS_VALUE): this is a broken model, never logged.
            raise FloatingPointError(f"the policy scored candidates {scores[valid].tolist()}: not finite")
        sizes = valid.sum(-1).tolist()
        slates = slot_probabilities = None
        if self.slate_size:
            # Rows with fewer candidates than slots get shorter slates (their padding sorts last).
            width = min(self.slate_size, max(sizes))
            slates = kernel.choose(scores, self.exploration, self.epsilon, self.generator, width, valid=valid)
            chosen = slates[:, 0].tolist()
            slot_probabilities = kernel.slot_probabilities(scores, slates, self.exploration, self.epsilon, valid)
            slot_probabilities = slot_probabilities.tolist() if slot_probabilities is not None else None
            slates = slates.tolist()
        else:
            chosen = kernel.choose(scores, self.exploration, self.epsilon, self.generator, valid=valid).tolist()
        probabilities = kernel.action_probabilities(scores, self.exploration, self.epsilon, valid)
        probabilities = probabilities.tolist() if probabilities is not None else None
        decisions = []
        for b, (job, row) in enumerate(zip(jobs, scores.tolist(), strict=True)):
            count = sizes[b]
            values = row[:count]
            # Best first; the sort is stable (reverse=True included), so ties stay in index order.
            order = sorted(range(count), key=values.__getitem__, reverse=True)
            slate = slot_chances = slate_features = None
            if slates is not None:
                length = min(self.slate_size, count)
                slate = slates[b][:length]
                slot_chances = slot_probabilities[b][:length] if slot_probabilities is not None else None
                slate_features = features[b, slate].numpy()
                shown = set(slate)
                order = slate + [index for index in order if index not in shown]
            else:
                order.remove(chosen[b])
                order.insert(0, chosen[b])
            if self.shape == "disjoint":
                model, chosen_features = int(job.arms[chosen[b]]), job.context
            else:
                model, chosen_features = 0, features[b, chosen[b]].numpy()
            decisions.append(Decision(chosen[b], order, values,
                                      probabilities[b][:count] if probabilities is not None else None,
                                      model, chosen_features, slate, slot_chances, slate_features))
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
        cannot add without rounding away the rest of the model; ``algos.kernel.max_learnable_norm_sq``). The
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
        as_tensor = lambda values, dtype: torch.tensor(values, dtype=dtype)  # noqa: E731
        statistics = kernel.sufficient_statistics(
            torch.from_numpy(np.stack([record.features for record in records]).astype(np.float64)),
            as_tensor([record.model for record in records], torch.int64),
            as_tensor([record.reward for record in records], torch.float64),
            self.num_models,
            new=as_tensor([record.full for record in records], torch.bool),
            previous=as_tensor([record.previous for record in records], torch.float64),
        )
        self.module.absorb(*statistics)
