"""What a ``recbandits tune`` sweep writes: the trials' table, the configurations ranked over seeds, the best
one with the ``recbandits simulate`` command that reruns it, and the regret plots."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

from recbandits.algos.options import flag
from recbandits.jobs.sweep import CONFIG_ID, METRIC, MODE, PARAMETERS, RESULT_COLUMNS, STEPS_KEY, SweepSpec

# ------------------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------------------


def _status(trial_status: str | None, error: Any, steps: float, spec: SweepSpec) -> str:
    if error is not None or trial_status == "ERROR":
        return "error"
    if trial_status in (None, "TERMINATED"):  # None: no Trial object to ask, go by the steps
        if steps >= spec.steps:
            return "completed"
        if trial_status == "TERMINATED":
            return "stopped early"  # by ASHA
    # Interrupted: --resume continues it from its latest checkpoint (even when it had reached --steps, as Tune
    # had not recorded it as finished).
    return "unfinished"


def results_table(grid, spec: SweepSpec, configurations: list[dict[str, Any]], experiment: Path):
    """One row per trial (pandas DataFrame with ``RESULT_COLUMNS``)."""
    import pandas as pd
    from ray.tune import ExperimentAnalysis

    # The trial statuses Tune saved (what --resume will see): after an interrupt, the driver's own Trial
    # objects call the trials it stopped TERMINATED, while the saved state keeps them unfinished.
    saved = {trial.trial_id: trial for trial in ExperimentAnalysis(str(experiment)).trials}
    live = {
        trial.trial_id: trial for trial in getattr(getattr(grid, "_experiment_analysis", None), "trials", [])
    }
    rows = []
    for result in grid:
        config = result.config or {}
        key = (config.get(CONFIG_ID), config.get("seed"))
        trial_id = (result.metrics or {}).get("trial_id") or next(
            (trial_id for trial_id, trial in {**live, **saved}.items()
             if (trial.config.get(CONFIG_ID), trial.config.get("seed")) == key), None,
        )  # fmt: skip
        trial = saved.get(trial_id)
        # The driver's copy of the last result: at an interrupt the result files may not be written yet.
        metrics = result.metrics or getattr(live.get(trial_id), "last_result", None) or {}
        runners = metrics.get("env_runners", {})
        steps = float(metrics.get(STEPS_KEY, runners.get(STEPS_KEY, 0)) or 0)
        configuration = configurations[config[CONFIG_ID]] if CONFIG_ID in config else {}
        row = {
            "trial_id": trial_id,
            "status": _status(getattr(trial, "status", None), result.error, steps, spec),
            CONFIG_ID: config.get(CONFIG_ID),
            "seed": config.get("seed"),
            **{name: None for name in PARAMETERS},
            **{
                name: "x".join(map(str, value)) if name == "layers" else value
                for name, value in configuration.items()
            },
            "env_steps": int(steps),
            "cumulative_regret": runners.get("cumulative_regret"),
            "per_step_regret": runners.get("cumulative_regret", math.nan) / steps if steps else None,
            "mean_reward": runners.get("mean_reward"),
            "suboptimal_arm_rate": runners.get("suboptimal_arm_rate"),
            "iterations": metrics.get("training_iteration"),
            "time_s": metrics.get("time_total_s"),
            "checkpoint": result.checkpoint.path if result.checkpoint else None,
            "error": str(result.error).splitlines()[0][:200] if result.error else None,
        }
        rows.append(row)
    # Tune creates trials as it goes: an interrupted sweep has none yet for some (configuration, seed) pairs.
    started = {(row[CONFIG_ID], row["seed"]) for row in rows}
    for config_id, configuration in enumerate(configurations):
        for seed in spec.seeds:
            if (config_id, seed) not in started:
                rows.append({
                    "status": "not started", CONFIG_ID: config_id, "seed": seed, "env_steps": 0,
                    **{name: "x".join(map(str, value)) if name == "layers" else value
                       for name, value in configuration.items()},
                })  # fmt: skip
    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    swept = [name for name in PARAMETERS if frame[name].notna().any()]
    unused = [name for name in PARAMETERS if name not in swept]
    return frame.drop(columns=unused).sort_values([CONFIG_ID, "seed"], ignore_index=True)


def rank_configurations(table, spec: SweepSpec):
    """Configurations ranked by mean cumulative regret over their completed trials (seeds)."""
    import pandas as pd

    parameters = [name for name in PARAMETERS if name in table]
    rows = []
    for config_id, trials in table.groupby(CONFIG_ID, sort=True):
        completed = trials[trials["status"] == "completed"]
        regret = completed["cumulative_regret"].astype(float)
        rows.append(
            {
                CONFIG_ID: int(config_id),
                **{name: trials[name].iloc[0] for name in parameters},
                "seeds_completed": f"{len(completed)}/{len(spec.seeds)}",
                "mean_cumulative_regret": regret.mean() if len(regret) else math.nan,
                "std_cumulative_regret": regret.std(ddof=1)
                if len(regret) > 1
                else (0.0 if len(regret) else math.nan),
                "mean_per_step_regret": regret.mean() / spec.steps if len(regret) else math.nan,
                "status": ", ".join(
                    f"{count} {status}" for status, count in trials["status"].value_counts().items()
                ),
            }
        )
    ranked = pd.DataFrame(rows)
    if ranked.empty:
        return ranked
    ranked["_complete"] = ranked["seeds_completed"] == f"{len(spec.seeds)}/{len(spec.seeds)}"
    ranked = ranked.sort_values(
        ["_complete", "mean_cumulative_regret"], ascending=[False, True], na_position="last"
    )
    return ranked.drop(columns="_complete").reset_index(drop=True)


def _simulate_command(spec: SweepSpec, configuration: dict[str, Any], seed: int) -> str | None:
    if spec.uses_tf_agents:  # `recbandits simulate` runs the linear bandits
        return None
    argv = ["recbandits", "simulate", "--env", spec.env, "--algo", spec.algo, "--steps", str(spec.steps),
            "--num-env-runners", str(spec.num_env_runners), "--num-envs", str(spec.num_envs_per_env_runner),
            "--rollout-fragment-length", str(spec.rollout_fragment_length), "--seed", str(seed)]  # fmt: skip
    for name, value in configuration.items():
        argv += [flag(name), f"{value:g}"]
    if spec.data_dir:
        argv += ["--data-dir", spec.data_dir]
    return shlex.join(argv)


def best_configuration(
    table, ranked, spec: SweepSpec, configurations: list[dict[str, Any]]
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "algo": spec.algo,
        "env": spec.env,
        "steps": spec.steps,
        "metric": METRIC,
        "mode": MODE,
        "seeds": spec.seeds,
    }
    if ranked.empty or not math.isfinite(ranked["mean_cumulative_regret"].iloc[0]):
        return {**summary, "best": None, "reason": "no trial completed --steps"}
    best = ranked.iloc[0]
    config_id = int(best[CONFIG_ID])
    configuration = configurations[config_id]
    trials = table[(table[CONFIG_ID] == config_id) & (table["status"] == "completed")]
    best_trial = trials.sort_values("cumulative_regret").iloc[0]
    # What AlgorithmConfig.training() takes.
    lambda_name = "tikhonov_weight" if spec.uses_tf_agents else "lambda_"
    training = {(lambda_name if name == "lambda" else name): value for name, value in configuration.items()}
    return {
        **summary,
        CONFIG_ID: config_id,
        "hyperparameters": configuration,
        "training": training,
        "mean_cumulative_regret": float(best["mean_cumulative_regret"]),
        "std_cumulative_regret": float(best["std_cumulative_regret"]),
        "mean_per_step_regret": float(best["mean_per_step_regret"]),
        "seeds_completed": best["seeds_completed"],
        "trials": [
            {
                "trial_id": row.trial_id,
                "seed": int(row.seed),
                "cumulative_regret": float(row.cumulative_regret),
                "checkpoint": row.checkpoint,
            }
            for row in trials.itertuples()
        ],
        "best_trial": {
            "trial_id": best_trial["trial_id"],
            "seed": int(best_trial["seed"]),
            "cumulative_regret": float(best_trial["cumulative_regret"]),
            "checkpoint": best_trial["checkpoint"],
        },
        "simulate_command": _simulate_command(spec, configuration, int(best_trial["seed"])),
    }


def _markdown(frame) -> str:
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.1f}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def plot_regret_against(table, name: str, path: Path, spec: SweepSpec, swept: list[str]) -> None:
    """Final cumulative regret of every completed trial against one swept hyperparameter.

    Means over seeds are drawn per value of the other swept hyperparameters (one line each, for a grid of a
    few of them), else per configuration, so that a line never mixes configurations that differ elsewhere.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    completed = table[table["status"] == "completed"].copy()
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    categorical = name == "layers"
    if categorical:
        values = completed[name].astype(str)
        order = sorted(values.unique(), key=lambda text: [int(width) for width in text.split("x")])
        completed["_x"] = values.map({text: index for index, text in enumerate(order)})
        axis.set_xticks(range(len(order)), order)
    else:
        completed["_x"] = completed[name].astype(float)
    axis.scatter(completed["_x"], completed["cumulative_regret"], alpha=0.5, label="trials (one per seed)")
    others = [other for other in swept if other != name]
    groups = list(completed.groupby([completed[other].astype(str) for other in others])) if others else []
    if not others or 1 < len(groups) <= 8 and all(group["_x"].nunique() > 1 for _, group in groups):
        for key, group in groups or [((), completed)]:
            means = group.groupby("_x")["cumulative_regret"].mean().sort_index()
            keys = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{other}={value}" for other, value in zip(others, keys, strict=True))
            axis.plot(
                means.index, means.values, marker="o", label=f"mean over seeds{': ' + label if label else ''}"
            )
    else:  # drawn values: every configuration on its own
        means = completed.groupby(CONFIG_ID)[["_x", "cumulative_regret"]].mean()
        axis.scatter(means["_x"], means["cumulative_regret"], color="black", marker="x",
                     label="mean over seeds, per configuration")  # fmt: skip
    x = completed["_x"]
    if not categorical and len(x) and x.min() > 0 and x.max() / x.min() >= 10:
        axis.set_xscale("log")
    omitted = len(table) - len(completed)
    axis.set_xlabel(name)
    axis.set_ylabel(f"cumulative regret after {spec.steps:,} steps")
    title = f"{spec.algo} on {spec.env}: regret against {name}"
    axis.set_title(title + (f"\n({omitted} trials stopped early or unfinished not shown)" if omitted else ""))
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_outputs(table, spec: SweepSpec, configurations: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    table.to_csv(out / "results.csv", index=False)
    ranked = rank_configurations(table, spec)
    best = best_configuration(table, ranked, spec, configurations)
    (out / "best_config.json").write_text(json.dumps(best, indent=2, default=str))
    counts = table["status"].value_counts().to_dict()
    header = (
        f"# Sweep: {spec.algo} on {spec.env}\n\n{spec.steps:,} env steps per trial, seeds {spec.seeds}, "
        f"{len(configurations)} configurations, {len(table)} trials "
        f"({', '.join(f'{count} {status}' for status, count in counts.items())}); "
        f"search {spec.search}, ASHA {'on' if spec.asha else 'off'}. "
        "Ranked by mean cumulative regret over the "
        "completed seeds (configurations with every seed completed first).\n\n"
    )
    (out / "results.md").write_text(header + _markdown(ranked) + "\n")
    swept = [
        name for name in PARAMETERS if name in table and len({str(c.get(name)) for c in configurations}) > 1
    ]
    plots = []
    for name in swept:
        path = out / f"regret_vs_{name}.png"
        plot_regret_against(table, name, path, spec, swept)
        plots.append(str(path))
    return {
        "out": str(out),
        "trials": len(table),
        "status": counts,
        "best": best,
        "ranked": ranked,
        "plots": plots,
        "unfinished": int(counts.get("unfinished", 0) + counts.get("not started", 0)),
    }
