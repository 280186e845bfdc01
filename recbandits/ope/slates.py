"""Off-policy estimators of ranking policies, on slates logged with per-slot feedback.

Notation (row i of n): the logged slate a_i = (a_{i,1}, ..., a_{i,K}) and each slot's feedback r_{i,k} (a slot
not examined, null in the log, counts 0: under the cascade model a slot below the click has no click); the
logging policy's probability of the slate's first k slots pi_0(a_{i,1:k} | x_i) (``slot_propensities``) and of
each slot's item at that slot pi_0(a_{i,k} at k | x_i) (``slot_marginals``); the target's, pi(...). A ranking
policy's value is the expected total feedback of its slates, V(pi) = E[sum_k r_k]. Each estimator is an average
over rows of a per-row term, so its normal interval is the sample variance's, and a bootstrap over rows gives a
percentile interval too.

* ``sips``, sum_k r_{i,k} * pi(a_{i,1:K}) / pi_0(a_{i,1:K}): standard IPS on whole slates; unbiased wherever
  the target's slates have logging support.
* ``iips``, sum_k r_{i,k} * pi(a_{i,k} at k) / pi_0(a_{i,k} at k): independent IPS (Li et al. 2018); unbiased
  when a slot's feedback depends on its own item only (the position-based model).
* ``rips``, sum_k r_{i,k} * pi(a_{i,1:k}) / pi_0(a_{i,1:k}): reward-interaction IPS (McInerney et al. 2020;
  Kiyohara et al. 2022); unbiased when a slot's feedback depends on the items above it only (the cascade).

IIPS weights are the smallest (one slot's item at a time) and SIPS's the largest (the whole slate); RIPS sits in
between and is the one unbiased under the cascade, whose clicks depend on the slots above. Open Bandit Pipeline
names them ``SlateIndependentIPS``, ``SlateStandardIPS`` and ``SlateRewardInteractionIPS``.

The target is a ``CandidatePolicy``'s ranking: its chosen candidate on top, the others by score
(``Decision.order``). Where the policy reports its top-slot probabilities p the slots below are fixed given the
top one, so with S the candidates by score (stable, best first) and cum_m the probability that the top one is
among S's first m, slot k >= 2 holds S_{k-1} with probability 1 - cum_k and S_k with probability cum_k; for
Thompson sampling the probabilities are the share of ``samples`` sampled rankings.

    >>> import numpy as np
    >>> slate_terms("rips", np.array([[1.0, 0.0]]), np.array([[0.5, 0.25]]), np.array([[1.0, 0.5]]))
    array([2.])
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from recbandits.algos.candidates import CandidatePolicy, CandidateSet
from recbandits.ope.estimators import Estimate

SLATE_ESTIMATORS = ("sips", "iips", "rips")


@dataclass
class Slates:
    """The rewarded slate rows of a dataset as the estimators and policies read them (K: the slate size)."""

    jobs: list[CandidateSet]
    slates: np.ndarray  # [n, K] candidate indices of each slot
    slot_rewards: np.ndarray  # [n, K], 0 where not examined
    prefixes: np.ndarray  # [n, K] pi_0 of each prefix
    marginals: np.ndarray | None  # [n, K] pi_0 of each slot's item at its slot, None: not logged
    rewards: np.ndarray  # [n] the logged total
    attraction: np.ndarray | None  # [n, c] the simulator's attraction of every candidate (collect), else None
    dropped: int


def slates_of(dataset, jobs_of) -> Slates:
    """The rows of a ranking dataset with a reward and per-slot feedback (``jobs_of``: the frame's candidate sets,
    ``evaluation.candidate_sets``)."""
    frame = dataset.frame
    usable = frame[frame["reward"].notna() & frame["slate"].notna() & frame["slot_propensities"].notna()
                   & frame["slot_rewards"].notna()].reset_index(drop=True)
    if not len(usable):
        raise ValueError("the dataset has no slate row with a reward, slot propensities and slot rewards: the slate "
                         "estimators need all three")
    sizes = usable["slate"].map(len)
    if sizes.nunique() != 1:
        raise ValueError(f"the slates have {sizes.nunique()} different sizes: the slate estimators take one size")
    slates = np.array([[list(candidates).index(item) for item in slate]
                       for candidates, slate in zip(usable["candidates"], usable["slate"], strict=True)])
    marginals = usable["slot_marginals"]
    attraction = usable["expected_rewards"]
    return Slates(
        jobs=jobs_of(usable), slates=slates,
        slot_rewards=np.nan_to_num(np.stack([np.asarray(row, dtype=np.float64) for row in usable["slot_rewards"]])),
        prefixes=np.stack(usable["slot_propensities"].map(np.asarray).to_list()),
        marginals=np.stack(marginals.map(np.asarray).to_list()) if marginals.notna().all() else None,
        rewards=usable["reward"].to_numpy(np.float64),
        attraction=(np.stack(attraction.map(np.asarray).to_list()) if attraction.notna().all() else None),
        dropped=len(frame) - len(usable))


def _continuations(scores: np.ndarray, size: int) -> np.ndarray:
    """[B, c, size] the ranking of each row when each candidate is on top: it, then the others by score."""
    batch, count = scores.shape
    by_score = np.argsort(-scores, axis=1, kind="stable")  # ties in index order, like Decision.order
    rank = np.argsort(by_score, axis=1)
    slots = np.arange(1, size)
    # Below a top candidate of rank r, slot k >= 1 holds by_score[k - 1] if r >= k, else by_score[k].
    index = slots[None, None, :] - 1 + (rank[:, :, None] <= slots[None, None, :] - 1)
    below = by_score[np.arange(batch)[:, None, None], index]
    return np.concatenate([np.broadcast_to(np.arange(count)[None, :, None], (batch, count, 1)), below], axis=2)


def target_slate_probabilities(policy: CandidatePolicy, data: Slates, samples: int = 200, batch: int = 4_096
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    """([n, K] the target's probability of each logged prefix, [n, K] of each slot's logged item at its slot,
    [n, c] of each candidate on top, Monte-Carlo samples or None when exact)."""
    n, size = data.slates.shape
    width = max(len(job.arms) if job.arms is not None else len(job.arm_features) for job in data.jobs)
    prefixes, marginals, tops = np.zeros((n, size)), np.zeros((n, size)), np.zeros((n, width))
    exact = True
    for start in range(0, n, batch):
        jobs, logged = data.jobs[start:start + batch], data.slates[start:start + batch]
        rows = slice(start, start + len(jobs))
        decisions = policy.decide(jobs)
        if decisions[0].probabilities is None:
            exact = False
            for _ in range(samples):
                orders = np.array([decision.order[:size] for decision in policy.decide(jobs)])
                same = orders == logged
                marginals[rows] += same / samples
                prefixes[rows] += np.cumprod(same, axis=1) / samples
                tops[start + np.arange(len(jobs)), orders[:, 0]] += 1.0 / samples
            continue
        scores = np.full((len(jobs), width), -np.inf)
        top = np.zeros((len(jobs), width))
        for b, decision in enumerate(decisions):
            scores[b, :len(decision.scores)] = decision.scores
            top[b, :len(decision.probabilities)] = decision.probabilities
        tops[rows] = top
        rankings = _continuations(scores, size)  # [B, c, K]
        # A prefix's probability: its top item's, if the slots below it are that item's continuation.
        below = rankings[np.arange(len(jobs)), logged[:, 0]]  # [B, K]
        prefixes[rows] = top[np.arange(len(jobs)), logged[:, 0]][:, None] * np.cumprod(below == logged, axis=1)
        # A slot's item's probability: the top mass of every candidate whose ranking puts it there.
        marginals[rows] = (top[:, :, None] * (rankings == logged[:, None, :])).sum(1)
    return prefixes, marginals, tops, None if exact else samples


def slate_terms(name: str, slot_rewards: np.ndarray, logging: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[n] each row's term of ``name`` (``logging``, ``target``: [n, K] prefix probabilities for sips and rips,
    slot marginals for iips)."""
    weights = target / logging
    if name == "sips":
        return weights[:, -1] * slot_rewards.sum(1)
    if name in ("iips", "rips"):
        return (weights * slot_rewards).sum(1)
    raise ValueError(f"estimator {name!r} is not one of {', '.join(SLATE_ESTIMATORS)}")


def slate_estimate(name: str, terms: np.ndarray, weights: np.ndarray, *, bootstrap: int = 0, seed: int = 0,
                   confidence: float = 0.95) -> Estimate:
    """The mean of ``terms`` with its normal and (``bootstrap``) percentile intervals; ``weights`` [n, K]: the
    importance weights behind them (the largest reported; sips: the effective sample size of its slate weights)."""
    from scipy import stats

    n = len(terms)
    value = float(terms.mean())
    normal = None
    if n > 1:
        half = float(stats.norm.ppf(0.5 + confidence / 2)) * float(terms.std(ddof=1)) / np.sqrt(n)
        normal = (value - half, value + half)
    slate_weights = weights[:, -1]
    result = Estimate(name, value, normal, rows=n, max_weight=float(weights.max(initial=0.0)),
                      effective_sample_size=(float(slate_weights.sum() ** 2 / (slate_weights ** 2).sum())
                                             if name == "sips" and (slate_weights > 0).any() else None))
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = np.array([terms[rng.integers(n, size=n)].mean() for _ in range(bootstrap)])
        low, high = np.percentile(draws, [50 * (1 - confidence), 50 * (1 + confidence)])
        result.bootstrap_interval = (float(low), float(high))
    return result


def click_model(producer: dict) -> tuple[str, float] | None:
    """(choice model, examination exponent eta) of a ``logs collect`` ranking dataset, from its producer; None
    for other datasets."""
    if producer.get("command") != "collect" or producer.get("env") != "movielens-ranking":
        return None
    from recbandits.envs import MovieLensRankingVectorEnv

    defaults = inspect.signature(MovieLensRankingVectorEnv).parameters
    config = producer.get("env_config") or {}
    return (config.get("choice_model", defaults["choice_model"].default),
            float(config.get("eta", defaults["eta"].default)))


def true_slate_value(policy: CandidatePolicy, data: Slates, tops: np.ndarray, choice_model: str, eta: float,
                     samples: int = 200) -> float:
    """The target's exact value on the rows' contexts: the expected clicks of its slates under the simulator's
    click model (its top-slot probabilities ``tops`` weight each top candidate's ranking; Thompson sampling: the
    mean over ``samples`` sampled rankings)."""
    from recbandits.envs.ranking import slate_expected_clicks

    size = data.slates.shape[1]
    examination = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** eta
    decisions = policy.decide(data.jobs)
    if decisions[0].probabilities is None:
        total = 0.0
        for _ in range(samples):
            orders = np.array([decision.order[:size] for decision in policy.decide(data.jobs)])
            attraction = np.take_along_axis(data.attraction, orders, axis=1)
            total += float(slate_expected_clicks(attraction, choice_model, examination).sum()) / samples
        return total / len(data.jobs)
    width = tops.shape[1]
    scores = np.full((len(decisions), width), -np.inf)
    for b, decision in enumerate(decisions):
        scores[b, :len(decision.scores)] = decision.scores
    rankings = _continuations(scores, size)  # [n, c, K]
    n, count, _ = rankings.shape
    padded = np.zeros((n, width))
    padded[:, :data.attraction.shape[1]] = data.attraction
    attraction = padded[np.arange(n)[:, None, None], rankings]
    clicks = slate_expected_clicks(attraction.reshape(n * count, size), choice_model, examination).reshape(n, count)
    return float((tops * clicks).sum() / n)
