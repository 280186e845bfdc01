"""The service's event log as a logged-feedback dataset: all of it (``recbandits logs export STATE_DIR OUT``) or
its most recent decisions in memory (``recent_dataset``, what the promotion gate evaluates on).

One row per logged decision, with the reward the service learned from it: the total of its rewards
(``reward_source`` ``observed``), the default reward it learned when the window expired without one
(``default_on_expiry``), or null when it learned nothing from the decision (no reward and the window dropped it,
still open, or every learning record of it quarantined). So offline training on the export reproduces the
service's statistics (a test checks it). Propensities are the ones the service logged (null for Thompson
sampling, which has none in closed form).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recbandits.logs.dataset import (
    SCHEMA,
    DatasetSpec,
    LoggedDataset,
    table_from_arrays,
    validate_table,
    write_dataset,
)
from recbandits.serve.eventlog import LOG_FILE, scan_log
from recbandits.serve.state import read_service_file


class LearnedRewards:
    """What the service learned from each tracked decision: its learning records (reward rows, default rewards on
    expiry) less the quarantined ones. Rows are fed in log order (``add``); a decision row starts tracking."""

    def __init__(self):
        self.records: dict[str, dict[int, tuple[float, str]]] = {}  # event -> seq of a learning record -> ...

    def add(self, row: dict[str, Any]) -> None:
        kind = row["kind"]
        if kind == "decision":
            self.records[row["event_id"]] = {}
            return
        records = self.records.get(row.get("event_id"))
        if records is None:
            return
        if kind == "reward":
            records[row["seq"]] = (float(row["reward"]), "observed")
        elif kind == "expire" and row["outcome"] == "default":
            records[row["seq"]] = (float(row["reward"]), "default_on_expiry")
        elif kind == "quarantine":  # it comes after the record it marks
            records.pop(int(row["record_seq"]), None)

    def forget(self, event_id: str) -> None:
        self.records.pop(event_id, None)

    def reward(self, event_id: str) -> tuple[float | None, str | None]:
        """(the total learned from the decision, the source of its first learning record), or (None, None)."""
        records = self.records.get(event_id)
        if not records:
            return None, None
        return sum(reward for reward, _ in records.values()), next(iter(records.values()))[1]

    def learned_from(self) -> int:
        return sum(1 for records in self.records.values() if records)


def service_dataset_spec(fields: dict[str, Any], producer: dict[str, Any]) -> DatasetSpec:
    """The dataset spec of a service's decisions (its policy fields); a slate service has none yet."""
    if fields.get("slate_size"):
        raise ValueError(f"this service serves slates of {fields['slate_size']} slots: the logged dataset "
                         "(docs/logged-data.md) holds single-action decisions, so its log cannot be exported or "
                         "evaluated as one; the slates and their feedback are in the event log (events.jsonl)")
    return DatasetSpec(shape=fields["shape"], context_dim=int(fields["context_dim"]),
                       arm_dim=int(fields.get("arm_dim") or 0), arm_ids=fields.get("arm_ids"),
                       interaction=bool(fields.get("interaction")), producer=producer)


def decision_table(chunk: list[dict[str, Any]], fields: dict[str, Any], rewards: LearnedRewards) -> pa.Table:
    """Decision rows of the log as a table of the dataset schema, with what was learned from each."""

    def candidates_of(row) -> list[str]:
        if row.get("candidates") is not None:
            return [str(candidate) for candidate in row["candidates"]]
        excluded = set(row.get("excluded") or ())
        return [arm for arm in fields["arm_ids"] if arm not in excluded]

    learned = [rewards.reward(row["event_id"]) for row in chunk]
    columns = {
        "event_id": np.array([row["event_id"] for row in chunk]),
        "timestamp": np.array([row["ts"] for row in chunk], dtype=np.float64),
        "context": [row["context"] for row in chunk],
        "candidates": [candidates_of(row) for row in chunk],
        "action": np.array([str(row["action"]) for row in chunk]),
        "propensity": [row.get("propensity") for row in chunk],
        "reward": [reward for reward, _ in learned],
        "reward_source": [source for _, source in learned],
        "policy": np.array([f"recbandits-{row.get('exploration', 'linear')}" for row in chunk]),
        "policy_version": np.array([row["policy_version"] for row in chunk], dtype=np.int64),
    }
    if fields["shape"] == "shared":
        columns["candidate_features"] = [row["candidate_features"] for row in chunk]
    return table_from_arrays(columns, "export")


def _service_fields(state_dir: Path) -> dict[str, Any]:
    service = read_service_file(state_dir)
    if service is None:
        raise ValueError(f"{state_dir} is not a service state dir (no service.json)")
    return service["policy"]


def export_log(state_dir: str | Path, out: str | Path, rows_per_file: int = 100_000) -> dict[str, Any]:
    """Write the dataset of ``state_dir``'s event log to ``out``; return a summary."""
    state_dir = Path(state_dir)
    fields = _service_fields(state_dir)
    spec = service_dataset_spec(fields, {"command": "export", "state_dir": str(state_dir.resolve())})
    # Two passes, so memory holds the rewards and one file's decisions, never the whole log: the first finds what
    # was learned from each event (quarantine rows come after the rewards they mark), the second writes.
    log_path = state_dir / LOG_FILE
    rewards = LearnedRewards()
    quarantined = 0
    for row in scan_log(log_path):
        rewards.add(row)
        quarantined += row["kind"] == "quarantine"

    def parts():
        chunk: list[dict[str, Any]] = []
        written = False
        for row in scan_log(log_path):
            if row["kind"] == "decision":
                chunk.append(row)
                if len(chunk) == rows_per_file:
                    yield decision_table(chunk, fields, rewards)
                    chunk, written = [], True
        if chunk or not written:  # a log without decisions is a dataset of no rows, not a missing one
            yield decision_table(chunk, fields, rewards) if chunk else []

    write_dataset(out, spec, parts())
    return {"out": str(out), "decisions": len(rewards.records), "rewarded": rewards.learned_from(),
            "quarantined_records": quarantined}


def recent_dataset(state_dir: str | Path, fields: dict[str, Any], limit: int) -> LoggedDataset:
    """The newest ``limit`` decisions that the service has learned a reward from, in memory, from the log of a
    running service (one pass; it holds at most ``2 * limit`` decisions: the newest, of which the open ones have
    no reward yet). A torn last line, being written, is left alone."""
    state_dir = Path(state_dir)
    rewards = LearnedRewards()
    decisions: OrderedDict[str, dict[str, Any]] = OrderedDict()
    for row in scan_log(state_dir / LOG_FILE, repair=False):
        if row["kind"] == "decision":
            decisions[row["event_id"]] = row
            if len(decisions) > 2 * limit:
                old, _ = decisions.popitem(last=False)
                rewards.forget(old)
        rewards.add(row)
    rewarded = [row for event_id, row in decisions.items() if rewards.reward(event_id)[0] is not None][-limit:]
    spec = service_dataset_spec(fields, {"command": "promote", "state_dir": str(state_dir.resolve())})
    table = decision_table(rewarded, fields, rewards) if rewarded else SCHEMA.empty_table()
    validate_table(table, spec, "the service's recent log", {})
    return LoggedDataset(spec, table.to_pandas(), [state_dir / LOG_FILE])
