"""The promotion gate: a candidate checkpoint is evaluated on the service's own recent log against the policy it
serves, and becomes the served version only if it is better (``POST /v1/policy/promote``, ``recbandits promote``).

The rule. On the ``window`` newest decisions the service has learned a reward from, the candidate is evaluated by
an estimator (``dr`` by default, its reward model cross-fitted) under the service's own exploration (what is
promoted is the candidate's statistics, served as the service serves), and compared with what the serving policy
earned on those decisions: their observed mean reward, the on-policy value of the versions that decided them.
The candidate is promoted when the lower end of its 95% normal interval is above that value; ``force`` promotes
it whatever the numbers. Not the serving version's own estimate on the same rows: it learned from them, so it
would be scored in-sample, optimistically (a trial measured it at twice what it earned), and a better
candidate refused. A gate needs at least ``MIN_ROWS`` rewarded decisions, and an estimator that needs
propensities needs logged ones (Thompson sampling logs none: ``dm`` still applies). A promoted candidate's
statistics replace the serving ones (the service's settings, e.g. its ``lambda_``, stay); learning continues
from them.

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
    from recbandits.jobs.evaluate import fitting_checkpoint

    _, state = fitting_checkpoint(checkpoint, fields, checkpoint, "the service", use="promotion",
                                  same_features=True)
    return state


def _summary(estimate) -> dict[str, Any]:
    low, high = estimate.normal_interval or (math.nan, math.nan)
    return {"value": estimate.value, "low": low, "high": high,
            "effective_sample_size": estimate.effective_sample_size, "max_weight": estimate.max_weight}


def evaluate_promotion(dataset: LoggedDataset, fields: dict[str, Any], candidate_state: dict[str, np.ndarray],
                       serving_version: int, estimator: str = "dr", samples: int = 200,
                       seed: int = 0) -> dict[str, Any]:
    """The gate's evaluation (see the module docstring): the candidate's estimate, the serving policy's observed
    value, the support of the candidate, ``promote`` (whether the rule holds) and ``message`` (the decision with
    its numbers)."""
    from recbandits.algos.candidates import LinearCandidatePolicy
    from recbandits.jobs.evaluate import strict_json
    from recbandits.ope.evaluation import evaluate

    rows = int(dataset.frame["reward"].notna().sum())
    base = {"estimator": estimator, "rows": rows, "serving_version": serving_version}
    if rows < MIN_ROWS:
        return {**base, "promote": False, "message": f"the service's log has {rows} rewarded decision(s); the gate "
                f"needs at least {MIN_ROWS} to compare the policies"}
    result = evaluate(dataset, LinearCandidatePolicy(fields, candidate_state, seed=seed), (estimator,), bootstrap=0,
                      seed=seed, samples=samples)
    candidate = result["estimates"][estimator]
    observed = result["logging_value"]
    evaluation = {**base, "candidate": _summary(candidate), "observed_value": observed,
                  "support": result["support"], "monte_carlo_samples": result["monte_carlo_samples"]}
    low = evaluation["candidate"]["low"]
    if not math.isfinite(low):
        why = ("the log has no propensities (Thompson sampling logs none): use estimator dm"
               if result["support"]["unknown_propensity_share"] == 1.0 else "it gave no interval")
        message = f"{estimator} cannot evaluate the candidate: {why}"
        return strict_json({**evaluation, "promote": False, "message": message})
    promote = low > observed
    numbers = (f"the candidate's {estimator} value {candidate.value:.4f} (95% interval [{low:.4f}, "
               f"{evaluation['candidate']['high']:.4f}])" + (" beats" if promote else " does not beat") +
               f" what the serving policy earned, {observed:.4f} (observed mean reward), on the {rows:,} newest "
               "rewarded decisions")
    message = numbers if promote else f"{numbers}: its interval's lower end must be above it"
    return strict_json({**evaluation, "promote": bool(promote), "message": message})


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
