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

import json
import os
from pathlib import Path
from typing import Any

from recbandits.console import fail
from recbandits.jobs.sweep import (
    CONFIG_ID,
    EXPERIMENT_DIR,
    METRIC,
    MODE,
    NOT_SWEPT,
    PARAMETERS,
    STEPS_KEY,
    SweepSpec,
)
from recbandits.jobs.sweep_results import results_table, write_outputs
from recbandits.spec_cli import ADDRESS_HELP, cli_option, spec_command

# ------------------------------------------------------------------------------------------------------------
# Trainables: the RLlib Algorithm classes
# ------------------------------------------------------------------------------------------------------------


class _Pick:
    """``tune.sample_from`` of one hyperparameter: its value in the trial's configuration.

    Tune draws a space's samples anew for every point of its grid, so a seed grid next to drawn hyperparameters
    would give each seed other configurations. The configurations are resolved once
    (``SweepSpec.configurations``, with Tune's ``generate_variants``); the trials are their index (``CONFIG_ID``)
    crossed with the seeds, and each trial picks its values here."""

    def __init__(self, configurations: list[dict[str, Any]], name: str):
        self.configurations = configurations
        self.name = name

    def __call__(self, config: dict[str, Any]) -> Any:
        return self.configurations[config[CONFIG_ID]][self.name]


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


def _tune(settings: dict[str, Any], *, alpha: str | None, lambda_: str | None, gamma: str | None,
          epsilon: str | None, layers: str | None, out: Path, address: str | None, resume: bool,
          tune_output: int) -> None:
    space = {name: value for name, value in
             {"alpha": alpha, "lambda": lambda_, "gamma": gamma, "epsilon": epsilon, "layers": layers}.items()
             if value is not None}
    try:
        spec = None if resume else SweepSpec(**settings, space=space)
        summary = run_sweep(spec, out, address=address, resume=resume, verbose=tune_output,
                            progress=tune_output == 0)
    except (ValueError, ConnectionError) as error:
        raise fail(str(error)) from None
    _print_summary(summary)


# SweepSpec's fields are the options; the hyperparameters (SweepSpec.space) and where the sweep runs are these.
tune_command = spec_command(SweepSpec, _tune, name="tune", extra=[
    cli_option("alpha", str | None, None, "UCB width: a list (1,5,10) or a range (0.1:20, log-uniform)." + NOT_SWEPT),
    cli_option("lambda_", str | None, None, "Ridge regularization (TF-Agents: tikhonov_weight): list or range "
               "(log-uniform)." + NOT_SWEPT, "--lambda"),
    cli_option("gamma", str | None, None, "Forgetting factor per batch: list or range (uniform)." + NOT_SWEPT),
    cli_option("epsilon", str | None, None, "Exploration rate: list or range (log-uniform)." + NOT_SWEPT),
    cli_option("layers", str | None, None, "Hidden layers of TF-Agents' neural policies: networks like "
               "50x50x50,100x100." + NOT_SWEPT),
    cli_option("out", Path, Path("runs/tune"), "Output directory."),
    cli_option("address", str | None, None, ADDRESS_HELP),
    cli_option("resume", bool, False, "Continue the interrupted sweep in --out (its other settings come from "
               "sweep.json).", "--resume"),
    cli_option("tune_output", int, 0, "Ray Tune's own progress output: 0 none (recbandits' progress bar), 1 status "
               "tables, 2 every result."),
], doc="Ray Tune sweep of a bandit's hyperparameters and seeds: results.csv/.md, best_config.json, plots.")
