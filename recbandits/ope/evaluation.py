"""A target policy evaluated on a logged-feedback dataset: its probabilities, a cross-fitted reward model, the
estimators (``estimators``) and, on simulator data, the true value.

    >>> # evaluate(read_dataset("logs/mf-softmax"), LinearCandidatePolicy(fields, state))["dr"].value

The reward model is recbandits' own ridge regression (the kernel's statistics over the rows' logged actions and
rewards) with the dataset's features (shared: with its interaction features), cross-fitted: the rows are split
into ``folds`` folds and each fold's predictions come from the model fitted on the others, so no row is scored by
a model that saw it (Chernozhukov et al. 2018).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recbandits.algos import kernel
from recbandits.algos.candidates import CandidatePolicy, CandidateSet, LinearCandidatePolicy, build_module
from recbandits.logs.dataset import LoggedDataset
from recbandits.ope.estimators import ESTIMATORS, Estimate, LoggedRows, estimate, support


@dataclass
class Decisions:
    """The rewarded rows of a dataset as the estimators and policies read them (c: most candidates of a row)."""

    jobs: list[CandidateSet]
    actions: np.ndarray  # [n]
    rewards: np.ndarray  # [n]
    propensities: np.ndarray  # [n], NaN: unknown
    logging: np.ndarray | None  # [n, c] the logging policy's probabilities, NaN rows: unknown
    expected: np.ndarray | None  # [n, c] the simulator's expected rewards (collect), else None
    valid: np.ndarray  # [n, c]
    dropped: int  # rows without a reward


def _padded(rows: list, counts: np.ndarray, width: int, fill: float = np.nan) -> np.ndarray:
    out = np.full((len(rows), width), fill)
    for index, (row, count) in enumerate(zip(rows, counts, strict=True)):
        if row is not None:
            out[index, :count] = np.asarray(row, dtype=np.float64)
    return out


def decisions_of(dataset: LoggedDataset) -> Decisions:
    """The rows with a reward, with each row's candidates as a ``CandidateSet`` (a disjoint row's candidates are
    its arms' model indices, a shared row's their features)."""
    spec, frame = dataset.spec, dataset.frame
    rewarded = frame[frame["reward"].notna()].reset_index(drop=True)
    candidates = [list(row) for row in rewarded["candidates"]]
    counts = np.array([len(row) for row in candidates])
    width = int(counts.max(initial=1))
    actions = np.array([row.index(action) for row, action in zip(candidates, rewarded["action"], strict=True)])
    if spec.shape == "disjoint":
        arm_index = {arm: k for k, arm in enumerate(spec.arm_ids)}
        jobs = [CandidateSet(context=np.asarray(context, dtype=np.float64),
                             arms=np.array([arm_index[arm] for arm in row]))
                for context, row in zip(rewarded["context"], candidates, strict=True)]
    else:
        jobs = [CandidateSet(context=np.asarray(context, dtype=np.float64),
                             arm_features=np.stack([np.asarray(vector, dtype=np.float64) for vector in features]))
                for context, features in zip(rewarded["context"], rewarded["candidate_features"], strict=True)]
    propensities = rewarded["propensity"].to_numpy(dtype=np.float64, na_value=np.nan)
    logging = rewarded["action_probabilities"]
    expected = rewarded["expected_rewards"]
    return Decisions(
        jobs=jobs, actions=actions, rewards=rewarded["reward"].to_numpy(np.float64), propensities=propensities,
        logging=_padded(list(logging), counts, width) if logging.notna().any() else None,
        expected=_padded(list(expected), counts, width) if expected.notna().all() else None,
        valid=np.arange(width)[None, :] < counts[:, None], dropped=len(frame) - len(rewarded))


def target_probabilities(policy: CandidatePolicy, decisions: Decisions, samples: int = 200,
                         batch: int = 4_096) -> tuple[np.ndarray, int | None]:
    """([n, c] the target policy's probability of every candidate, Monte-Carlo samples or None when exact).

    Exact where the policy reports its probabilities (greedy, eps-greedy, UCB: ties shared); otherwise (Thompson
    sampling) the share of ``samples`` decisions that chose each candidate.
    """
    width = decisions.valid.shape[1]
    out = np.zeros((len(decisions.jobs), width))
    exact = True
    for start in range(0, len(decisions.jobs), batch):
        jobs = decisions.jobs[start:start + batch]
        chosen = policy.decide(jobs)
        if chosen and chosen[0].probabilities is None:
            exact = False
            counts = np.zeros((len(jobs), width))
            for _ in range(samples):
                picks = [decision.chosen for decision in policy.decide(jobs)]
                counts[np.arange(len(jobs)), picks] += 1
            out[start:start + len(jobs)] = counts / samples
            continue
        for offset, decision in enumerate(chosen):
            out[start + offset, :len(decision.probabilities)] = decision.probabilities
    return out, None if exact else samples


def reward_model_predictions(decisions: Decisions, fields: dict[str, Any], folds: int = 5, seed: int = 0,
                             lambda_: float = 1.0) -> np.ndarray:
    """[n, c] cross-fitted ridge predictions q(x_i, k) of every candidate (``fields``: the dataset's policy fields)."""
    fields = {**fields, "model_config": {"exploration": "greedy", "lambda_": lambda_}}
    n = len(decisions.jobs)
    fold_of = np.random.default_rng(seed).permutation(n) % max(min(folds, n), 1)
    probe = LinearCandidatePolicy(fields)
    shared = fields["shape"] == "shared"
    contexts = np.stack([job.context for job in decisions.jobs])
    if shared:
        learned = np.stack([job.arm_features[action] for job, action in zip(decisions.jobs, decisions.actions,
                                                                             strict=True)])
        models = np.zeros(n, dtype=np.int64)
    else:
        learned = None
        models = np.array([job.arms[action] for job, action in zip(decisions.jobs, decisions.actions, strict=True)])
    predictions = np.full(decisions.valid.shape, np.nan)
    for fold in range(int(fold_of.max(initial=0)) + 1):
        train = fold_of != fold
        statistics = kernel.row_statistics(contexts[train], None if learned is None else learned[train],
                                           models[train], decisions.rewards[train], probe.num_models,
                                           probe.interaction)
        module = build_module(fields)
        module.absorb(*statistics)
        model = LinearCandidatePolicy(fields, module.get_state())
        rows = np.flatnonzero(~train)
        for index, decision in zip(rows, model.decide([decisions.jobs[row] for row in rows]), strict=True):
            predictions[index, :len(decision.scores)] = decision.scores
    return np.where(decisions.valid, predictions, 0.0)


def true_value(decisions: Decisions, target: np.ndarray) -> float | None:
    """The target policy's exact value on these contexts (simulator data: every candidate's expected reward)."""
    if decisions.expected is None:
        return None
    return float((target * np.nan_to_num(decisions.expected)).sum(1).mean())


def evaluate(dataset: LoggedDataset, policy: CandidatePolicy, estimators=ESTIMATORS, *, folds: int = 5,
             bootstrap: int = 200, tau: float = 10.0, seed: int = 0, samples: int = 200,
             model_interaction: bool | None = None, model_lambda: float = 1.0) -> dict[str, Any]:
    """Every estimator's ``Estimate`` of ``policy`` on ``dataset``, with the support check and, for simulator
    data, the true value. The reward model: ``model_interaction``, its interaction features on a shared dataset
    (None: the dataset's own setting); ``model_lambda``, its ridge regularization."""
    unknown = [name for name in estimators if name not in ESTIMATORS]
    if unknown:
        raise ValueError(f"--estimators {', '.join(unknown)}: the estimators are {', '.join(ESTIMATORS)}")
    decisions = decisions_of(dataset)
    if not len(decisions.jobs):
        raise ValueError("the dataset has no row with a reward: nothing to evaluate on")
    target, monte_carlo = target_probabilities(policy, decisions, samples=samples)
    spec = dataset.spec
    fields = {"shape": spec.shape, "context_dim": spec.context_dim,
              "num_arms": len(spec.arm_ids) if spec.shape == "disjoint" else 0, "arm_dim": spec.arm_dim,
              "arm_ids": spec.arm_ids,
              "interaction": bool(spec.interaction if spec.interaction is not None else spec.shape == "shared")}
    if model_interaction is not None:
        if model_interaction and spec.shape == "disjoint":
            raise ValueError("the reward model's interaction features apply to shared (per-arm) datasets only")
        fields["interaction"] = bool(model_interaction)
    predictions = reward_model_predictions(decisions, fields, folds=folds, seed=seed, lambda_=model_lambda) \
        if any(name in ("dm", "dr", "sndr", "switch-dr") for name in estimators) else None
    rows = LoggedRows(decisions.rewards, decisions.actions, decisions.propensities, target, predictions,
                      decisions.valid, decisions.logging)
    results: dict[str, Estimate] = {name: estimate(name, rows, tau=tau, bootstrap=bootstrap, seed=seed)
                                    for name in estimators}
    return {"estimates": results, "support": support(rows), "true_value": true_value(decisions, target),
            "logging_value": float(decisions.rewards.mean()), "rows": len(decisions.jobs),
            "dropped_rows": decisions.dropped, "monte_carlo_samples": monte_carlo}
