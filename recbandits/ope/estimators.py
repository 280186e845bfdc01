"""Off-policy estimators: the value of a target policy pi from decisions logged under a policy pi_0.

Notation (row i of n logged decisions): context x_i, candidates k = 1..c_i, the logged action a_i with reward r_i
and propensity p_i = pi_0(a_i | x_i); the target policy's probabilities pi(k | x_i); a reward model's predictions
q(x_i, k); the importance weight w_i = pi(a_i | x_i) / p_i. Every estimator is an average over rows of a
per-row term (self-normalized ones: a ratio of two averages), so its value and its normal interval (the delta
method for the ratios) are functions of sums over rows that can be computed shard by shard (``row_sums``,
``add_sums``); in memory a bootstrap over rows gives a percentile interval too.

| estimator | per-row term / formula | needs | reference |
|---|---|---|---|
| ``dm`` | sum_k pi(k|x_i) q(x_i, k) | a reward model | Dudik, Langford and Li 2011 |
| ``ips`` | w_i r_i | propensities | Horvitz and Thompson 1952; Dudik et al. 2011 |
| ``snips`` | sum_i w_i r_i / sum_i w_i | propensities | Swaminathan and Joachims 2015 |
| ``dr`` | dm_i + w_i (r_i - q(x_i, a_i)) | both | Dudik, Langford and Li 2011 |
| ``sndr`` | mean(dm_i) + sum_i w_i (r_i - q(x_i, a_i)) / sum_i w_i | both | Kallus and Uehara 2019; OBP |
| ``switch-dr`` | dm_i + 1[w_i <= tau] w_i (r_i - q(x_i, a_i)) | both | Wang, Agarwal and Dudik 2017 |
| ``clipped-ips`` | min(w_i, tau) r_i | propensities | Bottou et al. 2013; Su et al. 2020 (shrinkage) |

DM is unbiased only when the reward model is right; IPS and SNIPS are unbiased (SNIPS consistent) when every
action the target policy takes has a positive logging propensity, with a variance that grows with the weights;
DR is unbiased when either the model or the propensities are right. Switch-DR and clipped IPS trade a bias for
less variance through ``tau`` (switch-DR falls back to the model where weights exceed it).

    >>> import numpy as np
    >>> rows = LoggedRows(rewards=np.array([1.0, 0.0]), actions=np.array([0, 1]),
    ...                   propensities=np.array([0.5, 0.5]), target=np.array([[1.0, 0.0], [1.0, 0.0]]),
    ...                   predictions=np.array([[0.8, 0.1], [0.6, 0.2]]))
    >>> [round(estimate(name, rows).value, 6) for name in ("ips", "dm", "dr")]
    [1.0, 0.7, 0.9]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ESTIMATORS = ("dm", "ips", "snips", "dr", "sndr", "switch-dr", "clipped-ips")
NEEDS_PROPENSITIES = ("ips", "snips", "dr", "sndr", "switch-dr", "clipped-ips")
NEEDS_MODEL = ("dm", "dr", "sndr", "switch-dr")


@dataclass
class LoggedRows:
    """The arrays an estimator reads: n rows, at most c candidates each (padded; ``valid`` marks real ones).

    ``propensities``: NaN where unknown (those rows get no weight: ``support`` reports them).
    """

    rewards: np.ndarray  # [n]
    actions: np.ndarray  # [n] index of the logged action among the row's candidates
    propensities: np.ndarray  # [n]
    target: np.ndarray  # [n, c] pi(k | x_i), 0 on padding
    predictions: np.ndarray | None = None  # [n, c] q(x_i, k)
    valid: np.ndarray | None = None  # [n, c] bool
    logging: np.ndarray | None = None  # [n, c] pi_0(k | x_i) where logged (NaN rows: unknown)

    @property
    def known(self) -> np.ndarray:
        """[n] bool: the rows with a logged propensity (finite and > 0)."""
        return np.isfinite(self.propensities) & (self.propensities > 0)

    @property
    def weights(self) -> np.ndarray:
        """w_i = pi(a_i | x_i) / p_i (0 where p_i is unknown)."""
        chosen = self.target[np.arange(len(self.actions)), self.actions]
        known = self.known
        return np.where(known, chosen / np.where(known, self.propensities, 1.0), 0.0)

    def take(self, index: np.ndarray) -> LoggedRows:
        def pick(array):
            return None if array is None else array[index]

        return LoggedRows(self.rewards[index], self.actions[index], self.propensities[index], self.target[index],
                          pick(self.predictions), pick(self.valid), pick(self.logging))


@dataclass
class Estimate:
    """An estimator's value with its 95% intervals and diagnostics."""

    estimator: str
    value: float
    normal_interval: tuple[float, float] | None  # None without a finite variance (no propensity, one row)
    bootstrap_interval: tuple[float, float] | None = None
    effective_sample_size: float | None = None  # (sum w)^2 / sum w^2 (weighted estimators)
    max_weight: float | None = None
    rows: int = 0
    details: dict = field(default_factory=dict)


def _terms(name: str, rows: LoggedRows, tau: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(numerator terms [n], denominator terms [n] or None): the estimate is mean(num) / mean(den)."""
    weights = rows.weights
    if name in NEEDS_MODEL:
        if rows.predictions is None:
            raise ValueError(f"estimator {name!r} needs a reward model's predictions")
        direct = (rows.target * rows.predictions).sum(1)
        residual = rows.rewards - rows.predictions[np.arange(len(rows.actions)), rows.actions]
    if name == "dm":
        return direct, None
    if name == "ips":
        return weights * rows.rewards, None
    if name == "snips":
        return weights * rows.rewards, weights
    if name == "dr":
        return direct + weights * residual, None
    if name == "sndr":
        # mean(dm) + sum(w res) / sum(w) = [mean(dm) mean(w) + mean(w res)] / mean(w): a ratio of row sums.
        return direct * weights.mean() + weights * residual, weights
    if name == "switch-dr":
        return direct + (weights <= tau) * weights * residual, None
    if name == "clipped-ips":
        return np.minimum(weights, tau) * rows.rewards, None
    raise ValueError(f"estimator {name!r} is not one of {', '.join(ESTIMATORS)}")


def _value(numerator: np.ndarray, denominator: np.ndarray | None) -> float:
    if denominator is None:
        return float(numerator.mean())
    total = float(denominator.sum())
    return float(numerator.sum() / total) if total > 0 else float("nan")


def row_sums(rows: LoggedRows, tau: float = 10.0) -> dict[str, float]:
    """The sums over rows every estimator's value and normal interval are functions of: sums of shards add up
    (``add_sums``), so an estimate over files read in parallel equals the one over all rows in memory."""
    weights, rewards = rows.weights, rows.rewards
    sums = {"n": float(len(rewards)), "known": float(rows.known.sum()),
            "w": weights.sum(), "w2": (weights ** 2).sum(), "max_w": weights.max(initial=0.0),
            "wr": (weights * rewards).sum(), "w2r": (weights ** 2 * rewards).sum(),
            "w2r2": (weights ** 2 * rewards ** 2).sum()}
    clipped = np.minimum(weights, tau) * rewards
    sums.update(clip=clipped.sum(), clip2=(clipped ** 2).sum())
    if rows.predictions is not None:
        direct = (rows.target * rows.predictions).sum(1)
        residual = rewards - rows.predictions[np.arange(len(rows.actions)), rows.actions]
        doubly = direct + weights * residual
        switch = direct + (weights <= tau) * weights * residual
        sums.update(dm=direct.sum(), dm2=(direct ** 2).sum(), dr=doubly.sum(), dr2=(doubly ** 2).sum(),
                    switch=switch.sum(), switch2=(switch ** 2).sum(), wres=(weights * residual).sum(),
                    dm_wres=(direct * weights * residual).sum(), dm_w=(direct * weights).sum(),
                    w2res=(weights ** 2 * residual).sum(), w2res2=(weights ** 2 * residual ** 2).sum())
    return {key: float(value) for key, value in sums.items()}


def add_sums(first: dict[str, float], second: dict[str, float]) -> dict[str, float]:
    return {key: max(first[key], second[key]) if key == "max_w" else first[key] + second[key] for key in first}


_MEANS = {"dm": "dm", "ips": "wr", "dr": "dr", "switch-dr": "switch", "clipped-ips": "clip"}
_SQUARES = {"dm": "dm2", "ips": "w2r2", "dr": "dr2", "switch-dr": "switch2", "clipped-ips": "clip2"}


def value_and_variance(name: str, sums: dict[str, float]) -> tuple[float, float]:
    """(the estimate, the variance of its per-row influence) from ``row_sums``: the sample variance for the
    averages; for the ratios SNIPS and SNDR the delta method (their influence functions), e.g. SNIPS:
    psi_i = w_i (r_i - V) / mean(w)."""
    n = sums["n"]
    if name in NEEDS_MODEL and "dm" not in sums:
        raise ValueError(f"estimator {name!r} needs a reward model's predictions")
    if name in _MEANS:
        total, squares = sums[_MEANS[name]], sums[_SQUARES[name]]
        value = total / n
        return value, max(squares - n * value ** 2, 0.0) / max(n - 1, 1)
    if sums["w"] <= 0:
        return float("nan"), float("nan")
    mean_w = sums["w"] / n
    if name == "snips":
        value = sums["wr"] / sums["w"]
        influence = (sums["w2r2"] - 2 * value * sums["w2r"] + value ** 2 * sums["w2"]) / mean_w ** 2
        return value, max(influence, 0.0) / max(n - 1, 1)
    if name == "sndr":
        mean_dm, ratio = sums["dm"] / n, sums["wres"] / sums["w"]
        centered = sums["dm2"] - n * mean_dm ** 2
        cross = sums["dm_wres"] - ratio * sums["dm_w"] - mean_dm * sums["wres"] + mean_dm * ratio * sums["w"]
        weighted = sums["w2res2"] - 2 * ratio * sums["w2res"] + ratio ** 2 * sums["w2"]
        influence = centered + 2 * cross / mean_w + weighted / mean_w ** 2
        return mean_dm + ratio, max(influence, 0.0) / max(n - 1, 1)
    raise ValueError(f"estimator {name!r} is not one of {', '.join(ESTIMATORS)}")


def estimate_from_sums(name: str, sums: dict[str, float], confidence: float = 0.95) -> Estimate:
    """The estimate, its normal (delta-method for the ratios) interval and diagnostics from ``row_sums``."""
    from scipy import stats

    if name in NEEDS_PROPENSITIES and sums["known"] == 0:
        # Not an estimate of 0: with no propensity logged the weights are unknown, not zero.
        return Estimate(name, float("nan"), None, rows=int(sums["n"]), effective_sample_size=0.0, max_weight=0.0,
                        details={"reason": "no row has a logged propensity"})
    value, variance = value_and_variance(name, sums)
    normal = None
    if sums["n"] > 1 and np.isfinite(variance):
        half = float(stats.norm.ppf(0.5 + confidence / 2)) * np.sqrt(variance / sums["n"])
        normal = (float(value - half), float(value + half))
    result = Estimate(name, float(value), normal, rows=int(sums["n"]))
    if name in NEEDS_PROPENSITIES:
        result.effective_sample_size = sums["w"] ** 2 / sums["w2"] if sums["w2"] > 0 else 0.0
        result.max_weight = sums["max_w"]
    return result


def check_estimators(names) -> None:
    """A ValueError naming every one of ``names`` that is not an estimator, and the estimators."""
    unknown = [name for name in names if name not in ESTIMATORS]
    if unknown:
        raise ValueError(f"--estimators {', '.join(unknown)}: the estimators are {', '.join(ESTIMATORS)}")


def estimate(name: str, rows: LoggedRows, *, tau: float = 10.0, bootstrap: int = 0, seed: int = 0,
             confidence: float = 0.95) -> Estimate:
    """The estimate of ``name`` on ``rows`` (``estimate_from_sums``); ``bootstrap`` resamples of the rows give
    the percentile interval too (for ``sndr`` each resample recomputes mean(w): its terms depend on it)."""
    if name not in ESTIMATORS:
        raise ValueError(f"estimator {name!r} is not one of {', '.join(ESTIMATORS)}")
    result = estimate_from_sums(name, row_sums(rows, tau), confidence)
    if bootstrap and np.isfinite(result.value):
        numerator, denominator = _terms(name, rows, tau)
        n = len(numerator)
        rng = np.random.default_rng(seed)
        draws = np.empty(bootstrap)
        for b in range(bootstrap):
            index = rng.integers(n, size=n)
            if name == "sndr":
                draws[b] = _value(*_terms(name, rows.take(index), tau))
            else:
                draws[b] = _value(numerator[index], None if denominator is None else denominator[index])
        if np.isfinite(draws).any():
            low, high = np.nanpercentile(draws, [50 * (1 - confidence), 50 * (1 + confidence)])
            result.bootstrap_interval = (float(low), float(high))
    return result


def support(rows: LoggedRows) -> dict[str, float]:
    """Where the estimators that need propensities cannot see the target policy.

    ``unknown_propensity_share``: the rows without a logged propensity (they get no weight);
    ``target_mass_off_support``: the share of the target policy's probability mass, over all rows and candidates,
    that sits on rows without a propensity or on candidates the logging policy gave probability 0. IPS-type
    estimators miss that mass entirely: a share above 0 biases them down.
    """
    unknown = ~rows.known
    off = rows.target[unknown].sum()
    if rows.logging is not None:
        logged = ~unknown & np.isfinite(rows.logging).all(1)
        off += rows.target[logged][rows.logging[logged] <= 0].sum()
    return {"unknown_propensity_share": float(unknown.mean()),
            "target_mass_off_support": float(off / max(rows.target.sum(), 1e-300))}
