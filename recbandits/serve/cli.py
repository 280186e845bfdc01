"""``recbandits serve``: the typer command (registered in recbandits/cli.py; ``python -m recbandits.serve`` runs
it on its own)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from recbandits.console import fail
from recbandits.serve.config import ServeConfig


def _default(name: str, scale: float = 1.0) -> str:
    """`` [default: X]`` of a ServeConfig field for a help text (escaped: typer's rich markup eats brackets)."""
    value = ServeConfig.__dataclass_fields__[name].default
    if isinstance(value, (int, float)) and not isinstance(value, bool) and scale != 1.0:
        value = round(value * scale, 6)
    return f" \\[default: {value}]"



def build_config(options: dict[str, Any], config_file: Path | None = None) -> tuple[ServeConfig, set[str]]:
    """A ServeConfig from a JSON file (optional) and CLI options (None: not given); also the policy fields given."""
    data: dict[str, Any] = json.loads(config_file.read_text()) if config_file else {}
    return ServeConfig.from_settings({**data, **{key: value for key, value in options.items() if value is not None}})


def serve_command(
    state_dir: Annotated[Path, typer.Option(
        help="Event log, policy snapshots, service.json (restart: same dir).")] = Path(
        "runs/serve"),
    port: Annotated[int, typer.Option(help="HTTP port of Ray Serve's proxy (every replica behind it).")] = 8000,
    host: Annotated[str, typer.Option(help="HTTP host.")] = "127.0.0.1",
    replica_port: Annotated[int | None, typer.Option(
        help="Fast path: first port of the replicas' own HTTP servers (default --port + 1).")] = None,
    fast_path: Annotated[bool | None, typer.Option(
        "--fast-path/--no-fast-path",
        help="Ray Serve's throughput-optimized mode (replicas serve HTTP directly, gRPC handles). "
             "\\[default: on]")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        help="Prometheus port of Ray's metrics (local Ray). \\[default: one Ray picks]")] = None,
    metrics_interval: Annotated[float | None, typer.Option(
        help="Seconds between Ray's metric exports (local Ray; Ray's own: 10)."
             + _default("metrics_interval_s"))] = None,
    idle_ray_agent: Annotated[bool | None, typer.Option(
        "--idle-ray-agent/--no-idle-ray-agent",
        help="Local Ray: run Ray's dashboard agent at idle CPU priority (SCHED_IDLE). \\[default: on]")] = None,
    checkpoint: Annotated[str | None, typer.Option(
        help="Start from `recbandits simulate --out DIR` (DIR or DIR/checkpoint) or an RLModule checkpoint.")] = None,
    shape: Annotated[str | None, typer.Option(help="Cold start: disjoint | shared." + _default("shape"))] = None,
    context_dim: Annotated[int | None, typer.Option(
        help="Cold start: context (user / global) dimension." + _default("context_dim"))] = None,
    num_arms: Annotated[int | None, typer.Option(
        help="Cold start, disjoint: number of arms." + _default("num_arms"))] = None,
    arm_dim: Annotated[int | None, typer.Option(
        help="Cold start, shared: per-arm feature dimension." + _default("arm_dim"))] = None,
    arm_ids: Annotated[str | None, typer.Option(help="Disjoint: comma-separated arm ids (default 0..K-1).")] = None,
    interaction: Annotated[bool | None, typer.Option(
        help="Shared: add global x arm features." + _default("interaction"))] = None,
    exploration: Annotated[str | None, typer.Option(
        help="ucb | thompson | eps_greedy | greedy | random \\[default: ucb]")] = None,
    alpha: Annotated[float | None, typer.Option(help="UCB width. \\[default: 1.0]")] = None,
    lambda_: Annotated[float | None, typer.Option(
        "--lambda", help="Ridge regularization (cold start). \\[default: 1.0]")] = None,
    epsilon: Annotated[float | None, typer.Option(help="eps_greedy exploration rate. \\[default: 0.05]")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of tie-breaking and sampling. \\[default: 0]")] = None,
    user_table: Annotated[str | None, typer.Option(help=".npz (ids, features) or .csv user table for user_id.")] = None,
    item_titles: Annotated[str | None, typer.Option(
        help=".json {id: title} or .csv (id, title): rankings carry titles. "
             "\\[default: a simulate run's movie titles]")] = None,
    learning: Annotated[str | None, typer.Option(help="in_process | learner" + _default("learning"))] = None,
    num_replicas: Annotated[int | None, typer.Option(
        help="Ingress replicas (learner mode)." + _default("num_replicas"))] = None,
    max_batch_size: Annotated[int | None, typer.Option(
        help="serve.batch size for scoring." + _default("max_batch_size"))] = None,
    batch_wait_ms: Annotated[float | None, typer.Option(
        help="serve.batch wait, milliseconds." + _default("batch_wait_timeout_s", 1000))] = None,
    sync_wait_ms: Annotated[float | None, typer.Option(
        help="Learner mode: a replica sends its decisions and rewards to the learner every this many ms."
        + _default("sync_wait_s", 1000))] = None,
    max_candidates: Annotated[int | None, typer.Option(
        help="Largest candidate list accepted." + _default("max_candidates"))] = None,
    max_ongoing_requests: Annotated[int | None, typer.Option(
        help="Requests a replica works on at once (Ray Serve admission control). \\[default: 96]")] = None,
    max_queued_requests: Annotated[int | None, typer.Option(
        help="Requests a replica queues beyond those; more get 503 with Retry-After at once. \\[default: 32]")] = None,
    max_connections: Annotated[int | None, typer.Option(
        help="Open connections per HTTP server; more get 503 before anything is read. \\[default: 1024]")] = None,
    retry_after: Annotated[float | None, typer.Option(help="Retry-After seconds of a 503. \\[default: 1]")] = None,
    latency_target_ms: Annotated[float | None, typer.Option(
        help="Under sustained overload the in-flight limits shrink to keep served requests within this; 0: fixed."
        + _default("latency_target_s", 1000))] = None,
    max_body_bytes: Annotated[int | None, typer.Option(
        help="Largest request body (413 beyond). \\[default: sized for --max-candidates, >= 1 MiB]")] = None,
    header_timeout: Annotated[float | None, typer.Option(
        help="Seconds a connection has to send complete request headers. \\[default: 10]")] = None,
    keep_alive_timeout: Annotated[float | None, typer.Option(
        help="Seconds an idle keep-alive connection stays open. \\[default: 5]")] = None,
    admin_token_file: Annotated[str | None, typer.Option(
        help="File holding the admin API's bearer token. "
             "\\[default: STATE_DIR/admin.token, made on first start]")] = None,
    join_window: Annotated[float | None, typer.Option(
        help="Seconds a reward may follow its decision." + _default("join_window_s"))] = None,
    default_reward: Annotated[float | None, typer.Option(
        help="Reward learned when none came in the window." + _default("default_reward"))] = None,
    drop_unrewarded: Annotated[bool, typer.Option(help="Drop events without reward instead of a default.")] = False,
    reward_rule: Annotated[str | None, typer.Option(
        help="first | sum: several rewards for one event." + _default("reward_rule"))] = None,
    update_interval: Annotated[float | None, typer.Option(
        help="Seconds between policy updates. \\[default: 0.05 in-process, 0.1 learner]")] = None,
    snapshot_interval: Annotated[float | None, typer.Option(
        help="Seconds between policy snapshots." + _default("snapshot_interval_s"))] = None,
    keep_snapshots: Annotated[int | None, typer.Option(
        help="Snapshots kept (besides rollbacks)." + _default("keep_snapshots"))] = None,
    fsync: Annotated[bool | None, typer.Option(
        "--fsync/--no-fsync", help="fsync the event log before every acknowledgement. \\[default: on]")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of settings (CLI options override it).")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: a local Ray).")] = None,
    repair_log: Annotated[bool, typer.Option(
        "--repair-log", help="Move a corrupt event-log line and the lines after it into a file next to the log "
        "(nothing is deleted), then start.")] = False,
    print_config: Annotated[bool, typer.Option(
        "--print-config",
        help="Print the settings the service would run with (JSON: --config file, then options) and exit.")] = False,
) -> None:
    """Serve a contextual bandit over HTTP (Ray Serve) with online learning and a durable event log."""
    from recbandits.serve.runner import run_service

    options: dict[str, Any] = dict(
        state_dir=str(state_dir), port=port, host=host, replica_port=replica_port, fast_path=fast_path,
        metrics_port=metrics_port, metrics_interval_s=metrics_interval, idle_ray_agent=idle_ray_agent,
        checkpoint=checkpoint, shape=shape,
        context_dim=context_dim, num_arms=num_arms,
        arm_dim=arm_dim, arm_ids=arm_ids.split(",") if arm_ids else None, interaction=interaction,
        exploration=exploration, alpha=alpha, lambda_=lambda_, epsilon=epsilon, seed=seed, user_table=user_table,
        item_titles=item_titles,
        learning=learning, num_replicas=num_replicas, max_batch_size=max_batch_size,
        batch_wait_timeout_s=None if batch_wait_ms is None else batch_wait_ms / 1000.0,
        sync_wait_s=None if sync_wait_ms is None else sync_wait_ms / 1000.0,
        max_candidates=max_candidates, max_ongoing_requests=max_ongoing_requests,
        max_queued_requests=max_queued_requests, max_connections=max_connections, retry_after_s=retry_after,
        latency_target_s=None if latency_target_ms is None else latency_target_ms / 1000.0,
        max_body_bytes=max_body_bytes,
        header_timeout_s=header_timeout, keep_alive_timeout_s=keep_alive_timeout, admin_token_file=admin_token_file,
        join_window_s=join_window, reward_rule=reward_rule,
        update_interval_s=update_interval, snapshot_interval_s=snapshot_interval, keep_snapshots=keep_snapshots,
        fsync=fsync,
    )  # fmt: skip
    try:
        service_config, explicit = build_config(options, config)
        if drop_unrewarded:
            service_config.default_reward = None
        elif default_reward is not None:
            service_config.default_reward = default_reward
        service_config.validate()
        if print_config:
            print(json.dumps(service_config.to_dict(), indent=2))
            return
        run_service(service_config, address=address, explicit=explicit, repair_log=repair_log)
    except (ValueError, ConnectionError, RuntimeError) as error:
        raise fail(str(error)) from None
