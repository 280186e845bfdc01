"""The service's event log as a logged-feedback dataset (``recbandits logs export STATE_DIR OUT``).

One row per logged decision, with the reward the service learned from it: the total of its rewards
(``reward_source`` ``observed``), the default reward it learned when the window expired without one
(``default_on_expiry``), or null when it learned nothing from the decision (no reward and the window dropped it,
still open, or every learning record of it quarantined). So offline training on the export reproduces the
service's statistics (a test checks it). Propensities are the ones the service logged (null for Thompson
sampling, which has none in closed form).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recbandits.logs.dataset import DatasetSpec, table_from_arrays, write_dataset
from recbandits.serve.eventlog import LOG_FILE, scan_log
from recbandits.serve.state import read_service_file


def export_log(state_dir: str | Path, out: str | Path, rows_per_file: int = 100_000) -> dict[str, Any]:
    """Write the dataset of ``state_dir``'s event log to ``out``; return a summary."""
    state_dir = Path(state_dir)
    service = read_service_file(state_dir)
    if service is None:
        raise ValueError(f"{state_dir} is not a service state dir (no service.json)")
    fields = service["policy"]
    shared = fields["shape"] == "shared"
    spec = DatasetSpec(shape=fields["shape"], context_dim=int(fields["context_dim"]),
                       arm_dim=int(fields.get("arm_dim") or 0), arm_ids=fields.get("arm_ids"),
                       interaction=bool(fields.get("interaction")),
                       producer={"command": "export", "state_dir": str(state_dir.resolve())})
    # Two passes, so memory holds the rewards and one file's decisions, never the whole log: the first finds what
    # was learned from each event (quarantine rows come after the rewards they mark), the second writes.
    log_path = state_dir / LOG_FILE
    decided: set[str] = set()
    learned: dict[int, tuple[str, float, str]] = {}  # seq of a learning record -> (event, reward, source)
    quarantined: set[int] = set()
    for row in scan_log(log_path):
        kind = row["kind"]
        if kind == "decision":
            decided.add(row["event_id"])
        elif kind == "reward" and row["event_id"] in decided:
            learned[row["seq"]] = (row["event_id"], float(row["reward"]), "observed")
        elif kind == "expire" and row["event_id"] in decided and row["outcome"] == "default":
            learned[row["seq"]] = (row["event_id"], float(row["reward"]), "default_on_expiry")
        elif kind == "quarantine":
            quarantined.add(int(row["record_seq"]))
    rewards: dict[str, float] = {}
    sources: dict[str, str] = {}
    for seq, (event_id, reward, source) in learned.items():
        if seq not in quarantined:
            rewards[event_id] = rewards.get(event_id, 0.0) + reward
            sources.setdefault(event_id, source)
    del learned

    def candidates_of(row) -> list[str]:
        if row.get("candidates") is not None:
            return [str(candidate) for candidate in row["candidates"]]
        excluded = set(row.get("excluded") or ())
        return [arm for arm in fields["arm_ids"] if arm not in excluded]

    def table(chunk: list[dict[str, Any]]):
        columns = {
            "event_id": np.array([row["event_id"] for row in chunk]),
            "timestamp": np.array([row["ts"] for row in chunk], dtype=np.float64),
            "context": [row["context"] for row in chunk],
            "candidates": [candidates_of(row) for row in chunk],
            "action": np.array([str(row["action"]) for row in chunk]),
            "propensity": [row.get("propensity") for row in chunk],
            "reward": [rewards.get(row["event_id"]) for row in chunk],
            "reward_source": [sources.get(row["event_id"]) for row in chunk],
            "policy": np.array([f"recbandits-{row.get('exploration', 'linear')}" for row in chunk]),
            "policy_version": np.array([row["policy_version"] for row in chunk], dtype=np.int64),
        }
        if shared:
            columns["candidate_features"] = [row["candidate_features"] for row in chunk]
        return table_from_arrays(columns, "export")

    def parts():
        chunk: list[dict[str, Any]] = []
        written = False
        for row in scan_log(log_path):
            if row["kind"] == "decision":
                chunk.append(row)
                if len(chunk) == rows_per_file:
                    yield table(chunk)
                    chunk, written = [], True
        if chunk or not written:  # a log without decisions is a dataset of no rows, not a missing one
            yield table(chunk) if chunk else []

    write_dataset(out, spec, parts())
    return {"out": str(out), "decisions": len(decided), "rewarded": len(rewards),
            "quarantined_records": len(quarantined)}
