"""A service's policy versions: the current one, rollback, the promotion gate's installs, snapshots, lineage.

``PolicyVersions`` is the part of ``BanditCore`` (``core.py``) that makes and finds versions; the core owns the
state it works on: ``versions`` (number -> version row, the newest ``MAX_VERSIONS_IN_MEMORY``), ``version``
(the current row), ``policy``, ``log``, ``snapshots``, ``protected`` (snapshots never pruned) and
``promotions``.

Rollback and promote versions start a lineage (their statistics are not the log's): their snapshots are never
pruned. Learning records are absorbed in ``seq`` order and only once durable, so a version's statistics are exactly
those of its nearest snapshotted ancestor plus the learning records in ``(ancestor.watermark,
version.watermark]``; ``version_state`` rebuilds any listed version so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from recbandits.algos.candidates import LinearCandidatePolicy
from recbandits.serve.eventlog import LOG_FILE
from recbandits.serve.replay import replay_log
from recbandits.serve.schemas import Rejection
from recbandits.serve.store import read_npz

logger = logging.getLogger("recbandits.serve")

MAX_VERSIONS_IN_MEMORY = 20_000  # older versions are in the log (not listed, not rolled back to)
LINEAGE_STARTS = ("initial", "rollback", "promote")  # version kinds whose statistics are their snapshot's alone


class PolicyVersions:
    """Versions of ``BanditCore``'s policy (a mixin: the core holds the state, see the module docstring)."""

    @property
    def version_id(self) -> int:
        return int(self.version["policy_version"])

    @property
    def watermark(self) -> int:
        return int(self.version["watermark"])

    def _install_version(self, meta: dict[str, Any], write: bool = False) -> dict[str, Any]:
        """Make ``meta`` (kind, parent, watermark, ...) the current version and log its row."""
        number = (max(self.versions) if self.versions else 0) + 1
        row = {"kind": "version", "policy_version": number, "version_kind": meta.pop("kind"), **meta,
               "observations": self.policy.observations, "created_at": time.time()}
        row["kind"] = "version"
        if write:
            self.log.write_now([row])
        else:
            self.log.submit([row])
        self.version = row
        self.versions[number] = row
        while len(self.versions) > MAX_VERSIONS_IN_MEMORY:
            self.versions.popitem(last=False)
        if self._version_changed is not None:
            self._version_changed.set()
            self._version_changed = asyncio.Event()
        return row


    def version_info(self, version: int, location: str = "path") -> dict[str, Any]:
        if version not in self.versions:
            raise Rejection(404, "version", f"policy version {version} is unknown (or too old to be listed)",
                            "unknown_version", location)
        meta = dict(self.versions[version])
        meta["snapshot"] = self.snapshots.has(version)
        return meta

    def _state_of(self, version: int) -> dict[str, np.ndarray]:
        """The statistics of a version: its snapshot, or its nearest snapshotted ancestor plus the log."""
        meta = self.version_info(version)
        if version == self.version_id:
            return self.policy.get_state()
        if meta["snapshot"]:
            return self.snapshots.load(version)[0]
        bases = [v for v in self.snapshots.versions() if v < version and v in self.versions]
        later_starts = [v for v, row in self.versions.items() if row.get("version_kind") in LINEAGE_STARTS[1:]
                        and (not bases or v > max(bases)) and v <= version]
        if later_starts:
            raise Rejection(409, "version", f"version {version} cannot be rebuilt (the snapshot of version "
                            f"{max(later_starts)}, where its lineage starts, is gone)", "version_unavailable")
        if bases:
            base = max(bases)
            state, watermark = self.snapshots.load(base)[0], int(self.versions[base]["watermark"])
        else:
            state, watermark = read_npz(self.snapshots.initial_path)[0], 0
        replay = replay_log(self.state_dir / LOG_FILE, self.fields, self.window, after=watermark,
                            until=int(meta["watermark"]))
        policy = LinearCandidatePolicy(self.fields, state)
        policy.absorb([record for record in replay.records if record.seq <= int(meta["watermark"])])
        return policy.get_state()

    async def version_state(self, version: int) -> dict[str, np.ndarray]:
        if version == self.version_id:
            return self.policy.get_state()
        return await asyncio.get_running_loop().run_in_executor(None, self._state_of, version)

    def _begin_change(self, what: str) -> None:
        if self._changing is not None:
            raise Rejection(409, "policy", f"a {self._changing} is in progress; retry when it is done",
                            f"{self._changing}_in_progress")
        self._changing = what

    async def _install_statistics(self, state: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, Any]:
        """A new version (a lineage start: ``meta["kind"]``) with the statistics ``state``; what was learned since
        the current version is learned first and then left behind with it."""
        self.learn(force=True)
        self._learning_paused = True
        try:
            number = max(self.versions) + 1
            meta = {**meta, "parent": self.version_id, "watermark": self.watermark, "learned": 0}
            # The snapshot first: a durable lineage start always has its snapshot.
            snapshot_meta = {"policy_version": number, "version_kind": meta["kind"], "source": meta.get("source"),
                             "watermark": meta["watermark"]}
            await asyncio.get_running_loop().run_in_executor(None, self.snapshots.save, number, state, snapshot_meta)
            self.protected.add(number)
            self.policy.set_state(state)
            row = self._install_version(meta)
            assert row["policy_version"] == number
            await self.log.drain()
        finally:
            self._learning_paused = False
        return dict(row)

    async def rollback(self, version: int) -> dict[str, Any]:
        """A new version with the statistics of ``version``; what was learned since is discarded."""
        self.version_info(version, location="body")
        self._begin_change("rollback")
        try:
            state = await self.version_state(version)
            return await self._install_statistics(state, {"kind": "rollback", "source": version})
        finally:
            self._changing = None

    async def promote(self, checkpoint: str, estimator: str = "dr", window: int = 10_000, force: bool = False,
                      samples: int = 200) -> dict[str, Any]:
        """The promotion gate (``promotion.py``): evaluate the checkpoint on the ``window`` newest rewarded
        decisions against what the serving policy earned on them and serve it as a new version if it is better
        (or ``force``); the decision is logged either way. Its ``promotion`` row is returned."""
        from recbandits.serve.export import recent_dataset
        from recbandits.serve.promotion import candidate_statistics, evaluate_promotion

        if self.fields.get("slate_size"):
            raise Rejection(422, "checkpoint", f"this service serves slates of {self.fields['slate_size']} slots; the "
                            "promotion gate evaluates single-action policies only (no slate estimator yet)",
                            "slates_not_evaluated")
        self._begin_change("promotion")
        loop = asyncio.get_running_loop()
        try:
            try:
                candidate = await loop.run_in_executor(None, candidate_statistics, checkpoint, self.fields)
            except ValueError as error:
                raise Rejection(422, "checkpoint", str(error), "checkpoint_does_not_fit") from None
            except Exception as error:  # noqa: BLE001 - a damaged checkpoint: name it, never a 500
                raise Rejection(422, "checkpoint", f"{checkpoint} cannot be loaded ({type(error).__name__}: {error})",
                                "checkpoint_unreadable") from None
            await self.log.drain()  # the newest decisions and rewards are in the file
            serving_version = self.version_id
            dataset = await loop.run_in_executor(None, recent_dataset, self.state_dir, self.fields, window)
            evaluation = await loop.run_in_executor(
                None, lambda: evaluate_promotion(dataset, self.fields, candidate, serving_version, estimator,
                                                 samples, int(self.fields["model_config"].get("seed", 0))))
            promoted = bool(evaluation["promote"] or force)
            row = {"kind": "promotion", "checkpoint": checkpoint, "estimator": estimator, "window": window,
                   "force": force, "promoted": promoted, "serving_version": serving_version,
                   "policy_version": None, "message": evaluation.pop("message"), "evaluation": evaluation,
                   "created_at": time.time()}
            if promoted:
                version = await self._install_statistics(candidate, {
                    "kind": "promote", "source": checkpoint, "forced": force and not evaluation["promote"],
                    "evaluation": evaluation})
                row["policy_version"] = version["policy_version"]
            await self.log.append([row])
            self.promotions.append(row)
            logger.info("promotion of %s: %s (%s)", checkpoint, "promoted as version "
                           f"{row['policy_version']}" if promoted else "refused", row["message"])
            return dict(row)
        finally:
            self._changing = None

    async def snapshot(self) -> int | None:
        """Snapshot the current version (if not yet) and prune old snapshots."""
        if self._snapshot_running or self.snapshots.has(self.version_id):
            return None
        self._snapshot_running = True
        try:
            await self.log.drain()  # the version row must be durable before its snapshot counts
            version, state, meta = self.version_id, self.policy.get_state(), dict(self.version)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.snapshots.save, version, state, meta)
            await loop.run_in_executor(None, self.snapshots.prune, self.protected | {version})
            return version
        finally:
            self._snapshot_running = False


    def list_promotions(self, limit: int = 50) -> list[dict[str, Any]]:
        return [dict(row) for row in self.promotions[-limit:][::-1]]

    def list_versions(self, limit: int = 50) -> list[dict[str, Any]]:
        snapshots = set(self.snapshots.versions())
        rows = list(self.versions.values())[-limit:][::-1]
        return [{**row, "snapshot": row["policy_version"] in snapshots} for row in rows]
