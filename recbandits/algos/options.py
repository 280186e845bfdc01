"""Which command-line hyperparameters each algorithm reads, and their valid values (one table for every job).

``simulate``, ``tune`` and ``train`` reject an option the chosen algorithm does not read, and a value out of
range, the same way and before Ray starts. Option names are the CLI's (``lambda`` is ``training(lambda_=)``
for recbandits' algorithms and TF-Agents' ``tikhonov_weight`` for ``tfa-linucb`` / ``tfa-lints``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# How a linear-bandit module picks among the candidates (``LinearBanditModule``; the service's ``--exploration``).
EXPLORATIONS = ("ucb", "thompson", "eps_greedy", "greedy", "random")

# A linear-bandit module's settings that a policy carries (a checkpoint's, the service's ``model_config``).
MODEL_KEYS = ("exploration", "alpha", "lambda_", "epsilon", "posterior_scale", "noise_prior", "seed")

# Every algorithm's name: recbandits' own RLlib algorithms (algos.linear), and TF-Agents' agents, both as RLlib
# algorithms (the bridge, algos.tf_agents_policy) and as TF-Agents runs them (algos.tf_agents_baseline).
LINEAR_ALGOS = ("linucb", "lints", "eps-greedy", "random", "oracle")
TF_AGENTS_ALGOS = ("tfa-linucb", "tfa-lints", "tfa-neural-eps-greedy", "tfa-neural-linucb")

# Which hyperparameters each algorithm reads.
USES: dict[str, tuple[str, ...]] = {
    "linucb": ("alpha", "lambda", "gamma", "interaction"),
    "lints": ("lambda", "gamma", "interaction", "posterior_scale"),
    "eps-greedy": ("epsilon", "lambda", "gamma", "interaction"),
    "random": (),
    "oracle": (),
    "tfa-linucb": ("alpha", "lambda", "gamma"),
    "tfa-lints": ("alpha", "lambda", "gamma"),
    "tfa-neural-eps-greedy": ("epsilon", "layers"),
    "tfa-neural-linucb": ("alpha", "epsilon", "layers", "gamma"),
}

# CLI option -> keyword of the algorithm config's ``training()``.
TRAINING_KEYS = {"alpha": "alpha", "lambda": "lambda_", "gamma": "gamma", "epsilon": "epsilon",
                 "interaction": "interaction", "layers": "layers", "posterior_scale": "posterior_scale"}

_BOUNDS = {
    "alpha": (lambda value: value >= 0, ">= 0"),
    "lambda": (lambda value: value > 0, "> 0"),
    "gamma": (lambda value: 0 < value <= 1, "in (0, 1]"),
    "epsilon": (lambda value: 0 <= value <= 1, "in [0, 1]"),
    "posterior_scale": (lambda value: value > 0, "> 0"),
}


def flag(name: str) -> str:
    """The CLI option of a hyperparameter: ``posterior_scale`` -> ``--posterior-scale``."""
    return "--" + name.replace("_", "-")


def check_value(name: str, value: float) -> None:
    """A ValueError like ``--alpha -3 must be >= 0`` when a numeric hyperparameter is out of range."""
    if name not in _BOUNDS:
        return
    ok, text = _BOUNDS[name]
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{flag(name)} {value:g} must be {text}")


def check_applicable(algo: str, names: Iterable[str]) -> None:
    """A ValueError naming every option in ``names`` that ``algo`` does not read, and the ones it does."""
    if algo not in USES:
        raise ValueError(f"--algo {algo!r} is not one of {', '.join(USES)}")
    unused = [name for name in names if name not in USES[algo]]
    if unused:
        uses = ", ".join(flag(name) for name in USES[algo]) or "no hyperparameters"
        raise ValueError(f"{', '.join(flag(name) for name in unused)} does not apply to {algo} (it takes {uses})")


def training_options(algo: str, options: dict[str, object]) -> dict[str, object]:
    """CLI hyperparameters (None: not given) checked for ``algo``, as ``training()`` keywords."""
    given = {name: value for name, value in options.items() if value is not None}
    check_applicable(algo, given)
    for name, value in given.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check_value(name, float(value))
    return {TRAINING_KEYS[name]: value for name, value in given.items()}
