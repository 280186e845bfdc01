"""What a ``recbandits tune`` sweep is: its options (``SweepSpec``), the hyperparameter values and ranges it
varies, and the names of what it measures (``recbandits.jobs.tune`` runs it, ``sweep_results`` reports it)."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from recbandits.algos.options import TF_AGENTS_ALGOS

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
