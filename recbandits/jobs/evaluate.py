"""``recbandits evaluate``: how trained policies would have done on logged traffic, before they serve anyone.

    recbandits evaluate --data logs/mf-softmax --policy runs/a --policy runs/b --out runs/eval

Each policy (a checkpoint of recbandits' linear bandits or of a TF-Agents-backed module) is evaluated on the
dataset's rewarded rows by every estimator of ``recbandits.ope`` (docs/evaluation.md). Writes ``table.md`` and
``table.csv`` (one row per policy and estimator), ``evaluation.json`` (everything, with the diagnostics) and
``forest.png`` (every estimate with its 95% interval, per policy; the logging policy's observed mean reward as a
line, the true value where the dataset comes from a simulator).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from recbandits.ope.estimators import ESTIMATORS, check_estimators

COLUMNS = ("policy", "estimator", "value", "low", "high", "interval", "vs_logging", "effective_sample_size",
           "max_weight", "true_value", "note")


def policy_from_checkpoint(path: str | Path, spec, which: str = "policy"):
    """The ``CandidatePolicy`` of a checkpoint (recbandits' linear bandit, or a TF-Agents-backed module's
    ``which`` policy: ``algos.tf_agents_candidates``), refused in one line when its features do not fit ``spec``."""
    from recbandits.algos.candidates import LinearCandidatePolicy, module_policy_fields
    from recbandits.algos.checkpoints import load_module
    from recbandits.algos.module import LinearBanditModule

    module = load_module(path)
    target = spec.model_fields()
    if isinstance(module, LinearBanditModule):
        fields = check_fits(path, module_policy_fields(module), target, f"--policy {path}", "the dataset")
        return LinearCandidatePolicy(fields, module.get_state())
    from recbandits.algos.tf_agents_candidates import TFAgentsCandidatePolicy

    policy = TFAgentsCandidatePolicy(module, which)
    check_fits(path, policy.fields(), target, f"--policy {path}", "the dataset")
    return policy


def fitting_checkpoint(path: str | Path, target: dict[str, Any], name: str, what: str, use: str = "evaluate",
                       same_features: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(policy fields, statistics) of a linear checkpoint whose model fits ``target`` (``check_fits``); ``use``:
    what needs it, named when it is not linear."""
    from recbandits.algos.candidates import module_policy_fields
    from recbandits.algos.checkpoints import load_linear_module

    module = load_linear_module(path, use)
    return check_fits(path, module_policy_fields(module), target, name, what, same_features), module.get_state()


def check_fits(path: str | Path, fields: dict[str, Any], target: dict[str, Any], name: str, what: str,
               same_features: bool = False) -> dict[str, Any]:
    """``fields`` (a checkpoint's model at ``path``) with ``target``'s arm ids, if its model fits ``target``
    (policy fields: a dataset's or a service's): the same shape, context and arm dimensions, and arms in the same
    order; ``same_features``: the same interaction setting too (statistics that replace another model's).
    Refused in one line naming ``name`` (the checkpoint) and ``what`` (the target)."""
    shared = target["shape"] == "shared"
    unit = "arm features" if shared else "arms"
    size = "arm_dim" if shared else "num_arms"
    model = (fields["shape"], fields["context_dim"], fields[size])
    wanted = (target["shape"], target["context_dim"], target[size])
    if same_features and shared:
        model, wanted = (*model, bool(fields["interaction"])), (*wanted, bool(target["interaction"]))
    if model != wanted:
        describe = lambda item: (f"{item[0]}, context {item[1]}, {unit} {item[2]}"  # noqa: E731
                                 + (f", interaction {'on' if item[3] else 'off'}" if len(item) > 3 else ""))
        raise ValueError(f"{name}: its model ({describe(model)}) does not fit {what} ({describe(wanted)})")
    if not shared:
        from recbandits.jobs.train import trained_arm_ids

        arm_ids = trained_arm_ids(path)
        if arm_ids is not None and list(arm_ids) != list(target["arm_ids"]):
            raise ValueError(f"{name}: its arms are {_ids(arm_ids)}, {what}'s {_ids(target['arm_ids'])} (the "
                             "same count, another order or other ids: its models would score the wrong arms)")
        fields = {**fields, "arm_ids": list(target["arm_ids"])}
    return fields


def _ids(ids) -> str:
    shown = ", ".join(map(str, list(ids)[:5]))
    return f"[{shown}{', ...' if len(ids) > 5 else ''}]"


def run_evaluation(data: str | Path, policies: list[str], out: str | Path, *, estimators=None,
                   folds: int = 5, bootstrap: int = 200, tau: float = 10.0, seed: int = 0, ray_data: bool = False,
                   address: str | None = None, samples: int = 200,
                   tf_agents_policy: str = "policy") -> dict[str, Any]:
    """Evaluate every checkpoint in ``policies`` on the dataset at ``data``; write the outputs to ``out``.

    ``estimators``: None, every one of the dataset's kind (single choices: ``ESTIMATORS``; rankings:
    ``SLATE_ESTIMATORS``). ``tf_agents_policy``: which policy of a TF-Agents-backed checkpoint is evaluated
    (``policy``, what TF-Agents deploys; ``greedy``; ``collect``). ``ray_data``: one Ray Data task per file (logs
    larger than memory; single choices and linear policies only; normal intervals only, no bootstrap)."""
    from recbandits.algos.candidates import LinearCandidatePolicy
    from recbandits.logs import read_dataset
    from recbandits.ope.evaluation import evaluate, evaluate_files, has_slates

    if not policies:
        raise ValueError("give at least one --policy CHECKPOINT")
    if ray_data:
        import pyarrow.parquet as pq

        from recbandits.jobs.train import validate_files

        spec, files, _ = validate_files(data)
        dataset = None
        if any(pq.read_table(path, columns=["slate"]).column("slate").null_count < pq.read_metadata(path).num_rows
               for path in files):
            raise ValueError(f"{data} logs rankings (slates): evaluate them in memory (without --ray-data)")
        estimators = ESTIMATORS if estimators is None else estimators
        check_estimators(estimators)
    else:
        dataset = read_dataset(data)
        spec = dataset.spec
        if estimators is not None and not has_slates(dataset.frame):
            check_estimators(estimators)
    targets = {str(path): policy_from_checkpoint(path, spec, tf_agents_policy) for path in policies}  # checked first
    if ray_data and any(not isinstance(policy, LinearCandidatePolicy) for policy in targets.values()):
        raise ValueError("--ray-data evaluates recbandits' linear policies (rebuilt in each task from their "
                         "statistics); evaluate TF-Agents-backed ones in memory")
    if ray_data:
        from recbandits.cluster import connect
        from recbandits.verbosity import quiet_libraries

        quiet_libraries()
        connect(address)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, rows = {}, []
    for name, policy in targets.items():
        if ray_data:
            result = evaluate_files(data, policy.fields, policy.get_state(), estimators, folds=folds, tau=tau,
                                    seed=seed, samples=samples)
        else:
            result = evaluate(dataset, policy, estimators, folds=folds, bootstrap=bootstrap, tau=tau, seed=seed,
                              samples=samples)
        results[name] = result
        for estimator, value in result["estimates"].items():
            low, high = value.normal_interval or value.bootstrap_interval or (float("nan"), float("nan"))
            rows.append({"policy": name, "estimator": estimator, "value": value.value, "low": low, "high": high,
                         "interval": "normal" if value.normal_interval else
                         "bootstrap" if value.bootstrap_interval else "none",
                         "vs_logging": value.value - result["logging_value"],
                         "effective_sample_size": value.effective_sample_size, "max_weight": value.max_weight,
                         "true_value": result["true_value"], "note": value.details.get("reason", "")})
    with open(out / "table.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "table.md").write_text(_markdown(rows))
    summary = {"data": str(Path(data).resolve()), "estimators": list(next(iter(results.values()))["estimates"]),
               "folds": folds,
               "bootstrap": 0 if ray_data else bootstrap, "tau": tau, "seed": seed, "ray_data": ray_data,
               "policies": {
                   name: {**{key: value for key, value in result.items() if key != "estimates"},
                          "estimates": {estimator: vars(estimate) for estimator, estimate in
                                        result["estimates"].items()}}
                   for name, result in results.items()}}
    (out / "evaluation.json").write_text(json.dumps(strict_json(summary), indent=1, default=float) + "\n")
    _forest_plot(rows, results, out / "forest.png")
    return {"out": str(out), "rows": rows, "results": results}


def strict_json(value):
    """JSON without NaN (not valid JSON): a value that is not a number is null."""
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _number(value) -> str:
    return "" if value is None else f"{value:.4f}"


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| policy | estimator | value | 95% interval | vs logging | effective sample size | largest weight |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        if not np.isfinite(row["value"]):
            lines.append(f"| {row['policy']} | {row['estimator']} | n/a ({row['note']}) | | | | |")
            continue
        lines.append(f"| {row['policy']} | {row['estimator']} | {row['value']:.4f} | [{row['low']:.4f}, "
                     f"{row['high']:.4f}] ({row['interval']}) | {row['vs_logging']:+.4f} | "
                     f"{_number(row['effective_sample_size'])} | {_number(row['max_weight'])} |")
    return "\n".join(lines) + "\n"


def _forest_plot(rows: list[dict[str, Any]], results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 0.5 * len(rows) / len(results) + 1.5),
                                squeeze=False)
    for axis, (name, result) in zip(axes[0], results.items(), strict=True):
        mine = [row for row in rows if row["policy"] == name]
        ys = range(len(mine))
        axis.errorbar([row["value"] for row in mine], ys,
                      xerr=[[row["value"] - row["low"] for row in mine], [row["high"] - row["value"] for row in mine]],
                      fmt="o", capsize=3)
        axis.set_yticks(list(ys), [row["estimator"] for row in mine])
        axis.axvline(result["logging_value"], color="grey", linestyle="--", label="logging (observed)")
        if result["true_value"] is not None:
            axis.axvline(result["true_value"], color="green", label="true value")
        axis.set_title(Path(name).name)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
