"""The promotion gate: a candidate checkpoint is evaluated on the service's own recent log against the policy it
serves, and becomes the served version only if it is better (``POST /v1/policy/promote``, ``recbandits promote``).

The rule. On the ``window`` newest decisions the service has learned a reward from, the candidate and the serving
version are evaluated by the same estimator (``dr`` by default), the same cross-fitted reward model and the
service's own exploration (what is promoted is the candidate's statistics, served as the service serves). The
candidate is promoted when the lower end of its 95% normal interval is above the serving version's estimate;
``force`` promotes it whatever the numbers. A gate needs at least ``MIN_ROWS`` rewarded decisions, and an
estimator that needs propensities needs logged ones (Thompson sampling logs none: ``dm`` still applies).

The decision and its numbers are a ``promotion`` row of the event log, promoted or not; a promoted candidate is a
``promote`` policy version (its statistics snapshotted before its row, like a rollback's), so both survive a
restart and a rollback to any earlier version works across it.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from recbandits.logs.dataset import LoggedDataset

MIN_ROWS = 100


def candidate_statistics(checkpoint: str, fields: dict[str, Any]) -> dict[str, np.ndarray]:
    """The statistics of a linear checkpoint whose model fits the service's (``fields``); a one-line ValueError
    naming what differs otherwise."""
    from recbandits.algos.checkpoints import find_module_checkpoint
    from recbandits.jobs.evaluate import fitting_checkpoint

    find_module_checkpoint(checkpoint)
    _, state = fitting_checkpoint(checkpoint, fields, checkpoint, "the service", use="promotion",
                                  same_features=True)
    return state


def _summary(estimate) -> dict[str, Any]:
    low, high = estimate.normal_interval or (math.nan, math.nan)
    return {"value": estimate.value, "low": low, "high": high,
            "effective_sample_size": estimate.effective_sample_size, "max_weight": estimate.max_weight}


def _finite(value: Any) -> Any:
    """JSON-safe numbers (NaN: null), recursively."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate_promotion(dataset: LoggedDataset, fields: dict[str, Any], serving_state: dict[str, np.ndarray],
                       candidate_state: dict[str, np.ndarray], serving_version: int, estimator: str = "dr",
                       samples: int = 200, seed: int = 0) -> dict[str, Any]:
    """The gate's evaluation (see the module docstring): both policies' estimates, the support of the candidate,
    ``promote`` (whether the rule holds) and ``message`` (the decision with its numbers)."""
    from recbandits.algos.candidates import LinearCandidatePolicy
    from recbandits.ope.evaluation import evaluate

    rows = int(dataset.frame["reward"].notna().sum())
    base = {"estimator": estimator, "rows": rows, "serving_version": serving_version}
    if rows < MIN_ROWS:
        return {**base, "promote": False, "message": f"the service's log has {rows} rewarded decision(s); the gate "
                f"needs at least {MIN_ROWS} to compare the policies"}
    results = {}
    for name, state in (("candidate", candidate_state), ("serving", serving_state)):
        policy = LinearCandidatePolicy(fields, state, seed=seed)
        results[name] = evaluate(dataset, policy, (estimator,), bootstrap=0, seed=seed, samples=samples)
    candidate, serving = (results[name]["estimates"][estimator] for name in ("candidate", "serving"))
    evaluation = {**base, "candidate": _summary(candidate), "serving": _summary(serving),
                  "observed_value": results["serving"]["logging_value"],
                  "support": results["candidate"]["support"],
                  "monte_carlo_samples": results["candidate"]["monte_carlo_samples"]}
    low = evaluation["candidate"]["low"]
    if not math.isfinite(low) or not math.isfinite(serving.value):
        why = ("the log has no propensities (Thompson sampling logs none): use estimator dm"
               if results["candidate"]["support"]["unknown_propensity_share"] == 1.0 else "it gave no interval")
        return _finite({**evaluation, "promote": False, "message": f"{estimator} cannot compare the policies: {why}"})
    promote = low > serving.value
    numbers = (f"the candidate's {estimator} value {candidate.value:.4f} (95% interval [{low:.4f}, "
               f"{evaluation['candidate']['high']:.4f}])" + (" beats" if promote else " does not beat") +
               f" the serving version {serving_version}'s {serving.value:.4f} on the {rows:,} newest rewarded "
               f"decisions (observed mean reward {evaluation['observed_value']:.4f})")
    message = numbers if promote else f"{numbers}: its interval's lower end must be above the serving value"
    return _finite({**evaluation, "promote": bool(promote), "message": message})


def request_promotion(service: str, token: str, body: dict[str, Any], timeout_s: float = 600.0) -> tuple[int, Any]:
    """POST ``body`` to ``service``'s ``/v1/policy/promote`` with the admin token: (HTTP status, JSON answer)."""
    request = urllib.request.Request(
        f"{service.rstrip('/')}/v1/policy/promote", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        text = error.read()
        try:
            return error.code, json.loads(text)
        except json.JSONDecodeError:
            return error.code, {"message": text.decode(errors="replace").strip()}
    except (urllib.error.URLError, OSError) as error:
        raise ConnectionError(f"cannot reach the service at {service}: {getattr(error, 'reason', error)}") from None
