"""Options several job commands share, each defined once: an env's settings (``simulate``, ``logs collect``) and
the algorithms' hyperparameters (``simulate``, ``train``). They are ``spec_command`` groups: a command gets the
given ones as one dict (``env_options`` and ``training_options`` check them for the env and the algorithm)."""

from __future__ import annotations

from recbandits.spec_cli import cli_option

ENV_OPTIONS = {
    "rank": cli_option("rank", int | None, None, "Rank of the rating factorization \\[default: 20]"),
    "num_movies": cli_option("num_movies", int | None, None, "movielens: movies to recommend \\[default: 20]"),
    "num_actions": cli_option("num_actions", int | None, None,
                              "movielens-per-arm: candidates per step \\[default: 20]"),
    "num_candidates": cli_option("num_candidates", int | None, None,
                                 "movielens-ranking: candidates per step \\[default: 20]"),
    "slate_size": cli_option("slate_size", int | None, None, "movielens-ranking: slots per slate \\[default: 5]"),
    "reward_type": cli_option("reward_type", str | None, None,
                              "rating | click (movielens, movielens-per-arm) \\[default: rating]"),
    "choice_model": cli_option("choice_model", str | None, None,
                               "cascade | position_based (movielens-ranking) \\[default: cascade]"),
    "feedback": cli_option("feedback", str | None, None, "cascading | score_vector (movielens-ranking) "
                           "\\[default: cascading for cascade, score_vector for position_based]"),
    "drift_rate": cli_option("drift_rate", float | None, None,
                             "Env preference drift, radians per step \\[default: 0.0]"),
}

TRAINING_OPTIONS = {
    "alpha": cli_option("alpha", float | None, None,
                        "UCB width (tfa-lints: sample scale) \\[default: linucb 1.0, tfa-* 10.0]"),
    "lambda": cli_option("lambda_", float | None, None,
                         "Ridge regularization \\[default: 1.0; tfa-linucb 0.001, tfa-lints 1.0]", "--lambda"),
    "gamma": cli_option("gamma", float | None, None, "Forgetting factor per batch \\[default: 1.0, none]"),
    "epsilon": cli_option("epsilon", float | None, None,
                          "Exploration rate (eps-greedy, neural tfa-*) \\[default: 0.05]"),
    "interaction": cli_option("interaction", bool | None, None, (
        "Per-arm envs and shared datasets: learn on the outer product of the context and candidate features too "
        "\\[default: on there]"), "--interaction/--no-interaction"),
    "posterior_scale": cli_option("posterior_scale", float | None, None,
                                  "LinTS: a fixed v of N(theta, v^2 A^-1) \\[default: estimated from the residuals]"),
}


def options(table: dict, *names: str, leave_out: tuple[str, ...] = ()) -> list:
    """The options of ``table`` named (all when none is), less ``leave_out``."""
    return [option for name, option in table.items() if (not names or name in names) and name not in leave_out]
