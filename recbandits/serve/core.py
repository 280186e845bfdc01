"""The authority of a service: event log, reward joins, online learning, policy versions, restart.

One ``BanditCore`` owns a state directory (it holds ``<state_dir>/lock`` while alive). It lives in the serving
replica with ``learning=in_process`` and in the learner deployment with ``learning=learner``.

Every event is a row of the log (``eventlog.py``) with a sequence number ``seq``:

* ``decision``: an event opens; its reward may arrive until ``ts + join_window_s``.
* ``reward``: a reward joined to an open event. Rule ``first``: the first reward closes the event and later ones
  get 409. Rule ``sum``: rewards add up until the window ends. Each accepted reward is a *learning record*.
* ``expire``: the window ended. Outcome ``default`` (no reward came: ``default_reward`` is learned, a learning
  record), ``dropped`` (no reward, ``default_reward`` None: nothing learned) or ``rewarded`` (rule ``sum``).
* ``version``: a new policy version: ``update`` (learning records absorbed up to ``watermark``), ``rollback``
  (the statistics of an older version, ``source``), ``promote`` (a checkpoint's statistics, ``source``, that
  passed the promotion gate), ``restore`` (after a restart), ``initial``.
* ``promotion``: the promotion gate's decision on a checkpoint, promoted or refused, with its evaluation
  (``promotion.py``).
* ``quarantine``: the learning record at ``record_seq`` was not learned (``reason``: not finite, or too large for
  float64 statistics; ``LinearCandidatePolicy.absorb``). The test reads the record alone, so every replay skips it too;
  later records are learned as usual.

Versions, rollback, promotion and snapshots are ``versions.PolicyVersions`` (the lineage rules are there). A
restart loads the newest snapshot whose version row is in the log and replays the learning records after its
watermark; the open events (decided, not yet closed) are restored with their deadlines. Nothing acknowledged
is lost (it was fsynced before the 2xx) and nothing is counted twice (a record is either at or below a
snapshot's watermark, hence in it, or above, hence replayed).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import OrderedDict
from typing import Any

from recbandits.algos.candidates import LearningRecord, LinearCandidatePolicy
from recbandits.serve.config import ServeConfig
from recbandits.serve.eventlog import LOG_FILE, EventLog
from recbandits.serve.replay import (
    COUNTERS,
    ClosedEvent,
    ClosedEvents,
    OpenEvent,
    expiry_records,
    open_event,
    replay_log,
    reward_result,
    slate_records,
)
from recbandits.serve.schemas import Rejection
from recbandits.serve.state import StateLock, prepare_state_dir, read_service_file
from recbandits.serve.store import SnapshotStore, read_npz
from recbandits.serve.versions import LINEAGE_STARTS, MAX_VERSIONS_IN_MEMORY, PolicyVersions

logger = logging.getLogger("recbandits.serve")

RECENT_QUARANTINED = 100  # quarantined records listed in GET /v1/policy (all are in the log)
LEARNING_STUCK_S = 30.0  # a learning record waiting longer than this turns /healthz degraded


# --------------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# The core
# --------------------------------------------------------------------------------------------------


def reward_feedback(event: OpenEvent, event_id: str, reward: float | None, clicks: list[int] | None,
                    slot_rewards: list[float] | None) -> tuple[float, list[LearningRecord], dict[str, Any]]:
    """(the reward it adds, its learning records with seq 0 until durable, its fields of the reward row) of one
    feedback for an open event; a Rejection naming the field when it does not fit the decision.

    A single action takes ``reward``; a slate takes ``clicks`` (distinct positions inside the slate) or
    ``slot_rewards`` (one per slot), learned slot by slot (``replay.slate_records``).
    """
    if not event.slots:
        if clicks is not None or slot_rewards is not None:
            raise Rejection(422, "clicks" if clicks is not None else "slot_rewards", f"event {event_id!r} is not a "
                            "slate (its policy chose one action): send reward", "not_a_slate")
        if reward is None:
            raise Rejection(422, "reward", "required (or clicks / slot_rewards for a slate)", "missing")
        return reward, [LearningRecord(0, event.model, event.features, reward, full=event.count == 0,
                                       previous=event.total, event_id=event_id)], {}
    if reward is not None:
        raise Rejection(422, "reward", f"event {event_id!r} is a slate of {event.slots} slots: send clicks (the "
                        "clicked positions) or slot_rewards (one per slot) instead", "slate_feedback")
    if slot_rewards is not None:
        if len(slot_rewards) != event.slots:
            raise Rejection(422, "slot_rewards", f"expected {event.slots} values (one per slot of the slate), got "
                            f"{len(slot_rewards)}", "wrong_dimension")
        return float(sum(slot_rewards)), slate_records(0, event, event_id, None, slot_rewards), {
            "slot_rewards": slot_rewards}
    if clicks is None:
        raise Rejection(422, "clicks", f"required for the slate of event {event_id!r}: the clicked positions "
                        "([] for none), or slot_rewards", "missing")
    seen: set[int] = set()
    for index, position in enumerate(clicks):
        if not 0 <= position < event.slots:
            raise Rejection(422, f"clicks[{index}]", f"position {position} is outside the slate of {event.slots} "
                            f"slots (0..{event.slots - 1})", "outside_slate")
        if position in seen:
            raise Rejection(422, f"clicks[{index}]", f"position {position} is given twice", "duplicate")
        seen.add(position)
    return float(len(clicks)), slate_records(0, event, event_id, clicks), {"clicks": clicks}


class BanditCore(PolicyVersions):
    """Event log + joins + learning + versions of one state dir (see the module docstring)."""

    def __init__(self, config: ServeConfig, name: str = "core"):
        self.config = config
        self.name = name
        self.state_dir = config.state_path
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = StateLock(self.state_dir / "lock")
        service = read_service_file(self.state_dir)
        if service is None:
            config = prepare_state_dir(config)
            service = read_service_file(self.state_dir)
        self.fields: dict[str, Any] = service["policy"]
        self.origin = service.get("origin")
        self.window = float(config.join_window_s)
        self.snapshots = SnapshotStore(self.state_dir, config.keep_snapshots)
        self.open: dict[str, OpenEvent] = {}
        self._deadlines: list[tuple[float, str]] = []
        self.closed = ClosedEvents(config.closed_retention)
        self._reserved: set[str] = set()
        self.queue: list[LearningRecord] = []
        self.versions: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.protected: set[int] = set()  # snapshots never pruned: rollbacks (their lineage starts there)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.quarantined: list[dict[str, Any]] = []  # the newest RECENT_QUARANTINED quarantine rows
        self._queued_since: float | None = None  # monotonic time the oldest queued learning record was queued
        self._learning_failure: str | None = None
        self._last_learn = 0.0
        self._learning_paused = False
        self._changing: str | None = None  # the admin change in progress: "rollback" or "promotion"
        self.promotions: list[dict[str, Any]] = []  # every promotion row, oldest first
        self._version_changed: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._snapshot_running = False
        self.started_at = time.time()
        self.restore_info: dict[str, Any] = {}
        self._open_state()

    # ----------------------------------------------------------------------------------------------
    # Opening: first start or restart
    # ----------------------------------------------------------------------------------------------

    def _open_state(self) -> None:
        log_path = self.state_dir / LOG_FILE
        started = time.perf_counter()
        replay = replay_log(log_path, self.fields, self.window, after=None)
        logged = {row["policy_version"]: row for row in replay.versions}
        for row in replay.versions[-MAX_VERSIONS_IN_MEMORY:]:
            self.versions[row["policy_version"]] = row
            if row.get("version_kind") in LINEAGE_STARTS:
                self.protected.add(row["policy_version"])
        self.promotions = replay.promotions
        self.log = EventLog(log_path, next_seq=replay.last_seq + 1, fsync=self.config.fsync)
        if not logged:
            # First start (or a crash before the first version row was durable).
            state, _ = read_npz(self.snapshots.initial_path)
            self.policy = LinearCandidatePolicy(self.fields, state)
            self._install_version({"kind": "initial", "parent": None, "watermark": 0, "learned": 0,
                                   "origin": self.origin}, write=True)
            self.snapshots.save(self.version_id, self.policy.get_state(), self.version)
            self.restore_info = {"restored": False}
            return

        # Restart: the newest snapshot whose version row is durable, then the learning records after it.
        usable = [version for version in self.snapshots.versions() if version in logged]
        if usable:
            base = max(usable)
            state, _ = self.snapshots.load(base)
            watermark = int(logged[base]["watermark"])
        else:
            base, watermark = None, 0
            state, _ = read_npz(self.snapshots.initial_path)
        tail = replay_log(log_path, self.fields, self.window, after=watermark, policy_state=state)
        self.policy = LinearCandidatePolicy(self.fields, state)
        marked = {int(row["record_seq"]) for row in tail.quarantine_rows}
        self.counters.update(tail.counters)
        self.quarantined = tail.quarantine_rows[-RECENT_QUARANTINED:]
        quarantined = self.policy.absorb(tail.records)
        # A record quarantined live whose mark a crash lost is marked now (the same test quarantines it again);
        # the scan counted it as a learning record.
        unmarked = [item for item in quarantined if item[0].seq not in marked]
        self._quarantine(unmarked, write=True)
        self.counters["learning_records"] -= len(unmarked)
        self.open = tail.open
        self._deadlines = [(event.deadline, event_id) for event_id, event in self.open.items()]
        heapq.heapify(self._deadlines)
        self.closed = tail.closed
        self.closed.retention = self.config.closed_retention
        self.closed.trim()
        new_watermark = tail.records[-1].seq if tail.records else watermark
        self._install_version({"kind": "restore", "parent": max(logged), "watermark": new_watermark,
                               "learned": len(tail.records) - len(quarantined), "base": base}, write=True)
        self.snapshots.save(self.version_id, self.policy.get_state(), self.version)
        self.restore_info = {
            "restored": True, "snapshot_version": base, "snapshot_watermark": watermark,
            "replayed_records": len(tail.records), "log_rows": tail.rows, "open_events": len(self.open),
            "seconds": round(time.perf_counter() - started, 3),
        }
        logger.info("restored %s", self.restore_info)

    # ----------------------------------------------------------------------------------------------
    # Versions
    # ----------------------------------------------------------------------------------------------

    def learn(self, force: bool = False) -> bool:
        """Absorb the durable learning records into a new version (at most once per update interval)."""
        if not self.queue or self._learning_paused:
            return False
        now = time.monotonic()
        if not force and now - self._last_learn < self.config.effective_update_interval_s:
            return False
        records, self.queue = self.queue, []
        self._last_learn = now
        try:
            quarantined = self.policy.absorb(records)
        except Exception as error:  # noqa: BLE001 - a bug: keep the records, keep serving, report it
            self.queue = records + self.queue
            message = f"{type(error).__name__}: {error}"
            if message != self._learning_failure:
                logger.exception("learning failed; the records are kept and retried")
            self._learning_failure = message
            return False
        self._learning_failure = None
        self._queued_since = None  # the queue is empty: records only arrive in durable callbacks, not during this
        self._quarantine(quarantined)
        self.counters["learning_records"] += len(records) - len(quarantined)
        self._install_version({"kind": "update", "parent": self.version_id, "watermark": records[-1].seq,
                               "learned": len(records) - len(quarantined)})
        return True

    def _quarantine(self, items: list[tuple[LearningRecord, str]], write: bool = False) -> None:
        """Mark records that were not learned: a ``quarantine`` row each, a counter, a warning naming them."""
        if not items:
            return
        rows = [{"kind": "quarantine", "record_seq": record.seq, "event_id": record.event_id, "model": record.model,
                 "reason": reason} for record, reason in items]
        if write:
            self.log.write_now(rows)
        else:
            self.log.submit(rows)
        self.counters["quarantined"] += len(rows)
        self.quarantined = (self.quarantined + rows)[-RECENT_QUARANTINED:]
        for row in rows:
            logger.warning("quarantined the learning record at seq %s (event %s): %s", row["record_seq"],
                           row["event_id"], row["reason"])

    def _enqueue(self, record: LearningRecord) -> None:
        if not self.queue:
            self._queued_since = time.monotonic()
        self.queue.append(record)

    def learning_problem(self) -> str | None:
        """Why learning is failing or stuck, or None."""
        if self._learning_failure is not None:
            return f"learning failed: {self._learning_failure}"
        if self.queue and self._queued_since is not None:
            waited = time.monotonic() - self._queued_since
            if waited > max(LEARNING_STUCK_S, 10 * self.config.effective_update_interval_s):
                return f"learning stuck: {len(self.queue)} learning records waiting for {waited:.0f} s"
        return None

    # ----------------------------------------------------------------------------------------------
    # Decisions and rewards
    # ----------------------------------------------------------------------------------------------

    def _open_event(self, row: dict[str, Any]) -> None:
        event = open_event(row, self.policy, self.window)
        self.open[row["event_id"]] = event
        heapq.heappush(self._deadlines, (event.deadline, row["event_id"]))

    async def log_decisions(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Log decisions durably; per row ``{"seq", "ts"}``, or ``{"rejection": ...}`` (event id in use)."""
        results: list[dict[str, Any]] = [{} for _ in rows]
        accepted = []
        for index, row in enumerate(rows):
            event_id = row["event_id"]
            if event_id in self.open or event_id in self.closed or event_id in self._reserved:
                rejection = Rejection(409, "event_id", f"event_id {event_id!r} is already in use", "duplicate_event_id")
                results[index] = {"rejection": rejection.to_dict()}
                continue
            self._reserved.add(event_id)
            accepted.append(index)
        if not accepted:
            return results
        logged = [rows[index] for index in accepted]

        def opened() -> None:
            for row in logged:
                self._open_event(row)
            self.counters["decisions"] += len(logged)

        try:
            await self.log.append(logged, on_durable=opened)
        finally:
            for row in logged:
                self._reserved.discard(row["event_id"])
        for index in accepted:
            results[index] = {"seq": rows[index]["seq"], "ts": rows[index]["ts"]}
        return results

    def _closed_rejection(self, event_id: str, closed: ClosedEvent) -> Rejection:
        if closed.reason == "rewarded":
            return Rejection(409, "event_id", f"event {event_id!r} already has its reward (reward_rule=first)",
                             "duplicate_reward")
        what = {"default": f"the default reward {self.config.default_reward} was applied",
                "dropped": "it was dropped without reward",
                "rewarded": "its rewards were summed"}.get(closed.outcome, "")
        return Rejection(409, "event_id", f"event {event_id!r} expired: its {self.window:g} s join window has "
                         f"closed ({what})", "expired")

    async def record_reward(self, event_id: str, reward: float | None, reward_id: str | None = None,
                            clicks: list[int] | None = None,
                            slot_rewards: list[float] | None = None) -> dict[str, Any]:
        """Join a reward with its decision (see the module docstring for the rules); raise a Rejection if refused.

        A slate's feedback is ``clicks`` (the clicked positions, 0 the top slot) or ``slot_rewards`` (one per
        slot) instead of ``reward``; it is complete, so it closes the event under either reward rule.
        """
        now = time.time()
        event = self.open.get(event_id)
        if event is not None and now > event.deadline:
            self.expire_due(now)
            event = None
        if event is None:
            closed = self.closed.get(event_id)
            if closed is not None:
                if reward_id is not None and reward_id in closed.reward_ids:
                    return {**closed.reward_ids[reward_id], "status": "duplicate"}
                raise self._closed_rejection(event_id, closed)
            raise Rejection(404, "event_id", f"unknown event_id {event_id!r} (never decided, or forgotten)",
                            "unknown_event")
        if reward_id is not None and reward_id in event.reward_ids:
            return {**event.reward_ids[reward_id], "status": "duplicate"}
        reward, records, feedback = reward_feedback(event, event_id, reward, clicks, slot_rewards)
        first = event.count == 0
        previous = event.total
        event.total = previous + reward
        event.count += 1
        closes = self.config.reward_rule == "first" or bool(event.slots)
        row = {"kind": "reward", "event_id": event_id, "reward": reward, "total": event.total,
               "previous_total": previous, "reward_count": event.count, "first": first, "closes": closes,
               "reward_id": reward_id, **feedback}
        result_holder = reward_result(row)  # filled with seq below
        if reward_id is not None:
            event.reward_ids[reward_id] = result_holder
        if closes:
            del self.open[event_id]
            self.closed.add(event_id, ClosedEvent("rewarded", None, event.total, now, event.reward_ids))

        def durable() -> None:
            for record in records:
                record.seq = row["seq"]
                self._enqueue(record)
            self.counters["rewards"] += 1

        await self.log.append([row], on_durable=durable)
        result_holder.update(reward_result(row))
        return dict(result_holder)

    def expire_due(self, now: float | None = None) -> int:
        """Close the events whose window has ended (one ``expire`` row each); return how many."""
        now = time.time() if now is None else now
        rows, records = [], []
        default = self.config.default_reward
        while self._deadlines and self._deadlines[0][0] < now:
            deadline, event_id = heapq.heappop(self._deadlines)
            event = self.open.get(event_id)
            if event is None or event.deadline != deadline:
                continue
            del self.open[event_id]
            if event.count > 0:
                outcome, reward = "rewarded", None
            elif default is None:
                outcome, reward = "dropped", None
            else:
                outcome, reward = "default", float(default)
            row = {"kind": "expire", "event_id": event_id, "outcome": outcome, "reward": reward,
                   "total": event.total if event.count else reward}
            rows.append(row)
            if outcome == "default":
                records.append((row, expiry_records(0, event, event_id, reward)))
            self.closed.add(event_id, ClosedEvent("expired", outcome, row["total"], now, event.reward_ids))
            self.counters[f"expired_{outcome}"] += 1
        if rows:
            def durable() -> None:
                for row, learned in records:
                    for record in learned:
                        record.seq = row["seq"]
                        self._enqueue(record)

            self.log.submit(rows, on_durable=durable)
        return len(rows)

    # ----------------------------------------------------------------------------------------------
    # Background work
    # ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sweeper, learning and snapshot loops on the running event loop (idempotent)."""
        if self._tasks:
            return
        self._version_changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sweep_loop()), loop.create_task(self._learn_loop()),
                       loop.create_task(self._snapshot_loop())]

    async def _sweep_loop(self) -> None:
        interval = min(max(self.window / 20, 0.01), 0.25)
        while True:
            try:
                self.expire_due()
            except Exception:  # noqa: BLE001
                logger.exception("expiring events failed")
            await asyncio.sleep(interval)

    async def _learn_loop(self) -> None:
        interval = max(self.config.effective_update_interval_s, 0.02)
        while True:
            await asyncio.sleep(interval)
            try:
                self.learn()
            except Exception:  # noqa: BLE001
                logger.exception("learning failed")

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.snapshot_interval_s)
            try:
                await self.snapshot()
            except Exception:  # noqa: BLE001
                logger.exception("snapshot failed")

    async def wait_for_version(self, known: int, timeout_s: float) -> dict[str, Any] | None:
        """Long poll: the current version and its state as soon as it differs from ``known`` (None on timeout)."""
        if self.version_id == known:
            event = self._version_changed
            try:
                await asyncio.wait_for(event.wait(), timeout_s)
            except TimeoutError:
                return None
        return self.published()

    def published(self) -> dict[str, Any]:
        return {"version": dict(self.version), "state": self.policy.get_state()}

    def healthy(self) -> bool:
        return self.log.failure is None

    def log_problem(self) -> str | None:
        """Why nothing can be acknowledged (every write answers 503 ``log_failed``), or None."""
        return None if self.log.failure is None else f"the event log failed: {self.log.failure}"

    def info(self) -> dict[str, Any]:
        return {
            "policy_version": self.version_id,
            "watermark": self.watermark,
            "version": dict(self.version),
            "origin": self.origin,
            "log_seq": self.log.last_seq,
            "open_events": len(self.open),
            "queued_records": len(self.queue),
            "counters": dict(self.counters),
            "quarantined": list(self.quarantined),
            "learning_problem": self.learning_problem(),
            "restore": self.restore_info,
            "statistics": self.policy.statistics(),
            "log": {"rows_written": self.log.rows_written, "commits": self.log.commits, "path": str(self.log.path)},
        }

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        try:
            self.learn(force=True)
            await self.log.drain()
            if self.log.failure is None:
                version, state, meta = self.version_id, self.policy.get_state(), dict(self.version)
                if not self.snapshots.has(version):
                    self.snapshots.save(version, state, meta)
        finally:
            self.log.close()
            self._lock.release()
