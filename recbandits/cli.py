"""The ``recbandits`` command line."""

from __future__ import annotations

import typer

from recbandits.data.cli import data_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Contextual-bandit recommendation on Ray.")
app.add_typer(data_app, name="data")


@app.command()
def demo(
    data_dir: str | None = typer.Option(None, "--data-dir", help="MovieLens directory (default: the embedded synthetic data)."),
    steps: int = typer.Option(20_000, help="Env steps per policy and env."),
    seed: int = typer.Option(0, help="Seed of the simulators."),
) -> None:
    """A tour on the default data: the dataset, then the random and oracle references on every env."""
    from rich.console import Console
    from rich.table import Table

    from recbandits.algos.reference import rollout_reference_policy
    from recbandits.data import load_movielens, resolve_data_dir
    from recbandits.data.summary import format_summary, summarize
    from recbandits.envs import MovieLensPerArmVectorEnv, MovieLensRankingVectorEnv, MovieLensVectorEnv

    console = Console()
    directory = resolve_data_dir(data_dir)
    console.print(format_summary(summarize(load_movielens(directory))))
    table = Table(title=f"Reference policies, {steps:,} steps each (regret = oracle's expected reward - the policy's)")
    for column in ("env", "policy", "mean reward", "mean regret", "cumulative regret", "suboptimal rate"):
        table.add_column(column, justify="left" if column in ("env", "policy") else "right")
    envs = {
        "movielens (20 movies)": MovieLensVectorEnv(num_envs=256, data_dir=directory),
        "movielens-per-arm (20 candidates)": MovieLensPerArmVectorEnv(num_envs=256, data_dir=directory),
        "movielens-ranking (5 of 20, cascade)": MovieLensRankingVectorEnv(num_envs=256, data_dir=directory),
    }
    for name, env in envs.items():
        for policy in ("random", "oracle"):
            result = rollout_reference_policy(env, policy, steps, seed)
            table.add_row(name, policy, f"{result.mean_reward:.3f}", f"{result.mean_regret:.3f}",
                          f"{result.cumulative_regret:,.1f}", f"{result.suboptimal_rate:.1%}")
    console.print(table)
