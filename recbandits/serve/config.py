"""The configuration of a recbandits service: one dataclass, validated, stored next to the service's state.

The model-defining part (``POLICY_FIELDS``: feature shape, dimensions, arm ids, the bandit's settings) is
written to ``<state_dir>/service.json`` on the first start; a restart on the same state directory reuses it
and refuses a conflicting one, so a log is never replayed into a policy of another shape. The rest (ports,
join window, learning architecture, cadences) may change between restarts.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

import pydantic

from recbandits.algos.options import EXPLORATIONS, MODEL_KEYS
from recbandits.spec_cli import option

LEARNING_MODES = ("in_process", "learner")
REWARD_RULES = ("first", "sum")
SHAPES = ("disjoint", "shared")

# The fields that define the policy: fixed for the lifetime of a state directory.
POLICY_FIELDS = ("shape", "context_dim", "num_arms", "arm_dim", "arm_ids", "interaction", "model_config",
                 "slate_size")
SERVICE_FILE = "service.json"


def _comma_separated(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


@dataclass
class ServeConfig:
    """Everything a service needs; each field's help is its ``recbandits serve`` option (docs/serve.md)."""

    # Where the state lives (event log, policy versions, service.json) and where the service listens.
    state_dir: str = option("runs/serve", help="Event log, policy snapshots, service.json (restart: same dir).")
    host: str = option("127.0.0.1", help="HTTP host.")
    port: int = option(8000, help="HTTP port of Ray Serve's proxy (every replica behind it).")
    # Fast path (Ray Serve's throughput-optimized mode): each ingress replica also serves HTTP itself on a port
    # of [replica_port, replica_port + num_replicas + 8).
    fast_path: bool = option(True, help="Ray Serve's throughput-optimized mode (replicas serve HTTP directly, gRPC "
                                        "handles).")
    replica_port: int | None = option(None, default_text="--port + 1",
                                      help="Fast path: first port of the replicas' own HTTP servers.")
    metrics_port: int | None = option(None, default_text="one Ray picks",
                                      help="Prometheus port of Ray's metrics (local Ray).")
    # On a small machine each export stalls serving for a moment: see docs/serve.md.
    metrics_interval_s: float = option(60.0, flag="--metrics-interval",
                                       help="Seconds between Ray's metric exports (local Ray; Ray's own: 10).")
    # Its bursts of work wait for the cores the replicas leave free instead of delaying requests (docs/serve.md).
    idle_ray_agent: bool = option(True, help="Local Ray: run Ray's dashboard agent at idle CPU priority "
                                             "(SCHED_IDLE).")

    # The starting policy: a checkpoint, or a cold start for this feature spec.
    checkpoint: str | None = option(None, default_text="a cold start", help=(
        "Start from `recbandits simulate --out DIR` (DIR or DIR/checkpoint) or an RLModule checkpoint."))
    shape: str = option("disjoint", help="Cold start: disjoint | shared.")
    context_dim: int = option(20, help="Cold start: context (user / global) dimension.")
    num_arms: int = option(20, help="Cold start, disjoint: number of arms (shared: unused).")
    arm_dim: int = option(0, help="Cold start, shared: per-arm feature dimension.")
    arm_ids: list[str] | None = option(None, parse=_comma_separated, default_text="0..K-1",
                                       help="Disjoint: comma-separated arm ids.")
    interaction: bool = option(False, help="Shared: add global x arm features.")
    slate_size: int = option(0, default_text="a ranking checkpoint's, else 0", help=(
        "Shared: serve slates of this many slots, learned from per-slot feedback (0: one action per decision)."))
    model_config: dict[str, Any] = field(default_factory=dict)  # MODEL_KEYS; the CLI's --exploration, --alpha, ...
    user_table: str | None = option(None, help=".npz (ids, features) or .csv (user_id, f0, f1, ...) user table for "
                                               "user_id contexts.")
    item_titles: str | None = option(None, default_text="a simulate run's movie titles",
                                     help=".json {id: title} or .csv (id, title): rankings carry titles.")

    # Serving.
    learning: str = option("in_process", help="in_process | learner")
    num_replicas: int = option(1, help="Ingress replicas (learner mode).")
    max_batch_size: int = option(64, help="serve.batch size for scoring.")
    batch_wait_timeout_s: float = option(0.002, flag="--batch-wait-ms", scale=1000,
                                         help="serve.batch wait, milliseconds.")
    sync_wait_s: float = option(0.005, flag="--sync-wait-ms", scale=1000,
                                help="Learner mode: a replica sends its decisions and rewards to the learner every "
                                     "this many ms.")
    max_candidates: int = option(1000, help="Largest candidate list accepted.")
    replica_num_cpus: float = 0.0

    # Admission control and HTTP limits (docs/serve.md, "Limits"): a request beyond them gets 503 with
    # Retry-After at once (serve/limits.py, then Ray Serve), so that the accepted ones keep their latency.
    max_ongoing_requests: int = option(96, help="Requests a replica works on at once (Ray Serve admission "
                                                "control).")
    max_queued_requests: int = option(32, help="Requests a replica queues beyond those; more get 503 with "
                                               "Retry-After at once.")
    retry_after_s: float = option(1.0, flag="--retry-after", help="Retry-After seconds of a 503.")
    latency_target_s: float = option(0.05, flag="--latency-target-ms", scale=1000, help=(
        "Under sustained overload the in-flight limits shrink to keep served requests within this; 0: fixed."))
    max_connections: int = option(1024, help="Open connections per HTTP server; more get 503 before anything is "
                                             "read.")
    max_body_bytes: int | None = option(None, default_text="sized for --max-candidates, >= 1 MiB",
                                        help="Largest request body (413 beyond).")
    header_timeout_s: float = option(10.0, flag="--header-timeout",
                                     help="Seconds a connection has to send complete request headers.")
    keep_alive_timeout_s: float = option(5.0, flag="--keep-alive-timeout",
                                         help="Seconds an idle keep-alive connection stays open.")
    admin_token_file: str | None = option(None, default_text="STATE_DIR/admin.token, made on first start",
                                          help="File holding the admin API's bearer token.")

    # Joining rewards with decisions.
    join_window_s: float = option(60.0, flag="--join-window", help="Seconds a reward may follow its decision.")
    default_reward: float | None = option(0.0, help="Reward learned when none came in the window (see "
                                                    "--drop-unrewarded).")
    reward_rule: str = option("first", help="first | sum: several rewards for one event.")

    # Learning, versions and durability.
    update_interval_s: float | None = option(None, flag="--update-interval", default_text="0.05 in-process, 0.1 "
                                             "learner", help="Seconds between policy updates.")
    snapshot_interval_s: float = option(10.0, flag="--snapshot-interval", help="Seconds between policy snapshots.")
    keep_snapshots: int = option(20, help="Snapshots kept (besides rollbacks).")
    closed_retention: int = 200_000  # closed event ids remembered (409 instead of 404 for late rewards)
    fsync: bool = option(True, help="fsync the event log before every acknowledgement.")

    def __post_init__(self):
        if self.arm_ids is not None:
            self.arm_ids = [str(arm) for arm in self.arm_ids]
        self.model_config = dict(self.model_config or {})
        self.validate()

    # ----------------------------------------------------------------------------------------------

    def validate(self) -> None:
        def check(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(message)

        check(self.learning in LEARNING_MODES, f"learning={self.learning!r} must be one of {', '.join(LEARNING_MODES)}")
        check(self.reward_rule in REWARD_RULES, f"reward_rule={self.reward_rule!r} must be one of first, sum")
        check(self.shape in SHAPES, f"shape={self.shape!r} must be disjoint or shared")
        for name in ("port", "replica_port", "metrics_port"):
            value = getattr(self, name)
            check(value is None or 0 < value < 65536, f"{name}={value} is not a TCP port")
        check(self.num_replicas >= 1, f"num_replicas={self.num_replicas} must be >= 1")
        check(
            self.learning != "in_process" or self.num_replicas == 1,
            "learning=in_process serves and learns in one replica (the authority on its policy): use "
            f"num_replicas=1, or learning=learner for {self.num_replicas} replicas",
        )
        check(self.context_dim >= 1, f"context_dim={self.context_dim} must be >= 1")
        check(self.shape != "disjoint" or self.num_arms >= 1, f"num_arms={self.num_arms} must be >= 1")
        check(self.shape != "shared" or self.arm_dim >= 1, f"arm_dim={self.arm_dim} must be >= 1 (shared shape)")
        check(self.slate_size >= 0, f"slate_size={self.slate_size} must be >= 0")
        check(self.slate_size == 0 or self.shape == "shared" or self.checkpoint is not None,
              f"slate_size={self.slate_size}: slates are served by the shared shape (candidates with features)")
        if self.arm_ids is not None:
            check(len(set(self.arm_ids)) == len(self.arm_ids), "arm_ids must be distinct")
            check(self.shape != "disjoint" or len(self.arm_ids) == self.num_arms,
                  f"{len(self.arm_ids)} arm_ids for num_arms={self.num_arms}")
        check(self.max_batch_size >= 1, f"max_batch_size={self.max_batch_size} must be >= 1")
        check(self.batch_wait_timeout_s >= 0, "batch_wait_timeout_s must be >= 0")
        check(self.sync_wait_s >= 0, "sync_wait_s must be >= 0")
        check(self.max_candidates >= 1, f"max_candidates={self.max_candidates} must be >= 1")
        check(self.max_ongoing_requests >= 1, f"max_ongoing_requests={self.max_ongoing_requests} must be >= 1")
        check(self.max_queued_requests >= 1, f"max_queued_requests={self.max_queued_requests} must be >= 1")
        check(self.max_connections >= 1, f"max_connections={self.max_connections} must be >= 1")
        check(math.isfinite(self.retry_after_s) and self.retry_after_s >= 1,
              f"retry_after_s={self.retry_after_s} must be a finite number >= 1 (Retry-After is whole seconds)")
        check(math.isfinite(self.latency_target_s) and self.latency_target_s >= 0,
              f"latency_target_s={self.latency_target_s} must be a finite number >= 0 (0: fixed in-flight limits)")
        check(self.max_body_bytes is None or self.max_body_bytes >= 1024,
              f"max_body_bytes={self.max_body_bytes} must be >= 1024")
        for name in ("header_timeout_s", "keep_alive_timeout_s"):
            value = getattr(self, name)
            check(math.isfinite(value) and value > 0, f"{name}={value} must be a finite number > 0")
        check(self.replica_num_cpus >= 0, "replica_num_cpus must be >= 0")
        check(math.isfinite(self.join_window_s) and self.join_window_s > 0,
              f"join_window_s={self.join_window_s} must be a finite number > 0")
        check(self.default_reward is None or math.isfinite(self.default_reward),
              f"default_reward={self.default_reward} must be finite (or None to drop)")
        check(self.update_interval_s is None or self.update_interval_s >= 0, "update_interval_s must be >= 0")
        check(self.snapshot_interval_s > 0, "snapshot_interval_s must be > 0")
        check(math.isfinite(self.metrics_interval_s) and self.metrics_interval_s >= 1,
              f"metrics_interval_s={self.metrics_interval_s} must be a finite number >= 1")
        check(self.keep_snapshots >= 1, "keep_snapshots must be >= 1")
        check(self.closed_retention >= 0, "closed_retention must be >= 0")
        unknown = set(self.model_config) - set(MODEL_KEYS)
        check(not unknown, f"model_config keys {sorted(unknown)} are not among {', '.join(MODEL_KEYS)}")
        exploration = self.model_config.get("exploration")
        check(exploration is None or exploration in EXPLORATIONS,
              f"exploration={exploration!r} must be one of {', '.join(EXPLORATIONS)}")

    # ----------------------------------------------------------------------------------------------

    @property
    def effective_update_interval_s(self) -> float:
        if self.update_interval_s is not None:
            return self.update_interval_s
        return 0.05 if self.learning == "in_process" else 0.1

    @property
    def effective_arm_ids(self) -> list[str] | None:
        """Disjoint: the arm ids (given, else "0".."K-1"); shared: None (candidates carry their features)."""
        if self.shape != "disjoint":
            return None
        return list(self.arm_ids) if self.arm_ids else [str(k) for k in range(self.num_arms)]

    @property
    def effective_max_body_bytes(self) -> int:
        """The configured limit, else room for a rank request with max_candidates candidates (id and arm_dim
        features each) or a full reward batch, and never under 1 MiB."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        number = 32  # bytes of one JSON number, separator included
        rank = 64 * 1024 + self.context_dim * number + self.max_candidates * (300 + self.arm_dim * number)
        return max(rank, 1 << 20)

    @property
    def effective_replica_port(self) -> int:
        return self.replica_port if self.replica_port is not None else self.port + 1

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        names = {item.name for item in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown service settings {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> tuple[ServeConfig, set[str]]:
        """A ServeConfig from flat settings (the CLI's, a config file's, Serve's builder args), and the policy
        fields they give. Model settings may be at the top level (``exploration=...``, winning) or under
        ``model_config``; ``arm_ids`` implies ``num_arms``."""
        data = dict(settings)
        model = {**(data.pop("model_config", None) or {}), **{key: data.pop(key) for key in MODEL_KEYS if key in data}}
        if model:
            data["model_config"] = model
        if data.get("arm_ids") and "num_arms" not in data:
            data["num_arms"] = len(data["arm_ids"])
        return cls.from_dict(data), {name for name in POLICY_FIELDS if name in data}

    @classmethod
    def from_file(cls, path: str | Path) -> ServeConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def policy_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in POLICY_FIELDS}


def reconcile_with_state(config: ServeConfig, stored: dict[str, Any] | None, explicit: set[str]) -> ServeConfig:
    """The config to run with on a state dir holding ``stored`` policy fields (None: a new state dir).

    Policy fields the caller set explicitly (``explicit``) must equal the stored ones; the others are taken from
    the state dir, so ``serve --state-dir DIR`` alone restarts a service as it was.
    """
    if stored is None:
        return config
    data = config.to_dict()
    conflicts = []
    for name in POLICY_FIELDS:
        if name not in stored:
            continue
        if name == "model_config":
            for key, value in data[name].items():
                if key in stored[name] and stored[name][key] != value:
                    conflicts.append(f"{key}: state has {stored[name][key]!r}, asked for {value!r}")
        elif name in explicit and data[name] != stored[name]:
            conflicts.append(f"{name}: state has {stored[name]!r}, asked for {data[name]!r}")
        data[name] = stored[name]
    if conflicts:
        raise ValueError(
            f"the state dir {config.state_dir} belongs to another policy ({'; '.join(conflicts)}); "
            "use a new --state-dir or leave these settings out"
        )
    return ServeConfig.from_dict(data)


def _text_list(value: Any) -> Any:
    """``a,b`` (a builder argument on Serve's command line) or a JSON list."""
    if isinstance(value, str):
        return json.loads(value) if value.lstrip().startswith("[") else _comma_separated(value)
    return value


def _json_text(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _builder_args_model() -> type[pydantic.BaseModel]:
    """Ray Serve's typed builder arguments: every ServeConfig field and model setting, each optional (left out:
    the config's default, or the state dir's on a restart). Serve validates the ``key=value`` strings of
    ``serve run`` (or a RayService's ``args``) into it; an unknown key is refused."""
    hints = typing.get_type_hints(ServeConfig)
    definitions: dict[str, Any] = {}
    for item in fields(ServeConfig):
        kind = hints[item.name]
        if item.name == "arm_ids":
            kind = Annotated[kind, pydantic.BeforeValidator(_text_list)]
        elif item.name == "model_config":  # a name pydantic reserves: the field is model_settings, aliased
            definitions["model_settings"] = (Annotated[dict[str, Any] | None, pydantic.BeforeValidator(_json_text)],
                                             pydantic.Field(None, alias="model_config"))
            continue
        definitions[item.name] = (kind | None, None)
    model_types = {"exploration": str, "seed": int}
    definitions.update({key: (model_types.get(key, float) | None, None) for key in MODEL_KEYS})
    return pydantic.create_model("ServeArgs", __config__=pydantic.ConfigDict(extra="forbid", populate_by_name=True),
                                 **definitions)


ServeArgs = _builder_args_model()


def config_from_args(args: pydantic.BaseModel) -> tuple[ServeConfig, set[str]]:
    """The ServeConfig of Serve's builder arguments, and the policy fields they give."""
    return ServeConfig.from_settings(args.model_dump(exclude_unset=True, by_alias=True))
