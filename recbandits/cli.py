"""The ``recbandits`` command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from recbandits.console import fail
from recbandits.data.cli import data_app
from recbandits.jobs.cli_options import ENV_OPTIONS, TRAINING_OPTIONS, options
from recbandits.jobs.compare import ComparisonSpec
from recbandits.jobs.simulate import SimulationSpec
from recbandits.jobs.tune import tune_command
from recbandits.loadgen.cli import loadtest_command
from recbandits.serve.cli import serve_command
from recbandits.spec_cli import ADDRESS_HELP, DATA_DIR_HELP, cli_option, spec_command, with_options

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Contextual-bandit recommendation on Ray.")


@app.callback()
def main(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Also show the libraries' logs (Ray, RLlib, Tune, TensorFlow).")] = False) -> None:
    if verbose:
        from recbandits.verbosity import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"


app.add_typer(data_app, name="data")
app.command("tune")(tune_command)
app.command("serve")(serve_command)
app.command("loadtest")(loadtest_command)

DataDir = Annotated[str | None, typer.Option("--data-dir", help=DATA_DIR_HELP)]
Address = Annotated[str | None, typer.Option("--address", help=ADDRESS_HELP)]



def _print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    """A table that fits the terminal (80 columns when not one): rich wraps its cells, numbers right-aligned."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right", no_wrap=index == 0)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _print_summary(summary: dict) -> None:
    from rich.console import Console

    headers = ["policy", "env steps", "cumulative regret", "regret/step (last 10%)", "suboptimal rate",
               "env steps/s"]
    rows = [[row["policy"], f"{row['env_steps']:,}", f"{row['cumulative_regret']:,.1f}",
             f"{row['per_step_regret_last_tenth']:.4f}", f"{row['suboptimal_arm_rate_last_iteration']:.1%}",
             f"{row['env_steps_per_s']:,.0f}"] for row in summary["runs"]]
    _print_table("Simulation summary", headers, rows)
    Console().print(f"outputs in {summary['out']}: metrics.csv, summary.json, config.json, regret.png, tensorboard/, "
                    "checkpoint/", soft_wrap=True)


def _simulate(settings: dict, *, env_config: dict, training: dict, out: Path, address: str | None,
              references: bool, overwrite: bool, resume: Path | None) -> None:
    from recbandits.algos.options import training_options
    from recbandits.jobs.simulate import env_options
    from recbandits.jobs.simulate import simulate as run_simulation

    try:
        spec = SimulationSpec(**settings)
        spec.env_config = env_options(spec.env, env_config)
        spec.training = training_options(spec.algo, training)
        summary = run_simulation(spec, resume or out, address=address, references=references, overwrite=overwrite,
                                 resume=resume is not None)
    except (ValueError, ConnectionError) as error:
        raise fail(str(error)) from None
    _print_summary(summary)


# SimulationSpec's fields are the options; the env's settings and the hyperparameters are shared groups.
_simulate_command = spec_command(SimulationSpec, _simulate, name="simulate", extra=[
    cli_option("out", Path, Path("runs/simulate"), "Output directory."),
    cli_option("address", str | None, None, ADDRESS_HELP),
    cli_option("references", bool, True, "Also run the random and oracle references.", "--references/--no-references"),
    cli_option("overwrite", bool, False, "Replace a run already in --out (else refused).",
               "--overwrite/--no-overwrite"),
    cli_option("resume", Path | None, None, "Continue the run in this directory from its checkpoint to --steps in all "
               "(its other settings come from its config.json). \\[default: a new run]"),
], doc="Train a bandit on a simulated MovieLens env; write metrics.csv, TensorBoard events, regret.png, a checkpoint.")
app.command("simulate")(with_options("env_config", options(ENV_OPTIONS))(
    with_options("training", options(TRAINING_OPTIONS))(_simulate_command)))


def _compare(settings: dict, *, alpha: float, lambda_: float, out: Path, address: str | None) -> None:
    from rich.console import Console

    from recbandits.jobs.compare import compare as run_comparison

    try:
        spec = ComparisonSpec(**settings, hyperparameters={"alpha": alpha, "lambda_": lambda_})
        table, _ = run_comparison(spec, out, address=address)
    except (ValueError, ConnectionError) as error:
        raise fail(str(error)) from None
    # The terminal gets what fits 80 columns: regret at the largest budget that ran, the suboptimal-arm rate and
    # the speed; the other budgets, library, wall time and hyperparameters are in table.md and table.csv.
    final_budget = [column for column in table.columns if column.startswith("regret@")][-1]
    headers = ["contender", final_budget, "final suboptimal-arm rate", "samples/s"]
    _print_table(f"Comparison: {spec.seeds} seed(s), mean ± 95% CI", headers,
                 [[f"{value:,}" if isinstance(value, int) else str(value) for value in row]
                  for row in table[headers].itertuples(index=False)])
    console = Console()
    console.print(f"outputs in {out}: table.md, table.csv, runs.csv, regret.png, config.json", soft_wrap=True)
    console.print("(table.md and table.csv: every budget, library, wall time, hyperparameters)")


# ComparisonSpec's fields are the options; recbandits' hyperparameters and where it runs are these.
app.command("compare")(spec_command(ComparisonSpec, _compare, name="compare", extra=[
    cli_option("out", Path, Path("runs/compare"), "Output directory."),
    cli_option("address", str | None, None, ADDRESS_HELP),
    cli_option("alpha", float, 10.0, "UCB/TS exploration scale (TF-Agents example: 10)."),
    cli_option("lambda_", float, 0.001, "Ridge regularization (TF-Agents example: 0.001).", "--lambda"),
], doc="Compare recbandits bandits with TF-Agents and Vowpal Wabbit: table (mean +- 95% CI), regret.png, config.json."))


@app.command()
def demo(
    data_dir: DataDir = None,
    steps: Annotated[int, typer.Option(help="Env steps per policy.")] = 50_000,
    out: Annotated[Path, typer.Option(help="Output directory (replaced at every demo).")] = Path("runs/demo"),
) -> None:
    """The main job on the default data: the data set, then LinUCB against random and oracle on the MovieLens env."""
    from rich.console import Console

    from recbandits.data import load_movielens, resolve_data_dir
    from recbandits.data.summary import format_summary, summarize
    from recbandits.jobs.simulate import SimulationSpec
    from recbandits.jobs.simulate import simulate as run_simulation

    Console().print(format_summary(summarize(load_movielens(resolve_data_dir(data_dir)))))
    spec = SimulationSpec(env="movielens", algo="linucb", steps=steps, data_dir=data_dir)
    _print_summary(run_simulation(spec, out, overwrite=True))


logs_app = typer.Typer(no_args_is_help=True, help="Logged-feedback datasets: make them from ratings, a simulator or a "
                                                  "service's event log (docs/logged-data.md).")
app.add_typer(logs_app, name="logs")


@logs_app.command("from-ratings")
def logs_from_ratings(
    out: Annotated[Path, typer.Argument(help="Output directory: OUT/train and OUT/test datasets.")],
    data_dir: DataDir = None,
    rank: Annotated[int, typer.Option(help="Learned factors (SVD of the train part) per user and movie; 0: none.")]
    = 10,
    num_negatives: Annotated[int, typer.Option(help="Unrated movies shown beside the rated one.")] = 9,
    test_fraction: Annotated[float, typer.Option(help="The last share of the ratings in time: the test set.")] = 0.2,
    reward: Annotated[str, typer.Option(help="rating | scaled (rating / max) | binary (rating >= 4 of 5).")]
    = "rating",
    negative_reward: Annotated[str, typer.Option(
        help="Feedback of an unrated candidate (slot_rewards: training learns every candidate), or 'none' (only the "
             "rated movie's reward).")] = "0",
    seed: Annotated[int, typer.Option(help="Seed of the sampled candidates.")] = 0,
) -> None:
    """MovieLens ratings as logged decisions (supervised-to-bandit, per-arm features; propensity unknown)."""
    from recbandits.jobs.from_ratings import from_ratings
    from recbandits.logs import LogFormatError

    try:
        negative = None if negative_reward.strip().lower() == "none" else float(negative_reward)
    except ValueError:
        raise fail(f"--negative-reward {negative_reward!r} must be a number or 'none'") from None
    try:
        summary = from_ratings(data_dir, out, rank=rank, num_negatives=num_negatives, test_fraction=test_fraction,
                               reward=reward, negative_reward=negative, seed=seed)
    except (ValueError, LogFormatError) as error:
        raise fail(str(error)) from None
    spec = summary["spec"]
    typer.echo(f"{out}/train: {summary['rows']['train']:,} decisions, {out}/test: {summary['rows']['test']:,} "
               f"(context {spec['context_dim']} features, {spec['arm_dim']} per movie); feature tables "
               f"{out}/users.npz, {out}/movies.npz, titles {out}/titles.json")


@logs_app.command("collect")
@with_options("env_config", options(ENV_OPTIONS, leave_out=("feedback", "drift_rate")))
def logs_collect(
    out: Annotated[Path, typer.Argument(help="Output dataset directory.")],
    env: Annotated[str, typer.Option(help="movielens | movielens-per-arm | movielens-ranking")] = "movielens",
    policy: Annotated[str, typer.Option(help="uniform | eps-greedy | softmax (on the simulator's expected rewards) "
                                             "| a checkpoint directory (a linear policy, frozen)")] = "uniform",
    steps: Annotated[int, typer.Option(help="Decisions to log.")] = 100_000,
    workers: Annotated[int, typer.Option(help="Parallel Ray tasks (1: in this process).")] = 1,
    num_envs: Annotated[int, typer.Option(help="Sub-envs per worker (the batch of one vector step).")] = 1024,
    epsilon: Annotated[float, typer.Option(help="eps-greedy: share of uniform choices.")] = 0.1,
    temperature: Annotated[float, typer.Option(help="softmax: temperature on the expected rewards.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the simulators and the logging policy.")] = 0,
    data_dir: DataDir = None,
    env_config: dict | None = None,
    address: Address = None,
) -> None:
    """Log a known policy on a simulator: exact propensities and every candidate's expected reward."""
    from recbandits.jobs.collect import collect
    from recbandits.jobs.simulate import env_options
    from recbandits.logs import LogFormatError

    try:
        summary = collect(env, policy, steps, out, data_dir=data_dir, env_config=env_options(env, env_config),
                          workers=workers, num_envs=num_envs, epsilon=epsilon, temperature=temperature, seed=seed,
                          address=address)
    except (ValueError, LogFormatError, ConnectionError) as error:
        raise fail(str(error)) from None
    value = "" if summary["policy_value"] is None else f", expected reward per decision {summary['policy_value']:.4f}"
    typer.echo(f"{out}: {summary['rows']:,} decisions in {summary['files']} file(s), mean reward "
               f"{summary['mean_reward']:.4f}{value}")


@logs_app.command("export")
def logs_export(
    state_dir: Annotated[Path, typer.Argument(help="The service's --state-dir.")],
    out: Annotated[Path, typer.Argument(help="Output dataset directory.")],
) -> None:
    """A service's event log as a dataset: every decision with the reward the service learned from it."""
    from recbandits.logs import LogFormatError
    from recbandits.serve.export import export_log

    try:
        summary = export_log(state_dir, out)
    except (ValueError, LogFormatError, OSError) as error:
        raise fail(str(error)) from None
    typer.echo(f"{out}: {summary['decisions']:,} decisions, {summary['rewarded']:,} with a learned reward, "
               f"{summary['quarantined_records']} quarantined learning record(s)")


@app.command()
@with_options("training", options(TRAINING_OPTIONS, leave_out=("gamma",)))
def train(
    data: Annotated[Path, typer.Option(help="A logged-feedback dataset directory.")],
    algo: Annotated[str, typer.Option(help="linucb | lints | eps-greedy | tfa-linucb | tfa-lints | "
                                           "tfa-neural-eps-greedy | tfa-neural-linucb")] = "linucb",
    out: Annotated[Path, typer.Option(help="Output directory (checkpoint/, train.json).")] = Path("runs/train"),
    address: Address = None,
    training: dict | None = None,
) -> None:
    """Train a bandit on logged data (linear: Ray Data, exact ridge statistics; tfa-*: TF-Agents' agent.train)."""
    from recbandits.algos.options import training_options
    from recbandits.jobs.train import train as run_training
    from recbandits.logs import LogFormatError

    try:
        summary = run_training(data, algo, out, training_options(algo, training), address=address)
    except (ValueError, LogFormatError, ConnectionError) as error:
        raise fail(str(error)) from None
    typer.echo(f"learned {summary['learned_rows']:,.0f} rewards from {summary['rows']:,} rows in {summary['files']} "
               f"file(s) in {summary['reduce_s']:.1f} s; checkpoint in {out}/checkpoint")


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option(help="A logged-feedback dataset directory (with propensities for IPS/DR).")],
    policy: Annotated[list[Path], typer.Option(
        help="A checkpoint to evaluate, linear or TF-Agents-backed (repeat for several).")],
    out: Annotated[Path, typer.Option(help="Output directory (table.md/csv, evaluation.json, forest.png).")]
    = Path("runs/evaluate"),
    estimators: Annotated[str | None, typer.Option(
        help="Comma-separated: dm, ips, snips, dr, sndr, switch-dr, clipped-ips; rankings: sips, iips, rips "
             "\\[default: all of the dataset's kind]", show_default=False)] = None,
    folds: Annotated[int, typer.Option(help="Cross-fitting folds of the reward model (DM, DR).")] = 5,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals (0: normal only).")] = 200,
    tau: Annotated[float, typer.Option(help="Weight threshold of switch-DR and clipped IPS.")] = 10.0,
    seed: Annotated[int, typer.Option(help="Seed of the folds and the bootstrap.")] = 0,
    samples: Annotated[int, typer.Option(
        help="Thompson-sampling targets: decisions sampled per row for their probabilities (the cost grows with "
             "it).")] = 200,
    ray_data: Annotated[bool, typer.Option(
        "--ray-data/--in-memory", help="One Ray Data task per file, for logs larger than memory (normal intervals "
                                       "only).")] = False,
    tf_agents_policy: Annotated[str, typer.Option(
        help="TF-Agents-backed checkpoints: which of the agent's policies (policy: what TF-Agents deploys, "
             "greedy, collect).")] = "policy",
    address: Address = None,
) -> None:
    """Off-policy evaluation: each policy's value on logged data, with 95% intervals (docs/evaluation.md)."""
    from recbandits.jobs.evaluate import run_evaluation
    from recbandits.logs import LogFormatError

    names = None if estimators is None else tuple(name.strip() for name in estimators.split(",") if name.strip())
    try:
        summary = run_evaluation(data, [str(path) for path in policy], out, estimators=names, folds=folds,
                                 bootstrap=bootstrap, tau=tau, seed=seed, ray_data=ray_data, address=address,
                                 samples=samples, tf_agents_policy=tf_agents_policy)
        if ray_data and bootstrap:
            typer.echo("note: --ray-data gives normal intervals only (the bootstrap needs the rows in memory)",
                       err=True)
    except (ValueError, LogFormatError, ConnectionError) as error:
        raise fail(str(error)) from None
    for name, result in summary["results"].items():
        rows = [[row["estimator"], f"{row['value']:.4f}", f"[{row['low']:.4f}, {row['high']:.4f}]",
                 f"{row['vs_logging']:+.4f}",
                 "" if row["effective_sample_size"] is None else f"{row['effective_sample_size']:,.0f}"]
                if row["value"] == row["value"] else [row["estimator"], "n/a", row["note"], "", ""]
                for row in summary["rows"] if row["policy"] == name]
        _print_table(f"{name}: {result['rows']:,} rows, logging policy's mean reward {result['logging_value']:.4f}",
                     ["estimator", "value", "95% interval", "vs logging", "ESS"], rows)
        off = result["support"]["target_mass_off_support"]
        if off > 0 and any(name_ != "dm" for name_ in result["estimates"]):
            typer.echo(f"warning: {off:.1%} of the policy's probability mass is on rows or candidates without a "
                       "logging propensity: the estimators that weight by propensities do not see it"
                       + (" (only dm means anything here)" if off >= 1.0 else ""), err=True)
        if result["true_value"] is not None:
            typer.echo(f"true value (simulator's expected rewards): {result['true_value']:.4f}")
    typer.echo(f"outputs in {out}: table.md, table.csv, evaluation.json, forest.png")


@app.command()
def promote(
    service: Annotated[str, typer.Option(help="The service's URL, e.g. http://127.0.0.1:8000.")],
    checkpoint: Annotated[Path, typer.Option(help="The candidate: a `recbandits simulate` or `train` output (the "
                                                  "service reads it: same machine or shared storage).")],
    admin_token_file: Annotated[Path, typer.Option(
        envvar="RECBANDITS_ADMIN_TOKEN_FILE",
        help="The service's admin token (its --admin-token-file, default STATE_DIR/admin.token).")],
    estimator: Annotated[str, typer.Option(help="dr, sndr, snips, ips, switch-dr, clipped-ips or dm.")] = "dr",
    window: Annotated[int, typer.Option(help="Evaluate on the newest N rewarded decisions of the log.")] = 10_000,
    force: Annotated[bool, typer.Option(help="Promote whatever the evaluation says (it is still recorded).")]
    = False,
) -> None:
    """The promotion gate: the service evaluates the checkpoint on its own recent log against what its serving
    policy earned there, and serves it only if it is better (exit 0 promoted, 1 refused, 2 error)."""
    from recbandits.ope.estimators import ESTIMATORS
    from recbandits.serve.promotion import request_promotion

    if estimator not in ESTIMATORS:
        raise fail(f"--estimator {estimator}: one of {', '.join(ESTIMATORS)}")
    try:
        token = admin_token_file.expanduser().read_text().strip()
    except OSError as error:
        raise fail(f"--admin-token-file {admin_token_file}: {error.strerror or error}") from None
    # The service reads the checkpoint (its machine, or shared storage): the path is sent absolute, not checked here.
    try:
        status, answer = request_promotion(service, token, {"checkpoint": str(checkpoint.expanduser().resolve()),
                                                            "estimator": estimator, "window": window, "force": force})
    except ConnectionError as error:
        raise fail(str(error)) from None
    if status != 200:
        raise fail(f"the service refused the request ({status}): {answer.get('message', answer)}")
    evaluation = answer["evaluation"]
    if "candidate" in evaluation:
        candidate = evaluation["candidate"]
        rows = [["candidate", _number(candidate["value"]),
                 f"[{_number(candidate['low'])}, {_number(candidate['high'])}]",
                 _number(candidate["effective_sample_size"], ",.0f")],
                [f"serving (v{evaluation['serving_version']}, observed)", _number(evaluation["observed_value"]),
                 "", ""]]
        _print_table(f"{estimator} on the {evaluation['rows']:,} newest rewarded decisions",
                     ["policy", "value", "95% interval", "effective sample size"], rows)
    if answer["promoted"]:
        if force and not evaluation["promote"]:
            typer.echo(f"promoted (forced) as policy version {answer['policy_version']}; the gate alone would have "
                       f"refused it: {answer['message']}")
        else:
            typer.echo(f"promoted as policy version {answer['policy_version']}: {answer['message']}")
        return
    typer.echo(f"refused: {answer['message']}", err=True)
    raise typer.Exit(code=1)


def _number(value, style: str = ".4f") -> str:
    return "n/a" if value is None else format(value, style)

