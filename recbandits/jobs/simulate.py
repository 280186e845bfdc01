"""The ``simulate`` job: train a bandit on a MovieLens env next to the random and oracle references.

Writes into ``out``: ``metrics.csv`` (one row per policy and training iteration), TensorBoard events
(``tensorboard/<policy>``), ``regret.png`` (cumulative regret of the algorithm against the references),
``checkpoint/`` (the trained algorithm; its module alone under
``checkpoint/learner_group/learner/rl_module/default_policy``) and ``config.json`` (what was run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from recbandits.algos import metrics as bandit_metrics
from recbandits.algos.options import LINEAR_ALGOS, TF_AGENTS_ALGOS, USES
from recbandits.envs import ENV_IDS
from recbandits.spec_cli import DATA_DIR_HELP, option

if TYPE_CHECKING:
    from recbandits.algos.linear import LinearBanditConfig


def algorithm_configs() -> dict[str, type[LinearBanditConfig]]:
    """Every algorithm ``simulate`` runs: recbandits' own and the TF-Agents-backed ones (RLlib imports here)."""
    from recbandits.algos.linear import ALGORITHM_CONFIGS
    from recbandits.algos.tf_agents_policy import TF_AGENTS_ALGORITHM_CONFIGS

    return {**ALGORITHM_CONFIGS, **TF_AGENTS_ALGORITHM_CONFIGS}

# Env settings per env name: the MF env in TF-Agents parity (rank 20, the first 20 movies); the per-arm envs
# with the user and movie factor vectors as features, as TF-Agents' per-arm MovieLens env has them (the reward
# is their dot product: demographics and genres add no signal, and 44 x 39 instead of 20 x 20 features would
# quadruple the dimension of the default interaction model).
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "movielens": {"rank": 20, "num_movies": 20},
    "movielens-per-arm": {"rank": 20, "num_actions": 20, "user_demographics": False, "movie_genres": False},
    "movielens-ranking": {"rank": 20, "num_candidates": 20, "slate_size": 5, "user_demographics": False,
                          "movie_genres": False},
}
# The env settings ``simulate`` exposes as options, per env (constructor keyword -> CLI option).
ENV_OPTIONS: dict[str, tuple[str, ...]] = {
    "movielens": ("rank", "num_movies", "reward_type", "drift_rate"),
    "movielens-per-arm": ("rank", "num_actions", "reward_type", "drift_rate"),
    "movielens-ranking": ("rank", "num_candidates", "slate_size", "choice_model", "feedback", "drift_rate"),
}


def env_options(env: str, options: dict[str, Any]) -> dict[str, Any]:
    """CLI env settings (None: not given) checked for ``env``: a ValueError names every one it does not take."""
    if env not in ENV_OPTIONS:
        raise ValueError(f"--env {env!r} is not one of {', '.join(ENV_OPTIONS)}")
    given = {name: value for name, value in options.items() if value is not None}
    unused = [name for name in given if name not in ENV_OPTIONS[env]]
    if unused:
        takes = ", ".join("--" + name.replace("_", "-") for name in ENV_OPTIONS[env])
        raise ValueError(f"{', '.join('--' + name.replace('_', '-') for name in unused)} does not apply to --env "
                         f"{env} (it takes {takes})")
    return given


REFERENCES = ("random", "oracle")
METRIC_COLUMNS = (
    "policy", "iteration", "env_steps", "cumulative_regret", "per_step_regret", "mean_reward",
    "suboptimal_arm_rate", "env_steps_per_s", "wall_time_s",
)  # fmt: skip


@dataclass
class SimulationSpec:
    """Everything that defines a run (written to ``config.json`` so it can be repeated)."""

    env: str = option("movielens", help="movielens | movielens-per-arm | movielens-ranking")
    algo: str = option("linucb", help=" | ".join(LINEAR_ALGOS + TF_AGENTS_ALGOS))
    steps: int = option(100_000, help="Env steps to train for.")
    num_env_runners: int = option(1, help="Parallel env runner actors (0: sample in the driver).")
    num_envs_per_env_runner: int = option(256, flag="--num-envs",
                                          help="Sub-envs per env runner (the batch of one vector step).")
    rollout_fragment_length: int = option(8, help="Vector steps per runner per iteration.")
    data_dir: str | None = option(None, help=DATA_DIR_HELP)
    seed: int = option(0, help="Seed of the simulators and the policies.")
    env_config: dict[str, Any] = field(default_factory=dict)  # the env options (jobs/cli_options.py)
    training: dict[str, Any] = field(default_factory=dict)  # the hyperparameter options, as training() keywords

    def __post_init__(self):
        if self.env not in ENV_IDS:
            raise ValueError(f"--env {self.env!r} is not one of {', '.join(ENV_IDS)}")
        if self.algo not in USES:
            raise ValueError(f"--algo {self.algo!r} is not one of {', '.join(USES)}")
        for name in ("steps", "num_envs_per_env_runner", "rollout_fragment_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.num_env_runners < 0:
            raise ValueError(f"num_env_runners={self.num_env_runners} must be >= 0 (0: sample in the driver)")


def planned_steps(spec: SimulationSpec) -> int:
    """The env steps a run takes: whole iterations of every runner's sub-envs x fragment, at least ``steps``."""
    per_iteration = max(spec.num_env_runners, 1) * spec.num_envs_per_env_runner * spec.rollout_fragment_length
    return -(-spec.steps // per_iteration) * per_iteration


def env_settings(spec: SimulationSpec) -> dict[str, Any]:
    """The env's constructor arguments. Without an explicit dataset each node resolves its own default (the
    driver's cache path may not exist on other nodes of a cluster)."""
    return {**ENV_DEFAULTS[spec.env], **spec.env_config, "data_dir": spec.data_dir}


def recorded_spec(run_dir: str | Path) -> SimulationSpec:
    """The spec a run's ``config.json`` records, or a ValueError when ``run_dir`` holds no simulate run."""
    config_file = Path(run_dir).expanduser() / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{Path(run_dir)} is not a `recbandits simulate --out` directory (no config.json)")
    recorded = json.loads(config_file.read_text())
    return SimulationSpec(**{name: recorded[name] for name in SimulationSpec.__dataclass_fields__ if name in recorded})


def build_config(spec: SimulationSpec, algo: str | None = None) -> LinearBanditConfig:
    """The RLlib config of ``algo`` (default: the spec's) for the spec's env and sampling layout."""
    from recbandits.data import resolve_data_dir

    resolve_data_dir(spec.data_dir)  # a bad path fails here, in the driver, with a clear message
    config = (
        algorithm_configs()[algo or spec.algo]()
        .environment(ENV_IDS[spec.env], env_config=env_settings(spec))
        .env_runners(
            num_env_runners=spec.num_env_runners,
            num_envs_per_env_runner=spec.num_envs_per_env_runner,
            rollout_fragment_length=spec.rollout_fragment_length,
        )
        .debugging(seed=spec.seed, log_level="ERROR")
    )
    if spec.training:
        config.training(**spec.training)
    return config


def preflight(spec: SimulationSpec) -> LinearBanditConfig:
    """Check data, env settings and hyperparameters in this process, before Ray starts: a ValueError names
    what is wrong (a missing directory, a malformed ratings line, a bad setting) instead of a runner's
    traceback after Ray's start-up."""
    import gymnasium as gym

    # Reads and checks the data (a missing directory, a malformed line), before RLlib is imported.
    env = gym.make(ENV_IDS[spec.env], **env_settings(spec), episode_length=None)
    try:
        config = build_config(spec)
        config.validate()
        if not spec.algo.startswith("tfa-"):  # a TF-Agents agent's settings were checked by validate()
            module_spec = config.get_rl_module_spec(spaces={"default_policy": (env.observation_space,
                                                                               env.action_space)})
            module_spec.observation_space, module_spec.action_space = env.observation_space, env.action_space
            module_spec.build()
    finally:
        env.close()
    return config


def hyperparameters(config: LinearBanditConfig) -> dict[str, Any]:
    """The hyperparameters a run uses, defaults resolved (what ``config.json`` records)."""
    model = getattr(config, "resolved_model_config", None) or config.bandit_model_config()
    return {key: list(value) if isinstance(value, tuple) else value for key, value in model.items()}


@dataclass
class PolicyRun:
    policy: str
    rows: list[dict[str, float]]
    checkpoint: str | None = None

    @property
    def final(self) -> dict[str, float]:
        return self.rows[-1]


def train_policy(spec: SimulationSpec, algo: str, *, checkpoint_dir: Path | None = None, writer=None,
                 on_iteration: Callable[[int], None] | None = None, resume_from: str | Path | None = None,
                 previous: list[dict[str, float]] | None = None) -> PolicyRun:
    """Train ``algo`` for ``spec.steps`` env steps; one metrics row per iteration.

    ``resume_from``: a checkpoint of the same run to continue from; ``previous`` are its metrics rows, which
    the new rows continue (iteration, env steps, cumulative regret and wall time count on from the last one).
    """
    import ray

    from recbandits.verbosity import native_stderr_filtered

    # Ray's core worker notice of ray-project/ray#53727 at every env runner's creation is not ours to print; a
    # Ray started by RLlib itself inside would inherit the filter's pipe, so only around an existing one.
    with native_stderr_filtered() if ray.is_initialized() else contextlib.nullcontext():
        algorithm = build_config(spec, algo).build_algo()
    rows: list[dict[str, float]] = list(previous or [])
    last = rows[-1] if rows else {"iteration": 0, "env_steps": 0, "cumulative_regret": 0.0, "wall_time_s": 0.0}
    started = time.perf_counter()
    try:
        if resume_from is not None:
            algorithm.restore_from_path(str(resume_from))
        offset = None  # what the restored algorithm's own counters are behind the previous rows
        env_steps = int(last["env_steps"])
        while env_steps < spec.steps:
            result = algorithm.train()
            runners = result["env_runners"]
            if offset is None:
                offset = {"iteration": int(last["iteration"]) + 1 - int(result["training_iteration"]),
                          "env_steps": 0, "cumulative_regret": 0.0}
                if int(runners["num_env_steps_sampled_lifetime"]) <= int(last["env_steps"]):  # counters restarted
                    offset.update(env_steps=int(last["env_steps"]), cumulative_regret=float(last["cumulative_regret"]))
            env_steps = int(runners["num_env_steps_sampled_lifetime"]) + offset["env_steps"]
            row = {
                "policy": algo,
                "iteration": int(result["training_iteration"]) + offset["iteration"],
                "env_steps": env_steps,
                "cumulative_regret": float(runners[bandit_metrics.CUMULATIVE_REGRET]) + offset["cumulative_regret"],
                "per_step_regret": float(runners[bandit_metrics.PER_STEP_REGRET]),
                "mean_reward": float(runners[bandit_metrics.MEAN_REWARD]),
                "suboptimal_arm_rate": float(runners[bandit_metrics.SUBOPTIMAL_RATE]),
                "env_steps_per_s": float(runners[bandit_metrics.ENV_STEPS_PER_S]),
                "wall_time_s": float(last["wall_time_s"]) + time.perf_counter() - started,
            }
            rows.append(row)
            if writer is not None:
                for key in METRIC_COLUMNS[3:]:
                    writer.add_scalar(f"{algo}/{key}", row[key], global_step=env_steps)
            if on_iteration is not None:
                on_iteration(env_steps)
        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = algorithm.save(str(checkpoint_dir.resolve())).checkpoint.path
        return PolicyRun(algo, rows, checkpoint)
    finally:
        algorithm.stop()


def plot_regret(frame: pd.DataFrame, path: Path, title: str) -> None:
    """Cumulative regret from (0, 0), and per-step regret per iteration on a log scale (where a learned
    policy can be told from the oracle's zero: the oracle is drawn at the bottom of that panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (cumulative, per_step) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"random": dict(color="grey", linestyle="--"), "oracle": dict(color="black", linestyle=":")}
    floor = 1e-4  # per-step regret below this is drawn at it (the log axis has no zero)
    for policy, rows in frame.groupby("policy", sort=False):
        steps = [0, *rows["env_steps"]]
        cumulative.plot(steps, [0.0, *rows["cumulative_regret"]], label=policy, **styles.get(policy, {}))
        per_step.plot(rows["env_steps"], rows["per_step_regret"].clip(lower=floor), label=policy,
                      **styles.get(policy, {}))
    cumulative.set_xlabel("env steps")
    cumulative.set_ylabel("cumulative regret")
    per_step.set_xlabel("env steps")
    per_step.set_ylabel(f"per-step regret (log; 0 drawn at {floor:g})")
    per_step.set_yscale("log")
    for axis in (cumulative, per_step):
        axis.set_xlim(left=0)
        axis.grid(alpha=0.3)
    cumulative.set_ylim(bottom=0)
    cumulative.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def summary_rows(runs: list[PolicyRun]) -> list[dict[str, Any]]:
    """One line per policy: totals, and the per-step regret over the last tenth of the run."""
    lines = []
    for run in runs:
        frame = pd.DataFrame(run.rows)
        final = run.final
        tail_start = final["env_steps"] * 0.9
        before = frame[frame["env_steps"] <= tail_start]
        start_steps = before["env_steps"].iloc[-1] if len(before) else 0
        start_regret = before["cumulative_regret"].iloc[-1] if len(before) else 0.0
        tail_regret = (final["cumulative_regret"] - start_regret) / max(final["env_steps"] - start_steps, 1)
        lines.append({
            "policy": run.policy,
            "env_steps": final["env_steps"],
            "cumulative_regret": final["cumulative_regret"],
            "per_step_regret_last_tenth": tail_regret,
            "mean_reward_last_iteration": final["mean_reward"],
            "suboptimal_arm_rate_last_iteration": final["suboptimal_arm_rate"],
            "env_steps_per_s": final["env_steps"] / final["wall_time_s"],
            "wall_time_s": final["wall_time_s"],
        })
    return lines


ARTIFACTS = ("config.json", "metrics.csv", "summary.json", "regret.png", "tensorboard", "checkpoint")


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that holds a run, unless ``overwrite`` (then its artifacts go first)."""
    held = [name for name in ARTIFACTS if (out / name).exists()]
    if held and not overwrite:
        raise ValueError(f"--out {out} already holds a run ({', '.join(held)}): pass --overwrite to replace it, "
                         "or another --out")
    for name in held:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def resumable(out: str | Path, steps: int) -> tuple[SimulationSpec, pd.DataFrame]:
    """The spec (with the new total ``steps``) and the metrics of the run in ``out``, or a ValueError why not."""
    out = Path(out)
    missing = [name for name in ("config.json", "metrics.csv", "checkpoint") if not (out / name).exists()]
    if missing:
        raise ValueError(f"--resume {out}: no finished simulate run there (missing {', '.join(missing)})")
    recorded = recorded_spec(out)
    metrics = pd.read_csv(out / "metrics.csv")
    ran = int(metrics.loc[metrics["policy"] == recorded.algo, "env_steps"].max())
    if steps <= ran:
        raise ValueError(f"--resume {out}: the run already has {ran:,} env steps; --steps is the new total and "
                         f"must be more")
    return dataclasses.replace(recorded, steps=steps), metrics


def simulate(spec: SimulationSpec, out: str | Path, *, address: str | None = None, references: bool = True,
             progress: bool = True, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Run the algorithm (and the references) and write every artifact into ``out``; return the summary.

    An ``out`` that already holds a run is refused unless ``overwrite``. With ``resume`` the run in ``out``
    continues from its checkpoint to ``spec.steps`` in all (``resumable`` gives its spec): its metrics rows go
    on, and the references, which do not learn, run again over the new total.
    """
    out = Path(out)
    previous = None
    if resume:
        spec, metrics = resumable(out, spec.steps)
        previous = [{key: row[key] for key in METRIC_COLUMNS} for row in
                    metrics[metrics["policy"] == spec.algo].to_dict("records")]
    config = preflight(spec)
    # Resuming reads checkpoint/ at the start and saves over it at the end; the other files are rewritten and
    # TensorBoard's events of the first part stay.
    resume_from = out / "checkpoint" if resume else None
    if not resume:
        prepare_out(out, overwrite)
    planned = planned_steps(spec)
    if progress and planned != spec.steps:
        print(f"--steps {spec.steps:,} runs {planned:,} env steps: whole iterations of\n"
              f"{max(spec.num_env_runners, 1)} runner(s) x {spec.num_envs_per_env_runner} sub-envs x "
              f"{spec.rollout_fragment_length} steps")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from recbandits.verbosity import native_stderr_silenced

    with native_stderr_silenced():  # TensorBoard imports TensorFlow when installed (native start-up lines)
        from torch.utils.tensorboard import SummaryWriter

    from recbandits.cluster import connect

    out.mkdir(parents=True, exist_ok=True)
    connect(address)
    policies = [spec.algo] + [name for name in REFERENCES if references and name != spec.algo]
    # An absolute data directory: --resume and load_policy may run from another working directory.
    data_dir = None if spec.data_dir is None else str(Path(spec.data_dir).expanduser().resolve())
    record = {**asdict(spec), "data_dir": data_dir, "policies": policies, "address": address, "env_steps": planned,
              "env_settings": env_settings(spec), "hyperparameters": hyperparameters(config)}
    (out / "config.json").write_text(json.dumps(record, indent=2, default=str))
    writer = SummaryWriter(str(out / "tensorboard"))
    runs: list[PolicyRun] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        for policy in policies:
            task = bar.add_task(f"{policy:>10} env steps", total=planned)
            learner = policy == spec.algo
            run = train_policy(
                spec, policy, writer=writer,
                checkpoint_dir=out / "checkpoint" if learner else None,
                on_iteration=lambda steps, task=task: bar.update(task, completed=min(steps, planned)),
                resume_from=resume_from if learner else None, previous=previous if learner else None,
            )  # fmt: skip
            runs.append(run)
    writer.close()
    frame = pd.DataFrame([row for run in runs for row in run.rows], columns=list(METRIC_COLUMNS))
    frame.to_csv(out / "metrics.csv", index=False)
    ran = int(frame["env_steps"].max())
    plot_regret(frame, out / "regret.png", f"{spec.algo} on {spec.env}: {ran:,} env steps, seed {spec.seed}")
    summary = {"runs": summary_rows(runs), "checkpoint": runs[0].checkpoint, "out": str(out)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary

