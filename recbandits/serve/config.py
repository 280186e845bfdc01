"""The configuration of a recbandits service: one dataclass, validated, stored next to the service's state.

The model-defining part (``POLICY_FIELDS``: feature shape, dimensions, arm ids, the bandit's settings) is
written to ``<state_dir>/service.json`` on the first start; a restart on the same state directory reuses it
and refuses a conflicting one, so a log is never replayed into a policy of another shape. The rest (ports,
join window, learning architecture, cadences) may change between restarts.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from recbandits.algos.options import EXPLORATIONS, MODEL_KEYS

LEARNING_MODES = ("in_process", "learner")
REWARD_RULES = ("first", "sum")
SHAPES = ("disjoint", "shared")

# The fields that define the policy: fixed for the lifetime of a state directory.
POLICY_FIELDS = ("shape", "context_dim", "num_arms", "arm_dim", "arm_ids", "interaction", "model_config")
SERVICE_FILE = "service.json"


@dataclass
class ServeConfig:
    """Everything a service needs; see docs/serve.md for each field."""

    # Where the state lives (event log, policy versions, service.json) and where the service listens.
    state_dir: str = "runs/serve"
    host: str = "127.0.0.1"
    port: int = 8000
    # Fast path (Ray Serve's throughput-optimized mode): each ingress replica also serves HTTP itself on a port
    # of [replica_port, replica_port + num_replicas + 8); None: port + 1.
    fast_path: bool = True
    replica_port: int | None = None
    metrics_port: int | None = None  # Prometheus export of Ray (and Serve) metrics; None: Ray picks one
    # How often Ray's processes export their metrics to the node's agent (local Ray; Ray's default is 10 s). On a
    # small machine each export stalls serving for a moment: see docs/serve.md.
    metrics_interval_s: float = 60.0
    # Local Ray: run Ray's dashboard agent (node stats, the metrics pipeline) at idle CPU priority, so that its
    # bursts of work wait for the cores the replicas leave free instead of delaying requests (docs/serve.md).
    idle_ray_agent: bool = True

    # The starting policy: a checkpoint (recbandits simulate --out DIR, its DIR/checkpoint, or an RLModule
    # checkpoint), or a cold start for this feature spec.
    checkpoint: str | None = None
    shape: str = "disjoint"
    context_dim: int = 20
    num_arms: int = 20  # disjoint: the arms (one model each); shared: unused
    arm_dim: int = 0  # shared: per-arm feature dimension
    arm_ids: list[str] | None = None  # disjoint: ids of the arms (default "0".."K-1")
    interaction: bool = False
    model_config: dict[str, Any] = field(default_factory=dict)
    user_table: str | None = None  # .npz (ids, features) or .csv (user_id, f0, f1, ...) for user_id contexts
    item_titles: str | None = None  # .json {id: title} or .csv (id, title): rankings carry the known items' titles

    # Serving.
    learning: str = "in_process"
    num_replicas: int = 1
    max_batch_size: int = 64
    batch_wait_timeout_s: float = 0.002
    sync_wait_s: float = 0.005  # learner mode: a replica's decisions and rewards go to the learner in one call per wait
    max_candidates: int = 1000
    replica_num_cpus: float = 0.0

    # Admission control and HTTP limits (docs/serve.md, "Limits"). A replica works on at most
    # max_ongoing_requests at once and queues at most max_queued_requests more; a request beyond that gets 503
    # with Retry-After at once (serve/limits.py, then Ray Serve), so that the accepted ones keep their latency.
    max_ongoing_requests: int = 96
    max_queued_requests: int = 32
    retry_after_s: float = 1.0
    # Under sustained overload the in-flight limits shrink to keep served requests within this (0: fixed limits).
    latency_target_s: float = 0.05
    max_connections: int = 1024  # per HTTP server; more get 503 before anything is parsed
    max_body_bytes: int | None = None  # None: sized for max_candidates candidates with arm_dim features
    header_timeout_s: float = 10.0  # a connection must complete its request headers within this
    keep_alive_timeout_s: float = 5.0  # idle keep-alive connections are closed after this
    admin_token_file: str | None = None  # None: <state_dir>/admin.token, created on the first start

    # Joining rewards with decisions.
    join_window_s: float = 60.0
    default_reward: float | None = 0.0  # None: an event without reward in the window is dropped
    reward_rule: str = "first"

    # Learning, versions and durability.
    update_interval_s: float | None = None  # None: 0.05 s in-process (checked before each scoring batch), 0.1 s learner
    snapshot_interval_s: float = 10.0
    keep_snapshots: int = 20
    closed_retention: int = 200_000  # closed event ids remembered (409 instead of 404 for late rewards)
    fsync: bool = True

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
