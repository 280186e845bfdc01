"""The ``Learner`` deployment (``learning=learner``): one BanditCore that logs and learns for every replica.

The ingress replicas (``recbandits.serve.app.Recommender``) send it their decisions and rewards (``sync``),
wait for its versions (``wait_for_version``) and call its admin methods through their deployment handle.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any

from ray import serve

from recbandits.serve.config import ServeConfig
from recbandits.serve.core import BanditCore
from recbandits.serve.schemas import Rejection


def reward_item(request) -> tuple:
    """A reward request as ``BanditCore.record_reward``'s arguments (what a replica sends the learner)."""
    return request.event_id, request.reward, request.reward_id, request.clicks, request.slot_rewards


async def joined(core: BanditCore, *item) -> dict[str, Any]:
    """``record_reward(*item)``; a Rejection as a dict."""
    try:
        return await core.record_reward(*item)
    except Rejection as rejection:
        return {"rejection": rejection.to_dict()}


def single_threaded_math() -> None:
    """Posterior updates are tiny (K d x d matrices): torch's thread pool only adds spinning and contention."""
    import torch

    torch.set_num_threads(1)


def raise_if_rejected(result: Any) -> Any:
    if isinstance(result, dict) and "rejection" in result:
        raise Rejection.from_dict(result["rejection"])
    return result


def _rejection_as_dict(method):
    """A Learner method whose Rejection reaches the replica as ``{"rejection": ...}`` (``raise_if_rejected``)."""
    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def call(*args, **kwargs):
            try:
                return await method(*args, **kwargs)
            except Rejection as rejection:
                return {"rejection": rejection.to_dict()}
    else:
        @functools.wraps(method)
        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Rejection as rejection:
                return {"rejection": rejection.to_dict()}
    return call


@serve.deployment(name="Learner", num_replicas=1, max_ongoing_requests=100_000, health_check_period_s=5.0,
                  graceful_shutdown_timeout_s=10.0)
class Learner:
    """``learning=learner``: the BanditCore; learns from the joined events and publishes versions."""

    async def __init__(self, config: dict[str, Any]):
        single_threaded_math()
        self.core = BanditCore(ServeConfig.from_dict(config), name="learner")
        self.core.start()

    async def sync(self, items: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        """Decisions (logged first) and rewards (joined) from a replica; one result per item, in order."""
        results: list[dict[str, Any]] = [{} for _ in items]
        decisions = [index for index, (kind, _) in enumerate(items) if kind == "decision"]
        if decisions:
            logged = await self.core.log_decisions([items[index][1] for index in decisions])
            for index, result in zip(decisions, logged, strict=True):
                results[index] = result

        rewards = [index for index, (kind, _) in enumerate(items) if kind == "reward"]
        answers = await asyncio.gather(*(joined(self.core, *items[index][1]) for index in rewards))
        for index, result in zip(rewards, answers, strict=True):
            results[index] = result
        return results

    async def wait_for_version(self, known: int, timeout_s: float) -> dict[str, Any] | None:
        return await self.core.wait_for_version(known, timeout_s)

    def published(self) -> dict[str, Any]:
        return self.core.published()

    # The admin API's calls, one handle method each (a Rejection travels as a dict: ``raise_if_rejected``).
    @_rejection_as_dict
    def info(self) -> dict[str, Any]:
        return self.core.info()

    @_rejection_as_dict
    def list_versions(self, limit: int) -> list[dict[str, Any]]:
        return self.core.list_versions(limit)

    @_rejection_as_dict
    def version_info(self, version: int) -> dict[str, Any]:
        return self.core.version_info(version)

    @_rejection_as_dict
    async def version_state(self, version: int) -> dict[str, Any]:
        return await self.core.version_state(version)

    @_rejection_as_dict
    async def rollback(self, version: int) -> dict[str, Any]:
        return await self.core.rollback(version)

    @_rejection_as_dict
    async def promote(self, checkpoint: str, estimator: str, window: int, force: bool, samples: int) -> dict[str, Any]:
        return await self.core.promote(checkpoint, estimator, window, force, samples)

    @_rejection_as_dict
    def list_promotions(self, limit: int) -> list[dict[str, Any]]:
        return self.core.list_promotions(limit)

    def learning_problem(self) -> str | None:
        return self.core.learning_problem()

    def log_problem(self) -> str | None:
        return self.core.log_problem()

    def check_health(self) -> None:
        if not self.core.healthy():
            raise RuntimeError(self.core.log_problem())

    async def __del__(self):
        await self.core.close()
