"""``recbandits tune``: Ray Tune sweeps over a bandit's hyperparameters and seeds.

Every trial is one RLlib Algorithm, used directly as the Tune trainable: the linear bandits (``LinUCB``,
``LinTS``, ...) or the TF-Agents-backed ones (``tfa-*``, ``recbandits.algos.tf_agents_policy``, whose neural
agents' ``--layers`` a sweep can vary); trials run in parallel on whatever the Ray cluster offers. The metric
is ``env_runners/cumulative_regret`` (minimized), each trial stops after ``--steps`` env steps, and ``--asha``
stops the worst trials early at equal env-step budgets (ASHA on cumulative regret).

Hyperparameters come from lists (``--alpha 1,5,10``: a grid, or uniform choices with ``--search random``) or
ranges (``--alpha 0.1:20``: ``--num-samples`` draws, log-uniform except gamma); every configuration runs once
per ``--seeds`` value, so seeds share configurations and results can be averaged over them. Without any
hyperparameter option the algorithm's default ranges are sampled (``DEFAULT_SPACE``).

What a sweep writes into ``--out``:

| file | content |
|---|---|
| ``results.csv`` | one row per trial: hyperparameters, seed, status, env steps, regret metrics, checkpoint |
| ``results.md`` | the configurations ranked by cumulative regret, mean and std over seeds |
| ``best_config.json`` | the best configuration, its trials, the ``recbandits simulate`` command to rerun it |
| ``regret_vs_<param>.png`` | final cumulative regret against each swept parameter |
| ``sweep.json`` | what was asked for (read back by ``--resume``) |
| ``experiment/`` | Tune's experiment directory: trial results, checkpoints, state for ``--resume`` |

An interrupted sweep (Ctrl+C, a lost driver) continues with ``--resume``: finished trials are kept, unfinished
ones restart from their latest checkpoint (RLlib trials checkpoint about five times per run).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from recbandits.algos.options import LINEAR_ALGOS, TF_AGENTS_ALGOS
from recbandits.console import fail

METRIC = "env_runners/cumulative_regret"
MODE = "min"
STEPS_KEY = "num_env_steps_sampled_lifetime"
EXPERIMENT_DIR = "experiment"
CONFIG_ID = "sweep_config_id"


# The hyperparameters a sweep can vary; ranges of the first three are sampled log-uniformly.
PARAMETERS = ("alpha", "lambda", "gamma", "epsilon", "layers")
LOG_SCALE = {"alpha", "lambda", "epsilon"}


# What a sweep samples when no hyperparameter option is given.
DEFAULT_SPACE: dict[str, dict[str, str]] = {
    "linucb": {"alpha": "0.1:20", "lambda": "0.001:10"},
    "lints": {"lambda": "0.001:10"},
    "eps-greedy": {"epsilon": "0.001:0.3", "lambda": "0.001:10"},
    "random": {},
    "oracle": {},
    "tfa-linucb": {"alpha": "0.1:20", "lambda": "0.001:10"},
    "tfa-lints": {"alpha": "0.1:20", "lambda": "0.001:10"},
    "tfa-neural-eps-greedy": {"epsilon": "0.001:0.3", "layers": "50x50x50,100x100,50"},
    "tfa-neural-linucb": {"alpha": "0.1:20", "layers": "50x50x50,100x100,50"},
}

# Help text of the sweepable options (escaped bracket: typer's rich markup eats [..]).
NOT_SWEPT = " \\[default: not swept; with no hyperparameter option, the algorithm's own ranges]"

RESULT_COLUMNS = (
    "trial_id", "status", CONFIG_ID, "seed", *PARAMETERS, "env_steps", "cumulative_regret", "per_step_regret",
    "mean_reward", "suboptimal_arm_rate", "iterations", "time_s", "checkpoint", "error",
)  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# The search space
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """``low:high`` of a hyperparameter: ``--num-samples`` draws, log-uniform when ``log``."""

    low: float
    high: float
    log: bool

    def draw(self, rng) -> float:
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return float(f"{value:.4g}")  # readable tables; 4 significant digits are plenty for a sweep


def parse_values(name: str, text: str) -> list | Range:
    """``"1,5,10"`` -> [1.0, 5.0, 10.0]; ``"0.1:20"`` -> Range; layers ``"50x50,8"`` -> [(50, 50), (8,)]."""
    from recbandits.algos.options import check_value

    text = str(text).strip()
    if not text:
        raise ValueError(f"--{name} is empty")
    if name == "layers":
        try:
            networks = [tuple(int(width) for width in item.split("x")) for item in text.split(",")]
        except ValueError:
            raise ValueError(
                f"--layers {text!r}: expected networks like 50x50x50,100x100 (widths of hidden layers)"
            ) from None
        if any(not network or min(network) < 1 for network in networks):
            raise ValueError(f"--layers {text!r}: layer widths must be positive integers")
        return list(dict.fromkeys(networks))
    if ":" in text:
        try:
            low, high = (float(part) for part in text.split(":"))
        except ValueError:
            raise ValueError(f"--{name} {text!r}: expected a range low:high, e.g. 0.1:20") from None
        for value in (low, high):
            check_value(name, value)
        if not low < high:
            raise ValueError(f"--{name} {text!r}: the range needs low < high")
        log = name in LOG_SCALE
        if log and low <= 0:
            raise ValueError(f"--{name} {text!r}: a log-uniform range needs low > 0")
        return Range(low, high, log)
    try:
        values = [float(item) for item in text.split(",")]
    except ValueError:
        raise ValueError(
            f"--{name} {text!r}: expected comma-separated numbers, e.g. 1,5,10, or a range low:high"
        ) from None
    for value in values:
        check_value(name, value)
    return list(dict.fromkeys(values))


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(item) for item in str(text).split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers >= 0")
    return list(dict.fromkeys(seeds))


@dataclass
class SweepSpec:
    """Everything that defines a sweep (written to ``sweep.json``; ``--resume`` reads it back)."""

    env: str = "movielens"
    algo: str = "linucb"
    steps: int = 100_000
    space: dict[str, str] = field(default_factory=dict)  # parameter -> "1,5,10" | "0.1:20" | "50x50,100"
    seeds: list[int] = field(default_factory=lambda: [0])
    num_samples: int = 1
    search: str = "grid"
    search_seed: int = 0
    asha: bool = False
    grace_steps: int | None = None
    max_concurrent: int | None = None
    num_env_runners: int = 0
    num_envs_per_env_runner: int = 256
    rollout_fragment_length: int = 8
    data_dir: str | None = None

    def __post_init__(self) -> None:
        from recbandits.algos.options import USES, check_applicable
        from recbandits.envs import ENV_IDS

        if self.algo not in USES:
            raise ValueError(f"--algo {self.algo!r} is not one of {', '.join(USES)}")
        if self.env not in ENV_IDS:
            raise ValueError(f"--env {self.env!r} is not one of {', '.join(ENV_IDS)}")
        if self.algo in TF_AGENTS_ALGOS and self.env == "movielens-ranking":
            raise ValueError(
                f"--algo {self.algo} picks one arm, not a slate: use --env movielens or movielens-per-arm"
            )
        if self.search not in ("grid", "random"):
            raise ValueError(f"--search {self.search!r} must be grid or random")
        for name in ("steps", "num_samples", "num_envs_per_env_runner", "rollout_fragment_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')}={getattr(self, name)} must be at least 1")
        if self.num_env_runners < 0:
            raise ValueError(
                f"--num-env-runners {self.num_env_runners} must be >= 0 (0: sample in the trial)"
            )
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"--max-concurrent {self.max_concurrent} must be at least 1")
        if self.grace_steps is not None and not 1 <= self.grace_steps <= self.steps:
            raise ValueError(f"--grace-steps {self.grace_steps} must be between 1 and --steps {self.steps}")
        self.seeds = [int(seed) for seed in self.seeds]
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")
        unknown = sorted(set(self.space) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"unknown hyperparameters {unknown}; sweepable: {', '.join(PARAMETERS)}")
        check_applicable(self.algo, self.space)
        self.parameter_space()  # parse errors now, in the driver

    @property
    def uses_tf_agents(self) -> bool:
        return self.algo in TF_AGENTS_ALGOS

    def parameter_space(self) -> dict[str, list | Range]:
        """The swept hyperparameters (the algorithm's defaults when none was given), parsed."""
        raw = self.space if self.space else DEFAULT_SPACE[self.algo]
        return {name: parse_values(name, text) for name, text in raw.items()}

    def configurations(self) -> list[dict[str, Any]]:
        """The hyperparameter configurations, each run once per seed.

        Lists are crossed as a grid (``--search grid``) or drawn from (``--search random``); ranges are drawn
        from. Every grid point gets ``num_samples`` draws of the drawn parameters (one when nothing is drawn).
        """
        import numpy as np

        space = self.parameter_space()
        rng = np.random.default_rng(self.search_seed)
        grid = [name for name, values in space.items() if isinstance(values, list) and self.search == "grid"]
        drawn = [name for name in space if name not in grid]
        configurations: list[dict[str, Any]] = []
        for point in itertools.product(*(space[name] for name in grid)):
            for _ in range(self.num_samples if drawn else 1):
                configuration = dict(zip(grid, point, strict=True))
                for name in drawn:
                    values = space[name]
                    configuration[name] = (
                        values.draw(rng)
                        if isinstance(values, Range)
                        else values[int(rng.integers(len(values)))]
                    )
                configurations.append({name: configuration[name] for name in space})
        unique = {
            json.dumps(configuration, sort_keys=True): configuration for configuration in configurations
        }
        return list(unique.values())

    @property
    def steps_per_iteration(self) -> int:
        return max(self.num_env_runners, 1) * self.num_envs_per_env_runner * self.rollout_fragment_length

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepSpec:
        return cls(**data)


class _Pick:
    """``tune.sample_from`` of one hyperparameter: its value in the trial's configuration."""

    def __init__(self, configurations: list[dict[str, Any]], name: str):
        self.configurations = configurations
        self.name = name

    def __call__(self, config: dict[str, Any]) -> Any:
        return self.configurations[config[CONFIG_ID]][self.name]


# ------------------------------------------------------------------------------------------------------------
# Trainables: the RLlib Algorithm classes
# ------------------------------------------------------------------------------------------------------------


def algorithm_config_class(algo: str):
    """The AlgorithmConfig class of ``algo``: a linear bandit or a TF-Agents-backed algorithm."""
    from recbandits.algos.linear import ALGORITHM_CONFIGS

    if algo in ALGORITHM_CONFIGS:
        return ALGORITHM_CONFIGS[algo]
    try:
        from recbandits.algos.tf_agents_policy import TF_AGENTS_ALGORITHM_CONFIGS
    except ImportError as error:
        raise ValueError(
            f"--algo {algo} needs recbandits.algos.tf_agents_policy (TF-Agents): {error}"
        ) from None
    return TF_AGENTS_ALGORITHM_CONFIGS[algo]


def config_key(spec: SweepSpec, name: str) -> str:
    """The key of hyperparameter ``name`` in the algorithm's config dict (``AlgorithmConfig.to_dict()``)."""
    if name == "lambda" and spec.uses_tf_agents:
        return "tikhonov_weight"
    return name  # "lambda" is how to_dict() spells lambda_ (update_from_dict maps it back)


def algorithm_config(spec: SweepSpec):
    """The algorithm's config for the sweep's env and sampling layout (``build_config`` of ``simulate``)."""
    from recbandits.data import DATA_DIR_ENV, resolve_data_dir
    from recbandits.envs import ENV_IDS
    from recbandits.jobs.simulate import ENV_DEFAULTS, SimulationSpec, build_config

    if spec.uses_tf_agents:  # the same settings as build_config, which knows the linear bandits only
        config = (
            algorithm_config_class(spec.algo)()
            .environment(ENV_IDS[spec.env], env_config={
                **ENV_DEFAULTS[spec.env], "data_dir": str(resolve_data_dir(spec.data_dir))})
            .env_runners(
                num_env_runners=spec.num_env_runners, num_envs_per_env_runner=spec.num_envs_per_env_runner,
                rollout_fragment_length=spec.rollout_fragment_length,
            )
            .debugging(seed=0, log_level="ERROR")
        )  # fmt: skip
    else:
        config = build_config(SimulationSpec(
            env=spec.env, algo=spec.algo, steps=spec.steps, num_env_runners=spec.num_env_runners,
            num_envs_per_env_runner=spec.num_envs_per_env_runner,
            rollout_fragment_length=spec.rollout_fragment_length, data_dir=spec.data_dir,
        ))  # fmt: skip
    config.fault_tolerance(restart_failed_env_runners=True)
    if spec.data_dir is None and not os.environ.get(DATA_DIR_ENV):
        # The default data is generated on each node that needs it (the driver's cache path may be missing).
        config.env_config["data_dir"] = None
    return config


def param_space(spec: SweepSpec, configurations: list[dict[str, Any]]) -> dict[str, Any]:
    """The config dict of every trial: the algorithm's config, the configuration's values, the seed."""
    from ray import tune

    space = algorithm_config(spec).to_dict()
    space[CONFIG_ID] = tune.grid_search(list(range(len(configurations))))
    for name in configurations[0]:
        space[config_key(spec, name)] = tune.sample_from(_Pick(configurations, name))
    space["seed"] = tune.grid_search(list(spec.seeds))
    return space


def trainable_for(spec: SweepSpec):
    """The Tune trainable of a sweep: the algorithm's RLlib Algorithm class."""
    return algorithm_config_class(spec.algo)().algo_class


# ------------------------------------------------------------------------------------------------------------
# Running a sweep
# ------------------------------------------------------------------------------------------------------------


def _tuner(spec: SweepSpec, configurations: list[dict[str, Any]], out: Path, *, verbose: int, callbacks):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if spec.asha:
        scheduler = ASHAScheduler(
            time_attr=STEPS_KEY,
            max_t=spec.steps,
            grace_period=spec.grace_steps or max(spec.steps // 9, spec.steps_per_iteration),
            reduction_factor=3,
        )
    iterations = -(-spec.steps // spec.steps_per_iteration)
    checkpoints = tune.CheckpointConfig(
        num_to_keep=2, checkpoint_frequency=max(1, iterations // 5), checkpoint_at_end=True
    )
    return tune.Tuner(
        trainable_for(spec),
        param_space=param_space(spec, configurations),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            scheduler=scheduler,
            num_samples=1,
            max_concurrent_trials=spec.max_concurrent,
        ),  # fmt: skip
        run_config=tune.RunConfig(
            name=EXPERIMENT_DIR,
            storage_path=str(out),
            stop={STEPS_KEY: spec.steps},
            checkpoint_config=checkpoints,
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=verbose,
            callbacks=callbacks,
        ),
    )


def trial_progress(total: int):
    """A Tune callback that draws recbandits' progress bar of a sweep's ``total`` trials (``close()`` ends it)."""
    from ray.tune import Callback
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    class TrialProgress(Callback):
        """recbandits' one-line progress of a sweep: trials finished (errors counted) out of all."""

        def __init__(self, total: int):
            self.total, self.errors, self.progress, self.task = total, 0, None, None

        def __getstate__(self):  # Tune pickles its run config; the live bar stays in the driver
            return {**self.__dict__, "progress": None, "task": None}

        def setup(self, **info):
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn())
            self.task = self.progress.add_task("trials", total=self.total)
            self.progress.start()

        def on_trial_complete(self, iteration, trials, trial, **info):
            if self.progress is not None:
                self.progress.advance(self.task)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.errors += 1
            if self.progress is not None:
                self.progress.update(self.task, advance=1, description=f"trials ({self.errors} failed)")

        def close(self) -> None:
            if self.progress is not None:
                self.progress.stop()

    return TrialProgress(total)


def run_sweep(
    spec: SweepSpec | None,
    out: str | Path,
    *,
    address: str | None = None,
    resume: bool = False,
    verbose: int = 0,
    callbacks: list | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) a sweep and write its outputs into ``out``; return the summary.

    With ``resume`` the sweep is the one ``out/sweep.json`` describes and ``spec`` is ignored.
    """
    from ray import tune

    from recbandits.cluster import connect

    out = Path(out).expanduser().resolve()
    experiment = out / EXPERIMENT_DIR
    saved = out / "sweep.json"
    if resume:
        if not saved.is_file() or not tune.Tuner.can_restore(str(experiment)):
            raise ValueError(f"nothing to resume in {out}: no sweep was started there")
        spec = SweepSpec.from_json(json.loads(saved.read_text())["spec"])
        configurations = json.loads(saved.read_text())["configurations"]
    else:
        if spec is None:
            raise ValueError("a sweep needs a SweepSpec unless it resumes one")
        if experiment.exists():
            raise ValueError(
                f"{out} already holds a sweep: pass --resume to continue it, or choose another --out"
            )
        configurations = spec.configurations()
        from recbandits.jobs.simulate import SimulationSpec, preflight

        # Data, env settings and the algorithm checked here, before Ray: one line instead of failing trials.
        preflight(SimulationSpec(env=spec.env, algo=spec.algo, steps=spec.steps, data_dir=spec.data_dir,
                                 num_env_runners=spec.num_env_runners,
                                 num_envs_per_env_runner=spec.num_envs_per_env_runner,
                                 rollout_fragment_length=spec.rollout_fragment_length))
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"spec": spec.to_json(), "configurations": configurations}, indent=2))

    if verbose == 0:
        # Tune's new output engine prints an experiment header and paths even at verbose 0; the classic one not.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    connect(address)
    callbacks = list(callbacks or [])
    bar = None
    if progress:
        bar = trial_progress(len(configurations) * len(spec.seeds))
        callbacks.append(bar)
    if resume:
        # Tune keeps no copy of the param space (classes in it are placeholders): rebuild the same one.
        tuner = tune.Tuner.restore(
            str(experiment), trainable=trainable_for(spec), param_space=param_space(spec, configurations),
            resume_unfinished=True, resume_errored=True,
        )  # fmt: skip
    else:
        tuner = _tuner(spec, configurations, out, verbose=verbose, callbacks=callbacks)
    try:
        grid = tuner.fit()
    finally:
        if bar is not None:
            bar.close()
    table = results_table(grid, spec, configurations, experiment)
    return write_outputs(table, spec, configurations, out)


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
        argv += [f"--{name}", f"{value:g}"]
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


# ------------------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------------------



def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    ranked = summary["ranked"]
    if len(ranked):
        headers = {CONFIG_ID: "config", **{name: name for name in PARAMETERS},
                   "seeds_completed": "seeds done", "mean_cumulative_regret": "cumulative regret",
                   "std_cumulative_regret": "std", "mean_per_step_regret": "regret/step"}  # fmt: skip
        columns = [column for column in headers if column in ranked]
        table = Table(title=f"Best configurations ({summary['trials']} trials; all in results.md)")
        for column in columns:
            table.add_column(headers[column], justify="right")
        for row in ranked.head(10)[columns].itertuples(index=False):
            table.add_row(*(f"{value:,.4g}" if isinstance(value, float) else str(value) for value in row))
        console.print(table)
    best = summary["best"]
    if best.get("hyperparameters") is not None:
        console.print(
            f"best: {best['hyperparameters']} (mean cumulative regret {best['mean_cumulative_regret']:,.1f})",
            soft_wrap=True,
        )
        if best.get("simulate_command"):
            console.print(f"rerun it: {best['simulate_command']}", soft_wrap=True)
    if summary["unfinished"]:
        console.print(
            f"{summary['unfinished']} trials unfinished: continue with --resume --out {summary['out']}",
            style="yellow",
            soft_wrap=True,
        )
    console.print(
        f"outputs in {summary['out']}: results.csv, results.md, best_config.json, "
        f"{', '.join(Path(path).name for path in summary['plots']) or 'no plots (nothing swept)'}",
        soft_wrap=True,
    )


def tune_command(
    env: Annotated[str, typer.Option(help="movielens | movielens-per-arm | movielens-ranking")] = "movielens",
    algo: Annotated[
        str, typer.Option(help=f"{' | '.join(LINEAR_ALGOS)} | {' | '.join(TF_AGENTS_ALGOS)}")
    ] = "linucb",
    steps: Annotated[int, typer.Option(help="Env steps per trial.")] = 100_000,
    num_samples: Annotated[
        int, typer.Option(help="Draws per grid point of the ranges (and of the lists with --search random).")
    ] = 1,
    alpha: Annotated[
        str | None, typer.Option(help="UCB width: a list (1,5,10) or a range (0.1:20, log-uniform)." + NOT_SWEPT)
    ] = None,
    lambda_: Annotated[
        str | None,
        typer.Option(
            "--lambda",
            help="Ridge regularization (TF-Agents: tikhonov_weight): list or range (log-uniform)." + NOT_SWEPT,
        ),
    ] = None,
    gamma: Annotated[
        str | None, typer.Option(help="Forgetting factor per batch: list or range (uniform)." + NOT_SWEPT)
    ] = None,
    epsilon: Annotated[
        str | None, typer.Option(help="Exploration rate: list or range (log-uniform)." + NOT_SWEPT)
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option(help="Hidden layers of TF-Agents' neural policies: networks like 50x50x50,100x100." + NOT_SWEPT),
    ] = None,
    seeds: Annotated[str, typer.Option(help="Seeds every configuration runs with, e.g. 0,1,2.")] = "0",
    search: Annotated[str, typer.Option(help="grid: cross the lists; random: draw from them.")] = "grid",
    search_seed: Annotated[int, typer.Option(help="Seed of the draws from ranges and random choices.")] = 0,
    asha: Annotated[
        bool, typer.Option("--asha/--no-asha", help="Stop bad trials early (ASHA on cumulative regret).")
    ] = False,
    grace_steps: Annotated[
        int | None, typer.Option(help="Env steps before ASHA may stop a trial (default steps/9).")
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="Trials at once (default: as many as the CPUs hold).")
    ] = None,
    num_env_runners: Annotated[
        int, typer.Option(help="Env runner actors per trial (0: sample in the trial).")
    ] = 0,
    num_envs: Annotated[int, typer.Option(help="Sub-envs per env runner.")] = 256,
    rollout_fragment_length: Annotated[int, typer.Option(help="Vector steps per runner per iteration.")] = 8,
    data_dir: Annotated[
        str | None,
        typer.Option(
            "--data-dir", help="MovieLens directory (default: $RECBANDITS_DATA_DIR or the embedded data)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/tune"),
    address: Annotated[
        str | None,
        typer.Option(
            "--address", help="Ray cluster: auto, host:port or ray://host:port (default: a local Ray)."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the interrupted sweep in --out (its other settings come from sweep.json).",
        ),
    ] = False,
    tune_output: Annotated[
        int, typer.Option(help="Ray Tune's own progress output: 0 none (recbandits' progress bar), 1 status "
                               "tables, 2 every result.")
    ] = 0,
) -> None:
    """Ray Tune sweep of a bandit's hyperparameters and seeds: results.csv/.md, best_config.json, plots."""
    space = {
        name: value
        for name, value in dict(
            alpha=alpha, **{"lambda": lambda_}, gamma=gamma, epsilon=epsilon, layers=layers
        ).items()
        if value is not None
    }
    try:
        spec = None
        if not resume:
            spec = SweepSpec(
                env=env,
                algo=algo,
                steps=steps,
                space=space,
                seeds=parse_seeds(seeds),
                num_samples=num_samples,
                search=search,
                search_seed=search_seed,
                asha=asha,
                grace_steps=grace_steps,
                max_concurrent=max_concurrent,
                num_env_runners=num_env_runners,
                num_envs_per_env_runner=num_envs,
                rollout_fragment_length=rollout_fragment_length,
                data_dir=data_dir,
            )
        summary = run_sweep(spec, out, address=address, resume=resume, verbose=tune_output,
                            progress=tune_output == 0)
    except (ValueError, ConnectionError) as error:
        raise fail(str(error)) from None
    _print_summary(summary)
