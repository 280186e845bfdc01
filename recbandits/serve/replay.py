"""Reading the event log back: the open and closed events and the learning records a restart (or an old
version's rebuild) needs, and the bookkeeping of events the core keeps in memory (see ``core`` for the rows)."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from recbandits.algos import kernel
from recbandits.algos.candidates import LearningRecord, LinearCandidatePolicy
from recbandits.serve.eventlog import repair_log, scan_log

COUNTERS = ("decisions", "rewards", "expired_default", "expired_dropped", "expired_rewarded", "learning_records",
            "quarantined")


@dataclass(slots=True)
class OpenEvent:
    ts: float
    deadline: float
    model: int
    features: np.ndarray = field(repr=False)  # [D], or a slate's [slots, D]
    total: float = 0.0
    count: int = 0
    reward_ids: dict[str, dict[str, Any]] = field(default_factory=dict)
    slots: int = 0  # a ranking policy's slate: its number of slots (0: one action)


def open_event(row: dict[str, Any], policy: LinearCandidatePolicy, window: float) -> OpenEvent:
    """The open event of a decision row: what its reward (or a slate's per-slot feedback) will teach."""
    context = np.asarray(row["context"], dtype=np.float64)
    slate = row.get("slate")
    if slate is not None:
        features = policy.candidate_features(context, np.asarray(row["candidate_features"], dtype=np.float64)[slate])
        return OpenEvent(row["ts"], row["ts"] + window, int(row["model"]), features, slots=len(slate))
    chosen = row.get("chosen_features")
    features = policy.learning_features(context, None if chosen is None else np.asarray(chosen, dtype=np.float64))
    return OpenEvent(row["ts"], row["ts"] + window, int(row["model"]), features)


def slate_records(seq: int, event: OpenEvent, event_id: str, clicks: list[int] | None = None,
                  slot_rewards: list[float] | None = None, default: float | None = None) -> list[LearningRecord]:
    """A slate's learning records, one per slot its feedback reveals (``kernel.slate_feedback``, as simulation
    learns): ``clicks`` (cascading: the slots down to the first click), ``slot_rewards`` (a score per slot), or
    ``default`` (no feedback in the window: every slot learns the default reward)."""
    if clicks is not None:
        first = torch.tensor([min(clicks) if clicks else -1])
        observed, targets = kernel.slate_feedback(event.slots, clicked_position=first)
    else:  # the default is the score vector of the default reward on every slot
        scores = slot_rewards if slot_rewards is not None else [float(default)] * event.slots
        observed, targets = kernel.slate_feedback(event.slots, slot_rewards=torch.tensor([scores]))
    return [LearningRecord(seq, event.model, event.features[slot], float(targets[0, slot]), event_id=event_id)
            for slot in torch.nonzero(observed[0]).flatten().tolist()]


class ClosedEvent(NamedTuple):
    reason: str  # "rewarded" (rule first) or "expired"
    outcome: str | None  # expire outcome: default, dropped, rewarded
    total: float | None
    closed_at: float
    reward_ids: dict[str, dict[str, Any]]  # reward_id -> its answer, for idempotent retries


class ClosedEvents:
    """Closed events by id, oldest first, at most ``retention`` of them (None: all).

    Kept as plain tuples of numbers and strings (``reward_ids`` only when there are any): CPython's garbage
    collector stops tracking such tuples, so the many events remembered cost its full collections nothing
    (kept as objects, every full collection walked them all, stopping the serving loop longer and longer).
    """

    def __init__(self, retention: int | None = None):
        self.retention = retention
        self._events: OrderedDict[str, tuple] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._events

    def get(self, event_id: str) -> ClosedEvent | None:
        stored = self._events.get(event_id)
        return None if stored is None else ClosedEvent(*stored[:4], stored[4] or {})

    def add(self, event_id: str, event: ClosedEvent) -> None:
        # A dict, even an empty one, keeps its tuple tracked: store None instead of no reward ids.
        self._events[event_id] = (*event[:4], event.reward_ids or None)
        self.trim()

    def trim(self) -> None:
        if self.retention is not None:
            while len(self._events) > self.retention:
                self._events.popitem(last=False)


@dataclass
class Replay:
    """What a scan of the log rebuilds."""

    records: list[LearningRecord] = field(default_factory=list)
    open: dict[str, OpenEvent] = field(default_factory=dict)
    closed: ClosedEvents = field(default_factory=ClosedEvents)
    versions: list[dict[str, Any]] = field(default_factory=list)
    promotions: list[dict[str, Any]] = field(default_factory=list)  # with after=None only
    last_seq: int = 0
    rows: int = 0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    quarantine_rows: list[dict[str, Any]] = field(default_factory=list)


def index_log(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, int]:
    """(version rows, promotion rows, last seq, number of rows) of a log, after cutting off a torn last line."""
    repair_log(path)
    markers = {b'"kind":"version"': ("version", []), b'"kind":"promotion"': ("promotion", [])}
    last, count = b"", 0
    if not path.exists():
        return [], [], 0, 0
    with open(path, "rb") as handle:
        for line in handle:
            if len(line) > 1:
                count += 1
                last = line
                for marker, (kind, rows) in markers.items():
                    if marker in line and (row := json.loads(line))["kind"] == kind:
                        rows.append(row)
    (_, versions), (_, promotions) = markers.values()
    return versions, promotions, (json.loads(last)["seq"] if last else 0), count


def replay_log(path: Path, fields: dict[str, Any], window: float, after: int | None, until: int | None = None,
               policy_state: dict[str, np.ndarray] | None = None) -> Replay:
    """Rebuild open/closed events and the learning records with ``after < seq <= until`` from the log
    (events' windows: ``window`` seconds).

    ``after=None``: only version rows are collected (and the last seq).
    """
    replay = Replay()
    if after is None:
        replay.versions, replay.promotions, replay.last_seq, replay.rows = index_log(path)
        return replay
    helper = LinearCandidatePolicy(fields, policy_state)  # the features each decision's reward teaches
    for row in scan_log(path, repair=True):
        seq = row["seq"]
        if until is not None and seq > until:
            break
        replay.last_seq = seq
        replay.rows += 1
        kind = row["kind"]
        counters = replay.counters
        if kind == "decision":
            counters["decisions"] += 1
            replay.open[row["event_id"]] = open_event(row, helper, window)
        elif kind == "reward":
            event = replay.open.get(row["event_id"])
            if event is None:
                continue  # its decision precedes a truncated history: nothing to learn
            counters["rewards"] += 1
            if event.slots:
                records = slate_records(seq, event, row["event_id"], row.get("clicks"), row.get("slot_rewards"))
            else:
                records = [LearningRecord(seq, event.model, event.features, float(row["reward"]),
                                          full=bool(row["first"]), previous=float(row["previous_total"]),
                                          event_id=row["event_id"])]
            counters["learning_records"] += len(records)
            if seq > after:
                replay.records.extend(records)
            event.total, event.count = float(row["total"]), int(row["reward_count"])
            result = reward_result(row)
            if row.get("reward_id") is not None:
                event.reward_ids[row["reward_id"]] = result
            if row.get("closes"):
                del replay.open[row["event_id"]]
                replay.closed.add(row["event_id"], ClosedEvent("rewarded", None, event.total, row["ts"],
                                                               event.reward_ids))
        elif kind == "expire":
            event = replay.open.pop(row["event_id"], None)
            if event is None:
                continue
            counters[f"expired_{row['outcome']}"] += 1
            if row["outcome"] == "default":
                records = expiry_records(seq, event, row["event_id"], float(row["reward"]))
                counters["learning_records"] += len(records)
                if seq > after:
                    replay.records.extend(records)
            replay.closed.add(row["event_id"], ClosedEvent("expired", row["outcome"], row.get("total"), row["ts"],
                                                           event.reward_ids))
        elif kind == "version":
            replay.versions.append(row)
        elif kind == "quarantine":
            counters["quarantined"] += 1
            counters["learning_records"] -= 1
            replay.quarantine_rows.append(row)
    return replay


def expiry_records(seq: int, event: OpenEvent, event_id: str, default: float) -> list[LearningRecord]:
    """What an event learns when its window ends without a reward: the default reward (every slot of a slate)."""
    if event.slots:
        return slate_records(seq, event, event_id, default=default)
    return [LearningRecord(seq, event.model, event.features, default, event_id=event_id)]


def reward_result(row: dict[str, Any]) -> dict[str, Any]:
    """The answer to a reward, from its log row."""
    return {"event_id": row["event_id"], "status": "joined" if row["first"] else "added",
            "reward_total": row["total"], "reward_count": row["reward_count"], "seq": row.get("seq")}
