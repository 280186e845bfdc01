"""A target policy evaluated on a logged-feedback dataset: its probabilities, a cross-fitted reward model, the
estimators (``estimators``) and, on simulator data, the true value.

    >>> # evaluate(read_dataset("logs/mf-softmax"), LinearCandidatePolicy(fields, state))["dr"].value

The reward model is recbandits' own ridge regression (the kernel's statistics over the rows' logged actions and
rewards) with the dataset's features (shared: with its interaction features), cross-fitted: the rows are split
into ``folds`` folds and each fold's predictions come from the model fitted on the others, so no row is scored by
a model that saw it (Chernozhukov et al. 2018).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recbandits.algos import kernel
from recbandits.algos.candidates import CandidatePolicy, CandidateSet, LinearCandidatePolicy, build_module
from recbandits.logs.dataset import LoggedDataset
from recbandits.ope.estimators import (
    ESTIMATORS,
    NEEDS_MODEL,
    Estimate,
    LoggedRows,
    add_sums,
    check_estimators,
    estimate,
    estimate_from_sums,
    row_sums,
    support,
)
from recbandits.ope.slates import SLATE_ESTIMATORS


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
    event_ids: np.ndarray | None = None  # [n]


def _padded(rows: list, counts: np.ndarray, width: int, fill: float = np.nan) -> np.ndarray:
    out = np.full((len(rows), width), fill)
    for index, (row, count) in enumerate(zip(rows, counts, strict=True)):
        if row is not None:
            out[index, :count] = np.asarray(row, dtype=np.float64)
    return out


def candidate_sets(spec, frame: pd.DataFrame) -> list[CandidateSet]:
    """Each row's candidates as a ``CandidateSet``: a disjoint row's are its arms' model indices, a shared row's
    their features."""
    if spec.shape == "disjoint":
        arm_index = {arm: k for k, arm in enumerate(spec.arm_ids)}
        return [CandidateSet(context=np.asarray(context, dtype=np.float64),
                             arms=np.array([arm_index[arm] for arm in row]))
                for context, row in zip(frame["context"], frame["candidates"], strict=True)]
    return [CandidateSet(context=np.asarray(context, dtype=np.float64),
                         arm_features=np.stack([np.asarray(vector, dtype=np.float64) for vector in features]))
            for context, features in zip(frame["context"], frame["candidate_features"], strict=True)]


def has_slates(frame: pd.DataFrame) -> bool:
    return "slate" in frame and bool(frame["slate"].notna().any())


def decisions_of(dataset: LoggedDataset) -> Decisions:
    """The rows with a reward, with each row's candidates as a ``CandidateSet`` (``candidate_sets``)."""
    spec, frame = dataset.spec, dataset.frame
    if has_slates(frame):
        raise ValueError("the dataset logs rankings (slates): their reward is the slate's; the slate estimators "
                         f"({', '.join(SLATE_ESTIMATORS)}) evaluate them")
    rewarded = frame[frame["reward"].notna()].reset_index(drop=True)
    candidates = [list(row) for row in rewarded["candidates"]]
    counts = np.array([len(row) for row in candidates])
    width = int(counts.max(initial=1))
    actions = np.array([row.index(action) for row, action in zip(candidates, rewarded["action"], strict=True)])
    jobs = candidate_sets(spec, rewarded)
    propensities = rewarded["propensity"].to_numpy(dtype=np.float64, na_value=np.nan)
    logging = rewarded["action_probabilities"]
    expected = rewarded["expected_rewards"]
    return Decisions(
        jobs=jobs, actions=actions, rewards=rewarded["reward"].to_numpy(np.float64), propensities=propensities,
        logging=_padded(list(logging), counts, width) if logging.notna().any() else None,
        expected=_padded(list(expected), counts, width) if expected.notna().all() else None,
        valid=np.arange(width)[None, :] < counts[:, None], dropped=len(frame) - len(rewarded),
        event_ids=rewarded["event_id"].to_numpy(dtype=object))


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


def folds_of(event_ids: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Each row's cross-fitting fold, from a hash of its event id: the same for a row wherever it is read."""
    hashes = pd.util.hash_array(np.asarray(event_ids, dtype=object), hash_key=f"{seed:016d}"[-16:])
    return (hashes % np.uint64(max(folds, 1))).astype(np.int64)


def _learning_inputs(decisions: Decisions):
    """(contexts, learned candidates' features or None, models) of the rows' logged actions."""
    contexts = np.stack([job.context for job in decisions.jobs])
    pairs = zip(decisions.jobs, decisions.actions, strict=True)
    if decisions.jobs and decisions.jobs[0].arm_features is not None:
        return contexts, np.stack([job.arm_features[action] for job, action in pairs]), \
            np.zeros(len(decisions.jobs), dtype=np.int64)
    return contexts, None, np.array([job.arms[action] for job, action in pairs])


def reward_model_fields(fields: dict[str, Any], lambda_: float) -> dict[str, Any]:
    return {**fields, "model_config": {"exploration": "greedy", "lambda_": lambda_}}


def fold_statistics(decisions: Decisions, fields: dict[str, Any], folds: int, seed: int = 0) -> list:
    """Per fold, the kernel's sufficient statistics (numpy) of the fold's rows (summable over shards)."""
    probe = build_module(reward_model_fields(fields, 1.0))
    contexts, learned, models = _learning_inputs(decisions)
    fold_of = folds_of(decisions.event_ids, folds, seed)
    out = []
    for fold in range(folds):
        mine = fold_of == fold
        statistics = kernel.row_statistics(contexts[mine], None if learned is None else learned[mine], models[mine],
                                           decisions.rewards[mine], probe.num_models, bool(fields["interaction"]))
        out.append([value.numpy() for value in statistics])
    return out


def fold_models(statistics: list, fields: dict[str, Any], lambda_: float) -> list[LinearCandidatePolicy]:
    """Fold f's reward model: the ridge regression on every other fold's rows."""
    import torch

    total = [sum(parts) for parts in zip(*statistics, strict=True)]
    policies = []
    for own in statistics:
        module = build_module(reward_model_fields(fields, lambda_))
        module.absorb(*(torch.from_numpy(np.asarray(all_ - mine)) for all_, mine in zip(total, own, strict=True)))
        policies.append(LinearCandidatePolicy(reward_model_fields(fields, lambda_), module.get_state()))
    return policies


def fold_predictions(decisions: Decisions, models: list[LinearCandidatePolicy], seed: int = 0) -> np.ndarray:
    """[n, c] q(x_i, k) of every candidate by the model of the row's fold (0 on padding)."""
    fold_of = folds_of(decisions.event_ids, len(models), seed)
    predictions = np.zeros(decisions.valid.shape)
    for fold, model in enumerate(models):
        rows = np.flatnonzero(fold_of == fold)
        for index, decision in zip(rows, model.decide([decisions.jobs[row] for row in rows]), strict=True):
            predictions[index, :len(decision.scores)] = decision.scores
    return predictions


def reward_model_predictions(decisions: Decisions, fields: dict[str, Any], folds: int = 5, seed: int = 0,
                             lambda_: float = 1.0) -> np.ndarray:
    """[n, c] cross-fitted ridge predictions q(x_i, k) of every candidate (``fields``: the dataset's policy fields)."""
    models = fold_models(fold_statistics(decisions, fields, folds, seed), fields, lambda_)
    return fold_predictions(decisions, models, seed)


def shard_sums(decisions: Decisions, policy: CandidatePolicy, models: list | None, tau: float, samples: int,
               seed: int) -> tuple[dict[str, Any], LoggedRows]:
    """Everything ``evaluate`` reports as sums over one shard's rows (they add up over shards), and its rows."""
    target, monte_carlo = target_probabilities(policy, decisions, samples=samples)
    predictions = fold_predictions(decisions, models, seed) if models else None
    rows = LoggedRows(decisions.rewards, decisions.actions, decisions.propensities, target, predictions,
                      decisions.valid, decisions.logging)
    off = support(rows)["target_mass_off_support"] * target.sum()
    sums = {"estimators": row_sums(rows, tau), "unknown": float((~rows.known).sum()),
            "target_mass": float(target.sum()),
            "off_mass": float(off), "reward": float(decisions.rewards.sum()), "dropped": decisions.dropped,
            "true": None if decisions.expected is None else float(
                (target * np.nan_to_num(decisions.expected)).sum()), "monte_carlo_samples": monte_carlo}
    return sums, rows


def add_shard_sums(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    out = {key: first[key] + second[key] for key in ("unknown", "target_mass", "off_mass", "reward", "dropped")}
    out["estimators"] = add_sums(first["estimators"], second["estimators"])
    out["true"] = None if first["true"] is None or second["true"] is None else first["true"] + second["true"]
    out["monte_carlo_samples"] = first["monte_carlo_samples"] or second["monte_carlo_samples"]
    return out


def report(sums: dict[str, Any], estimators, confidence: float = 0.95) -> dict[str, Any]:
    n = sums["estimators"]["n"]
    return {"estimates": {name: estimate_from_sums(name, sums["estimators"], confidence) for name in estimators},
            "support": {"unknown_propensity_share": sums["unknown"] / n,
                        "target_mass_off_support": sums["off_mass"] / max(sums["target_mass"], 1e-300)},
            "true_value": None if sums["true"] is None else sums["true"] / n, "logging_value": sums["reward"] / n,
            "rows": int(n), "dropped_rows": int(sums["dropped"]), "monte_carlo_samples": sums["monte_carlo_samples"]}


def evaluate(dataset: LoggedDataset, policy: CandidatePolicy, estimators=None, *, folds: int = 5,
             bootstrap: int = 200, tau: float = 10.0, seed: int = 0, samples: int = 200,
             model_interaction: bool | None = None, model_lambda: float = 1.0) -> dict[str, Any]:
    """Every estimator's ``Estimate`` of ``policy`` on ``dataset`` (in memory), with the support check and, for
    simulator data, the true value. ``estimators``: None, all of the dataset's kind (``ESTIMATORS``, or
    ``SLATE_ESTIMATORS`` for rankings: ``evaluate_slates``). The reward model: ``model_interaction``, its
    interaction features on a shared dataset (None: the dataset's own setting); ``model_lambda``, its ridge
    regularization. ``bootstrap``: resamples for the percentile intervals."""
    if has_slates(dataset.frame):
        return evaluate_slates(dataset, policy, estimators, bootstrap=bootstrap, seed=seed, samples=samples)
    estimators = ESTIMATORS if estimators is None else estimators
    check_estimators(estimators)
    decisions = decisions_of(dataset)
    if not len(decisions.jobs):
        raise ValueError("the dataset has no row with a reward: nothing to evaluate on")
    fields = dataset.spec.model_fields(model_interaction)
    models = None
    if any(name in NEEDS_MODEL for name in estimators):
        models = fold_models(fold_statistics(decisions, fields, folds, seed), fields, model_lambda)
    sums, rows = shard_sums(decisions, policy, models, tau, samples, seed)
    result = report(sums, estimators)
    if bootstrap:
        for name in estimators:
            result["estimates"][name].bootstrap_interval = estimate(
                name, rows, tau=tau, bootstrap=bootstrap, seed=seed).bootstrap_interval
    return result


def evaluate_slates(dataset: LoggedDataset, policy: CandidatePolicy, estimators=None, *, bootstrap: int = 200,
                    seed: int = 0, samples: int = 200) -> dict[str, Any]:
    """``evaluate`` on a ranking dataset: the slate estimators (``slates``) of ``policy``'s rankings, with the
    true value where the dataset comes from ``logs collect`` (the simulator's click model)."""
    from recbandits.ope import slates as slate

    estimators = SLATE_ESTIMATORS if estimators is None else estimators
    unknown = [name for name in estimators if name not in SLATE_ESTIMATORS]
    if unknown:
        raise ValueError(f"--estimators {', '.join(unknown)}: a ranking dataset takes the slate estimators "
                         f"{', '.join(SLATE_ESTIMATORS)}")
    data = slate.slates_of(dataset, lambda frame: candidate_sets(dataset.spec, frame))
    prefixes, marginals, tops, monte_carlo = slate.target_slate_probabilities(policy, data, samples)
    results = {}
    for name in estimators:
        logging, target = (data.marginals, marginals) if name == "iips" else (data.prefixes, prefixes)
        if logging is None:
            results[name] = Estimate(name, float("nan"), None, rows=len(data.jobs),
                                     details={"reason": "the dataset logs no slot_marginals"})
            continue
        terms = slate.slate_terms(name, data.slot_rewards, logging, target)
        results[name] = slate.slate_estimate(name, terms, target / logging, bootstrap=bootstrap, seed=seed)
    off = float((prefixes[:, -1] == 0).mean())
    model = slate.click_model(dataset.spec.producer)
    true_value = None
    if model is not None and data.attraction is not None:
        true_value = slate.true_slate_value(policy, data, tops, *model, samples=samples)
    return {"estimates": results, "support": {"unknown_propensity_share": 0.0, "target_mass_off_support": 0.0,
                                              "rows_off_the_target_slates": off},
            "true_value": true_value, "logging_value": float(data.rewards.mean()), "rows": len(data.jobs),
            "dropped_rows": data.dropped, "monte_carlo_samples": monte_carlo}


def evaluate_files(directory, policy_fields: dict[str, Any], policy_state: dict[str, np.ndarray],
                   estimators=ESTIMATORS, *, folds: int = 5, tau: float = 10.0, seed: int = 0, samples: int = 200,
                   model_interaction: bool | None = None, model_lambda: float = 1.0,
                   workers: int | None = None) -> dict[str, Any]:
    """``evaluate`` over Ray Data, one task per Parquet file (logs larger than memory): the fold statistics in one
    pass, the sums in a second; the same value and normal intervals as ``evaluate`` on the same rows (no
    bootstrap). The target is a ``LinearCandidatePolicy`` rebuilt in each task from its fields and state."""

    from recbandits.logs.dataset import DatasetSpec, dataset_files, per_file_tasks, read_table

    check_estimators(estimators)
    spec = DatasetSpec.read(directory)
    files = [str(path) for path in dataset_files(directory)]
    fields = spec.model_fields(model_interaction)
    needs_model = any(name in NEEDS_MODEL for name in estimators)

    def shard(path: str) -> Decisions:
        table = read_table(Path(path))
        return decisions_of(LoggedDataset(spec, table.to_pandas(), [Path(path)]))

    def statistics_task(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = [fold_statistics(shard(path), fields, folds, seed) for path in batch["path"]]
        return {f"s{fold}_{k}": np.stack([part[fold][k] for part in parts])
                for fold in range(folds) for k in range(4)}

    if needs_model:
        totals: dict[str, np.ndarray] = {}
        for rows in per_file_tasks(files, statistics_task, workers):
            for key, value in rows.items():
                totals[key] = totals.get(key, 0) + value.sum(0)
        statistics = [[totals[f"s{fold}_{k}"] for k in range(4)] for fold in range(folds)]
    else:
        statistics = None

    def sums_task(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        target = LinearCandidatePolicy(policy_fields, policy_state)
        reward_models = fold_models(statistics, fields, model_lambda) if statistics is not None else None
        total = None
        for path in batch["path"]:
            part, _ = shard_sums(shard(path), target, reward_models, tau, samples, seed)
            total = part if total is None else add_shard_sums(total, part)
        return {"sums": np.array([json.dumps(total)])}

    total = None
    for rows in per_file_tasks(files, sums_task, workers):
        for text in rows["sums"]:
            part = json.loads(str(text))
            total = part if total is None else add_shard_sums(total, part)
    return report(total, estimators)
