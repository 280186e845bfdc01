"""What a ``recbandits tune`` sweep is: its options (``SweepSpec``), the hyperparameter values and ranges it
varies, and the names of what it measures (``recbandits.jobs.tune`` runs it, ``sweep_results`` reports it)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from recbandits.algos.options import LINEAR_ALGOS, TF_AGENTS_ALGOS
from recbandits.spec_cli import DATA_DIR_HELP, option

if TYPE_CHECKING:
    from ray.tune.search.sample import Domain

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


def parse_values(name: str, text: str) -> list | Domain:
    """``"1,5,10"`` -> [1.0, 5.0, 10.0]; ``"0.1:20"`` -> ``tune.loguniform(0.1, 20)`` (``tune.uniform`` for
    gamma); layers ``"50x50,8"`` -> [(50, 50), (8,)]. ``configurations`` makes lists Tune grids or choices."""
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
        if name in LOG_SCALE and low <= 0:
            raise ValueError(f"--{name} {text!r}: a log-uniform range needs low > 0")
        from ray import tune

        return tune.loguniform(low, high) if name in LOG_SCALE else tune.uniform(low, high)
    try:
        values = [float(item) for item in text.split(",")]
    except ValueError:
        raise ValueError(
            f"--{name} {text!r}: expected comma-separated numbers, e.g. 1,5,10, or a range low:high"
        ) from None
    for value in values:
        check_value(name, value)
    return list(dict.fromkeys(values))


def _readable(name: str, value: Any, values: list | Domain) -> Any:
    """A drawn float to 4 significant digits (readable tables; plenty for a sweep); layers as tuples."""
    from ray.tune.search.sample import Domain

    if isinstance(values, Domain):
        return float(f"{value:.4g}")
    return tuple(value) if name == "layers" else value


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

    env: str = option("movielens", help="movielens | movielens-per-arm | movielens-ranking")
    algo: str = option("linucb", help=" | ".join(LINEAR_ALGOS + TF_AGENTS_ALGOS))
    steps: int = option(100_000, help="Env steps per trial.")
    # parameter -> "1,5,10" | "0.1:20" | "50x50,100": the --alpha, --lambda, ... options of tune_command
    space: dict[str, str] = field(default_factory=dict)
    seeds: list[int] = option(default_factory=lambda: [0], parse=parse_seeds, default_text="0",
                              help="Seeds every configuration runs with, e.g. 0,1,2.")
    num_samples: int = option(1, help="Draws per grid point of the ranges (and of the lists with --search random).")
    search: str = option("grid", help="grid: cross the lists; random: draw from them.")
    search_seed: int = option(0, help="Seed of the draws from ranges and random choices.")
    asha: bool = option(False, help="Stop bad trials early (ASHA on cumulative regret).")
    grace_steps: int | None = option(None, default_text="steps/9", help="Env steps before ASHA may stop a trial.")
    max_concurrent: int | None = option(None, default_text="as many as the CPUs hold", help="Trials at once.")
    num_env_runners: int = option(0, help="Env runner actors per trial (0: sample in the trial).")
    num_envs_per_env_runner: int = option(256, flag="--num-envs", help="Sub-envs per env runner.")
    rollout_fragment_length: int = option(8, help="Vector steps per runner per iteration.")
    data_dir: str | None = option(None, help=DATA_DIR_HELP)

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

    def parameter_space(self) -> dict[str, list | Domain]:
        """The swept hyperparameters (the algorithm's defaults when none was given), parsed."""
        raw = self.space if self.space else DEFAULT_SPACE[self.algo]
        return {name: parse_values(name, text) for name, text in raw.items()}

    def configurations(self) -> list[dict[str, Any]]:
        """The hyperparameter configurations, each run once per seed.

        Ray Tune resolves the space (``generate_variants``, as its ``BasicVariantGenerator`` does): lists are
        ``tune.grid_search`` (``--search grid``) or ``tune.choice`` (``--search random``); ranges are drawn.
        Every grid point gets ``num_samples`` draws of the drawn parameters (one when nothing is drawn), seeded
        by ``search_seed``. The configurations are fixed here, not per trial, so that every seed runs the same
        ones (``tune.param_space`` crosses them with the seeds); duplicates run once.
        """
        from ray import tune
        from ray.tune.search.sample import Domain
        from ray.tune.search.variant_generator import generate_variants

        space = self.parameter_space()
        unresolved = {
            name: values if isinstance(values, Domain)
            else tune.grid_search(values) if self.search == "grid" else tune.choice(values)
            for name, values in space.items()
        }
        drawn = any(isinstance(value, Domain) for value in unresolved.values())
        random_state = np.random.default_rng(self.search_seed)
        configurations: list[dict[str, Any]] = []
        for _ in range(self.num_samples if drawn else 1):
            for _, variant in generate_variants(unresolved, random_state=random_state):
                configurations.append({name: _readable(name, variant[name], space[name]) for name in space})
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
