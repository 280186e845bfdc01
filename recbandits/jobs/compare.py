"""The ``compare`` job: recbandits bandits against TF-Agents baselines on identical budgets and seeds.

Every contender runs once per seed as a Ray task (one CPU each, so contenders share the machine evenly):

- recbandits contenders (``linucb``, ``lints``, ``eps-greedy``, ``random``, ``oracle``) train through RLlib's
  ``Algorithm.train()`` on the recbandits MovieLens env in TF-Agents parity. By default they sample the way
  TF-Agents' example does: 8 sub-envs, updating the posterior after every batch of 8 (TF-Agents: every 16).
  ``NAME:batch=1024:runners=2`` runs a contender with another sampling layout (e.g. the throughput one).
- TF-Agents contenders (``tfa-linucb``, ``tfa-lints``, ``tfa-neural-eps-greedy``, ``tfa-neural-linucb``) run the
  way TF-Agents users run them, on TF-Agents' own ``MovieLensPyEnvironment`` (``tf_agents_baseline``).
- Vowpal Wabbit contenders (``vw-squarecb``, ``vw-egreedy``, ``vw-bag``, ``vw-cover``; ``vw-bag:bag=8:epsilon=0``)
  learn through VW's Python API on one recbandits MovieLens env, one user per step (``vw_baseline``).

The recbandits env equals TF-Agents' env in its reward matrix and oracle (a test proves it); user arrival
sequences come from each library's own random generator seeded with the same seed.

Outputs in ``out``: ``runs.csv`` (cumulative regret of every contender and seed at every budget),
``table.md`` / ``table.csv`` (mean +- 95% confidence interval at each budget, final suboptimal-arm rate,
samples/s, wall time, hyperparameters), ``regret.png`` (mean cumulative-regret curves with 95% bands) and
``config.json`` (the exact configuration, to reproduce the run).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recbandits.algos.options import LINEAR_ALGOS, TF_AGENTS_ALGOS, USES
from recbandits.algos.tf_agents_ranking import RANKING_POLICIES
from recbandits.algos.vw_baseline import COMMON, VW_ALGOS, VW_HYPERPARAMETERS
from recbandits.spec_cli import DATA_DIR_HELP, option

BUDGETS = (1_000, 5_000, 20_000, 100_000)
COMPARE_ENVS = ("movielens", "movielens-per-arm", "movielens-ranking")


def budgets(steps: int) -> tuple[int, ...]:
    """The sample budgets a run of ``steps`` reports regret at: the standard ones below it, and ``steps``."""
    return tuple(sorted({budget for budget in BUDGETS if budget < steps} | {int(steps)}))
TF_AGENTS_EXAMPLE = {"batch": 8, "steps_per_loop": 2}  # the sampling layout of TF-Agents' MovieLens example
CURVE_POINTS = 200


# Hyperparameters a contender entry may set (``tfa-lints:alpha=0.3``), by library. ``lambda`` is recbandits'
# ridge ``lambda_`` and TF-Agents' ``tikhonov_weight``; ``posterior_scale`` fixes recbandits LinTS' v (the
# counterpart of TF-Agents LinTS' alpha) instead of estimating it.
CONTENDER_HYPERPARAMETERS = {
    "recbandits": {"alpha": "alpha", "lambda": "lambda_", "epsilon": "epsilon", "posterior_scale": "posterior_scale"},
    "TF-Agents": {"alpha": "alpha", "lambda": "tikhonov_weight", "epsilon": "epsilon"},
}


# Which env each library's contenders run on (recbandits' run on every one).
TF_AGENTS_ENVS = {**{algo: "movielens" for algo in TF_AGENTS_ALGOS},
                  **{algo: "movielens-ranking" for algo in RANKING_POLICIES}}
VW_ENVS = ("movielens", "movielens-per-arm")


def library_of(algo: str) -> str:
    return "TF-Agents" if algo in TF_AGENTS_ENVS else "VW" if algo in VW_ALGOS else "recbandits"


def _applies(algo: str) -> tuple[str, ...]:
    """The hyperparameters a contender entry of ``algo`` may set: what it reads (``options.USES``) and its
    library's runs take (VW: its own, ``vw_baseline``)."""
    if algo in VW_ALGOS:
        return (*VW_HYPERPARAMETERS[algo], *COMMON)
    if algo in RANKING_POLICIES:
        return ()  # as TF-Agents' ranking example ships it
    return tuple(name for name in USES[algo] if name in CONTENDER_HYPERPARAMETERS[library_of(algo)])


@dataclass(frozen=True)
class Contender:
    """One line of the table: an algorithm name, for recbandits ones its sampling layout, and any hyperparameters
    that differ from the defaults (recbandits: ``ComparisonSpec.hyperparameters``; TF-Agents: its example's)."""

    name: str
    algo: str
    batch: int = TF_AGENTS_EXAMPLE["batch"]
    runners: int = 0
    hyperparameters: tuple[tuple[str, float], ...] = ()  # (CLI name, value), e.g. (("alpha", 0.3),)

    @property
    def library(self) -> str:
        return library_of(self.algo)

    def settings(self) -> dict[str, float]:
        """The contender's own hyperparameters as keywords of its library (``training()`` or the baseline's)."""
        if self.library == "VW":
            return dict(self.hyperparameters)
        keys = CONTENDER_HYPERPARAMETERS[self.library]
        return {keys[name]: value for name, value in self.hyperparameters}

    @staticmethod
    def parse(text: str) -> Contender:
        """``linucb``, ``linucb:batch=1024:runners=2`` or ``tfa-lints:alpha=0.3:lambda=1``."""
        from recbandits.algos.options import check_value

        algo, _, options = text.strip().partition(":")
        known = (*LINEAR_ALGOS, *TF_AGENTS_ENVS, *VW_ALGOS)
        if algo not in known:
            raise ValueError(f"--algos entry {algo!r} is not one of {', '.join(known)}")
        layout: dict[str, int] = {}
        hyperparameters: dict[str, float] = {}
        for setting in filter(None, options.split(":")):
            key, _, value = setting.partition("=")
            if key in ("batch", "runners") and value.isdigit():
                layout[key] = int(value)
                continue
            if key not in _applies(algo):
                takes = ", ".join(f"{name}=X" for name in _applies(algo))
                raise ValueError(f"--algos entry {text!r}: options are batch=N and runners=N"
                                 f"{' (recbandits only)' if library_of(algo) != 'recbandits' else ''}"
                                 f"{', ' + takes if takes else ''}; got {setting!r}")
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"--algos entry {text!r}: {key} must be a number, got {value!r}") from None
            if algo not in VW_ALGOS:
                check_value(key, number)
            hyperparameters[key] = number
        if algo in VW_ALGOS:
            from recbandits.algos.vw_baseline import VWBaselineConfig

            VWBaselineConfig(algo, settings=hyperparameters)  # a bad value is named here
        if layout and algo in TF_AGENTS_ENVS:
            raise ValueError(f"--algos entry {text!r}: TF-Agents baselines run with their example's batch")
        if layout and algo in VW_ALGOS:
            raise ValueError(f"--algos entry {text!r}: VW learns one decision at a time (no batch or runners)")
        if layout.get("batch", 1) < 1:
            raise ValueError(f"--algos entry {text!r}: batch must be at least 1")
        return Contender(text.strip(), algo, **layout, hyperparameters=tuple(hyperparameters.items()))


def _contender_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


DEFAULT_CONTENDERS = ["linucb", "lints", "tfa-linucb", "tfa-lints", "tfa-neural-eps-greedy", "tfa-neural-linucb",
                      "random"]


@dataclass
class ComparisonSpec:
    """What a comparison runs (``config.json``); its option fields are the ``compare`` command's options."""

    algos: list[str] = option(
        default_factory=lambda: list(DEFAULT_CONTENDERS), parse=_contender_list, default_text=",".join(
            DEFAULT_CONTENDERS), help="Comma-separated contenders, e.g. linucb,lints,tfa-linucb,tfa-lints,random or "
        "Vowpal Wabbit's vw-squarecb,vw-egreedy,vw-bag,vw-cover (NAME:batch=N:runners=N for another recbandits "
        "sampling layout, NAME:alpha=X:lambda=X for other hyperparameters, VW's NAME:gamma_scale=X:learning_rate=X, "
        "...).")
    env: str = option("movielens", help=(
        "movielens (MF env), movielens-per-arm (recbandits and VW) or movielens-ranking (recbandits and TF-Agents' "
        "RankingAgent: tfa-ranking, tfa-ranking-descending); 20 candidates per step."))
    steps: int = option(20_000, help="Samples per contender and seed.")
    seeds: int = option(5, help="How many seeds every contender runs.")
    # A sweep tunes on seeds a comparison does not judge it on.
    first_seed: int = option(0, help="The first seed (seeds FIRST..FIRST+N-1).")
    data_dir: str | None = option(None, help=DATA_DIR_HELP)
    rank: int = 20
    num_movies: int = 20
    hyperparameters: dict[str, Any] = field(default_factory=lambda: {"alpha": 10.0, "lambda_": 0.001})

    def __post_init__(self):
        if self.env not in COMPARE_ENVS:
            raise ValueError(f"--env {self.env!r}: compare runs {', '.join(map(repr, COMPARE_ENVS))}")
        if self.steps < 16 or self.seeds < 1 or self.first_seed < 0:
            raise ValueError(f"--steps {self.steps} must be >= 16, --seeds {self.seeds} >= 1 and --first-seed "
                             f"{self.first_seed} >= 0")
        self.contenders = [Contender.parse(text) for text in self.algos]
        if not self.contenders:
            raise ValueError("--algos is empty")
        for contender in self.contenders:
            if contender.library == "TF-Agents" and TF_AGENTS_ENVS[contender.algo] != self.env:
                here = [algo for algo, env in TF_AGENTS_ENVS.items() if env == self.env]
                raise ValueError(f"--env {self.env}: {contender.name} runs on --env {TF_AGENTS_ENVS[contender.algo]} "
                                 f"(TF-Agents contenders here: {', '.join(here) or 'none'})")
            if contender.library == "VW" and self.env not in VW_ENVS:
                raise ValueError(f"--env {self.env}: {contender.name} picks one arm, not a slate (VW runs on "
                                 f"{' and '.join(VW_ENVS)})")

    def env_config(self) -> dict[str, Any]:
        """The env's settings: the MF env with ``rank`` and ``num_movies``; the per-arm env as ``simulate`` runs it
        (``ENV_DEFAULTS``), ``num_movies`` candidates per step."""
        if self.env == "movielens":
            return {"rank": self.rank, "num_movies": self.num_movies}
        from recbandits.jobs.simulate import ENV_DEFAULTS

        candidates = "num_actions" if self.env == "movielens-per-arm" else "num_candidates"
        return {**ENV_DEFAULTS[self.env], "rank": self.rank, candidates: self.num_movies}


def _run_recbandits(contender: Contender, spec: ComparisonSpec, seed: int, data_dir: str) -> dict[str, Any]:
    import time

    from recbandits.jobs.simulate import SimulationSpec, build_config

    per_vector_step = contender.batch * max(contender.runners, 1)
    # ~64k decisions per iteration, and no more than the budget needs. A runner updates its own posterior after
    # every batch, so this changes no decision of a single runner; several runners share their statistics
    # once per iteration.
    fragment = max(1, min(65536 // per_vector_step, -(-spec.steps // per_vector_step)))
    simulation = SimulationSpec(
        env=spec.env, algo=contender.algo, steps=spec.steps, num_env_runners=contender.runners,
        num_envs_per_env_runner=contender.batch, rollout_fragment_length=fragment, data_dir=data_dir, seed=seed,
        env_config=spec.env_config(),
        training={**spec.hyperparameters, **contender.settings()},
    )  # fmt: skip
    algorithm = build_config(simulation).training(record_regret_trace=True).build_algo()
    try:
        started, steps = time.perf_counter(), 0
        while steps < spec.steps:
            steps = int(algorithm.train()["env_runners"]["num_env_steps_sampled_lifetime"])
        wall_time = time.perf_counter() - started
        per_step = np.concatenate(algorithm.regret_trace)
    finally:
        algorithm.stop()
    return {"samples": np.cumsum(per_step[:, 2]), "cumulative_regret": np.cumsum(per_step[:, 0]),
            "suboptimal": np.cumsum(per_step[:, 1]), "wall_time_s": wall_time}


def _run_tf_agents(contender: Contender, spec: ComparisonSpec, seed: int, data_dir: str) -> dict[str, Any]:
    from recbandits.algos.tf_agents_baseline import TFAgentsBaselineConfig, run_tf_agents_baseline

    if contender.algo in RANKING_POLICIES:
        from recbandits.algos.tf_agents_ranking import TFAgentsRankingConfig, run_tf_agents_ranking

        ranking = run_tf_agents_ranking(TFAgentsRankingConfig(contender.algo, data_dir=data_dir,
                                                              env_config=spec.env_config(), seed=seed), spec.steps)
        return {"samples": ranking.samples, "cumulative_regret": ranking.cumulative_regret,
                "suboptimal": ranking.suboptimal, "wall_time_s": ranking.wall_time_s}

    # As TF-Agents' examples ship each agent (tf_agents_baseline.AS_SHIPPED), whatever recbandits' own settings.
    config = TFAgentsBaselineConfig(algo=contender.algo, ratings_file=Path(data_dir) / "u.data", rank=spec.rank,
                                    num_movies=spec.num_movies, seed=seed, **contender.settings())
    trace = run_tf_agents_baseline(config, spec.steps)
    return {"samples": trace.samples, "cumulative_regret": trace.cumulative_regret, "suboptimal": trace.suboptimal,
            "wall_time_s": trace.wall_time_s}


def _run_vw(contender: Contender, spec: ComparisonSpec, seed: int, data_dir: str) -> dict[str, Any]:
    from recbandits.algos.vw_baseline import VWBaselineConfig, run_vw_baseline

    config = VWBaselineConfig(contender.algo, data_dir=data_dir, env=spec.env, env_config=spec.env_config(),
                              seed=seed, settings=contender.settings())
    trace = run_vw_baseline(config, spec.steps)
    return {"samples": trace.samples, "cumulative_regret": trace.cumulative_regret, "suboptimal": trace.suboptimal,
            "wall_time_s": trace.wall_time_s}


def run_one(contender: Contender, spec: ComparisonSpec, seed: int, data_dir: str) -> dict[str, Any]:
    """One contender and seed: the regret trace, summarized at the budgets and on a curve grid."""
    import torch

    # One CPU per run: intra-op threads of torch or TensorFlow would only fight over the machine's cores.
    torch.set_num_threads(1)
    if contender.library == "TF-Agents":
        from recbandits.algos.tf_agents_setup import configure_tensorflow

        configure_tensorflow(num_threads=1)
    runner = {"TF-Agents": _run_tf_agents, "VW": _run_vw, "recbandits": _run_recbandits}[contender.library]
    trace = runner(contender, spec, seed, data_dir)
    samples, regret, suboptimal = trace["samples"], trace["cumulative_regret"], trace["suboptimal"]
    total = int(samples[-1])

    def at(budget: int, values: np.ndarray) -> float:
        # The cumulative value once `budget` samples were taken (traces grow in batches of 8 or 16).
        index = int(np.searchsorted(samples, budget))
        return float(values[min(index, len(values) - 1)]) if budget <= min(total, spec.steps) else float("nan")

    tail = int(np.searchsorted(samples, 0.9 * total))
    tail_rate = (suboptimal[-1] - suboptimal[tail]) / max(samples[-1] - samples[tail], 1)
    grid = np.linspace(0, spec.steps, CURVE_POINTS + 1)[1:]
    return {
        "contender": contender.name, "library": contender.library, "seed": seed, "samples": total,
        **{f"regret@{budget}": at(budget, regret) for budget in budgets(spec.steps)},
        "final_suboptimal_arm_rate": float(tail_rate), "wall_time_s": trace["wall_time_s"],
        "samples_per_s": total / trace["wall_time_s"],
        "curve": [at(int(point), regret) for point in grid],
    }  # fmt: skip


def confidence_interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t confidence interval (0 for a single seed)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, 0.0
    return mean, float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))


def hyperparameter_text(contender: Contender, spec: ComparisonSpec) -> str:
    if contender.library == "VW":
        from recbandits.algos.vw_baseline import VWBaselineConfig, describe

        return describe(VWBaselineConfig(contender.algo, settings=contender.settings())) + "; one decision per update"
    if contender.algo in RANKING_POLICIES:
        from recbandits.algos.tf_agents_ranking import EXAMPLE

        towers = " / ".join("-".join(map(str, tower)) for tower in EXAMPLE["towers"])
        return (f"RankingAgent, policy {RANKING_POLICIES[contender.algo].lower()}, common tower {towers}, Adam lr "
                f"{EXAMPLE['learning_rate']} (as its example ships); batch {EXAMPLE['batch_size']}, "
                f"{EXAMPLE['steps_per_loop']} steps/loop")
    if contender.library == "TF-Agents":
        from recbandits.algos.tf_agents_baseline import TFAgentsBaselineConfig

        shipped = TFAgentsBaselineConfig(algo=contender.algo, ratings_file="u.data", **contender.settings())
        layers = "-".join(str(width) for width in shipped.layers)
        text = {
            "tfa-linucb": f"alpha {shipped.alpha}, tikhonov {shipped.tikhonov_weight}",
            "tfa-lints": f"alpha {shipped.alpha}, tikhonov {shipped.tikhonov_weight}",
            "tfa-neural-eps-greedy": f"eps {shipped.epsilon}, layers {layers}, lr {shipped.learning_rate}",
            "tfa-neural-linucb": f"alpha {shipped.alpha}, eps {shipped.epsilon}, lr {shipped.learning_rate}, enc. "
                                 f"{shipped.encoding_dim}, {shipped.encoding_network_num_train_steps} enc. steps, "
                                 f"layers {layers}",
        }[contender.algo]
        origin = f"{', '.join(f'{name} {value:g}' for name, value in contender.hyperparameters)} set, the rest " \
            if contender.hyperparameters else ""
        return f"{text} ({origin}as its example ships); batch 8, 2 steps/loop"
    settings = {**spec.hyperparameters, **contender.settings()}
    alpha, lambda_ = settings.get("alpha"), settings.get("lambda_")
    scale = settings.get("posterior_scale")
    text = {
        "linucb": f"alpha {alpha}, lambda {lambda_}",
        "lints": f"lambda {lambda_}, " + ("v estimated (NIG prior a0=b0=1)" if scale is None else f"v {scale:g}"),
        "eps-greedy": f"eps {settings.get('epsilon', 0.05)}, lambda {lambda_}",
        "random": "-",
        "oracle": "-",
    }[contender.algo]
    return f"{text}; batch {contender.batch}, update every batch, {max(contender.runners, 1)} runner(s)"


def build_table(runs: pd.DataFrame, spec: ComparisonSpec) -> pd.DataFrame:
    rows = []
    for contender in spec.contenders:
        group = runs[runs["contender"] == contender.name]
        row: dict[str, Any] = {"contender": contender.name, "library": contender.library, "seeds": len(group)}
        for budget in budgets(spec.steps):
            values = group[f"regret@{budget}"].to_numpy()
            if np.isnan(values).any():
                row[f"regret@{budget}"] = "not run"
            else:
                mean, half = confidence_interval(values)
                row[f"regret@{budget}"] = f"{mean:,.1f} ± {half:,.1f}"
        mean, half = confidence_interval(group["final_suboptimal_arm_rate"].to_numpy())
        row["final suboptimal-arm rate"] = f"{mean:.1%} ± {half:.1%}"
        row["samples/s"] = f"{group['samples_per_s'].mean():,.0f}"
        row["wall time (s)"] = f"{group['wall_time_s'].mean():,.1f}"
        row["hyperparameters"] = hyperparameter_text(contender, spec)
        rows.append(row)
    return pd.DataFrame(rows)


def compare_means(ours: float, our_half: float, theirs: float, their_half: float) -> str:
    """What two means with 95% half-widths show: "lower|equal|higher mean, intervals overlap|disjoint"."""
    order = "lower" if ours < theirs else "equal" if ours == theirs else "higher"
    overlap = abs(ours - theirs) <= our_half + their_half
    return f"{order} mean, intervals {'overlap' if overlap else 'disjoint'}"


def plot_curves(runs: pd.DataFrame, spec: ComparisonSpec, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, spec.steps, CURVE_POINTS + 1)[1:]
    figure, axis = plt.subplots(figsize=(8, 4.8))
    for contender in spec.contenders:
        curves = np.array(runs.loc[runs["contender"] == contender.name, "curve"].tolist())
        mean = curves.mean(axis=0)
        half = np.array([confidence_interval(curves[:, i])[1] for i in range(curves.shape[1])])
        style = {"TF-Agents": "--", "VW": ":"}.get(contender.library, "-")
        (line,) = axis.plot(grid, mean, style, label=f"{contender.name} ({contender.library})")
        # Regret is never negative: the band is clipped at 0 (a symmetric t-interval can cross it).
        axis.fill_between(grid, np.maximum(mean - half, 0.0), mean + half, color=line.get_color(), alpha=0.2)
    axis.set_xlabel("samples")
    axis.set_ylabel("cumulative regret")
    axis.set_yscale("symlog", linthresh=10)
    what = {"movielens": "MF env", "movielens-per-arm": "per-arm env", "movielens-ranking": "ranking env"}[spec.env]
    unit = "movies" if spec.env == "movielens" else "candidates per step"
    axis.set_title(f"MovieLens {what} (rank {spec.rank}, {spec.num_movies} {unit}), mean and 95% CI over "
                   f"{spec.seeds} seeds")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def compare(spec: ComparisonSpec, out: str | Path, *, address: str | None = None, progress: bool = True):
    """Run every contender on every seed (in parallel Ray tasks) and write the table, plot and config.

    Returns the table (mean and 95% interval per contender) and the runs (one row per contender and seed).
    """
    import ray
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from recbandits.cluster import connect
    from recbandits.data import load_movielens, resolve_data_dir

    out = Path(out)
    data_dir = str(resolve_data_dir(spec.data_dir))
    load_movielens(data_dir)  # a malformed file fails here, in one line naming file and line, before Ray starts
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**asdict(spec), "data_dir": data_dir, "address": address,
                                                 "budgets": budgets(spec.steps)}, indent=2))
    connect(address)
    task = ray.remote(num_cpus=1, max_retries=0)(run_one)
    # TF-Agents runs are the long ones: start them first so they overlap with the rest.
    seeds = range(spec.first_seed, spec.first_seed + spec.seeds)
    jobs = sorted(((contender, seed) for contender in spec.contenders for seed in seeds),
                  key=lambda job: job[0].library != "TF-Agents")
    pending = {task.remote(contender, spec, seed, data_dir): (contender, seed) for contender, seed in jobs}
    results = []
    columns = (TextColumn("compare"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        progress_task = bar.add_task("runs", total=len(pending))
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            pending.pop(done[0])
            results.append(ray.get(done[0]))
            bar.advance(progress_task)
    runs = pd.DataFrame(results)
    runs.drop(columns="curve").sort_values(["contender", "seed"]).to_csv(out / "runs.csv", index=False)
    table = build_table(runs, spec)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(table.to_markdown(index=False) + "\n")
    plot_curves(runs, spec, out / "regret.png")
    return table, runs
