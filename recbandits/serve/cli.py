"""``recbandits serve``: the typer command (registered in recbandits/cli.py; ``python -m recbandits.serve`` runs
it on its own)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recbandits.console import fail
from recbandits.serve.config import ServeConfig
from recbandits.spec_cli import cli_option, spec_command


def build_config(options: dict[str, Any], config_file: Path | None = None) -> tuple[ServeConfig, set[str]]:
    """A ServeConfig from a JSON file (optional) and CLI options (None: not given); also the policy fields given."""
    data: dict[str, Any] = json.loads(config_file.read_text()) if config_file else {}
    return ServeConfig.from_settings({**data, **{key: value for key, value in options.items() if value is not None}})


def _serve(settings: dict[str, Any], *, exploration: str | None, alpha: float | None, lambda_: float | None,
           epsilon: float | None, seed: int | None, drop_unrewarded: bool, config: Path | None, address: str | None,
           repair_log: bool, print_config: bool) -> None:
    from recbandits.serve.runner import run_service

    model = {"exploration": exploration, "alpha": alpha, "lambda_": lambda_, "epsilon": epsilon, "seed": seed}
    try:
        service_config, explicit = build_config({**settings, **model}, config)
        if drop_unrewarded:
            service_config.default_reward = None
        service_config.validate()
        if print_config:
            print(json.dumps(service_config.to_dict(), indent=2))
            return
        run_service(service_config, address=address, explicit=explicit, repair_log=repair_log)
    except (ValueError, ConnectionError, RuntimeError) as error:
        raise fail(str(error)) from None


# The policy's settings (ServeConfig.model_config), the switches of this command and where it runs; every
# other option is a ServeConfig field.
serve_command = spec_command(ServeConfig, _serve, name="serve", extra=[
    cli_option("exploration", str | None, None, "ucb | thompson | eps_greedy | greedy | random \\[default: ucb]"),
    cli_option("alpha", float | None, None, "UCB width. \\[default: 1.0]"),
    cli_option("lambda_", float | None, None, "Ridge regularization (cold start). \\[default: 1.0]", "--lambda"),
    cli_option("epsilon", float | None, None, "eps_greedy exploration rate. \\[default: 0.05]"),
    cli_option("seed", int | None, None, "Seed of tie-breaking and sampling. \\[default: 0]"),
    cli_option("drop_unrewarded", bool, False, "Drop events without reward instead of a default."),
    cli_option("config", Path | None, None, "JSON file of settings (CLI options override it)."),
    cli_option("address", str | None, None, "Ray cluster address (default: a local Ray)."),
    cli_option("repair_log", bool, False, "Move a corrupt event-log line and the lines after it into a file next "
               "to the log (nothing is deleted), then start.", "--repair-log"),
    cli_option("print_config", bool, False, "Print the settings the service would run with (JSON: --config file, "
               "then options) and exit.", "--print-config"),
], doc="Serve a contextual bandit over HTTP (Ray Serve) with online learning and a durable event log.")
