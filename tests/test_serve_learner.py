"""The separate-learner architecture over real HTTP: two ingress replicas, one Learner deployment.

Rewards sent to one replica reach the learner, which publishes new versions that every replica swaps in
without restarting; the ``sum`` reward rule and dropping unrewarded events are exercised on this service.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from recbandits.loadgen.service_process import ServiceProcess, free_port_block, wait_for_log_rows
from recbandits.loadgen.service_process import http_json as request
from recbandits.serve.eventlog import read_event_log

pytestmark = pytest.mark.slow  # replicas behind a learner, restarts: `make test-quick` leaves them out

WINDOW_S = 3.0


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_learner")
    port = free_port_block(12)
    args = [
        "--state-dir", root / "state", "--port", port, "--replica-port", port + 1,
        "--context-dim", 3, "--num-arms", 3, "--exploration", "greedy",
        "--learning", "learner", "--num-replicas", 2, "--update-interval", 0.05,
        "--join-window", WINDOW_S, "--drop-unrewarded", "--reward-rule", "sum",
    ]  # fmt: skip
    process = ServiceProcess(args, log_path=root / "service.log")
    ready = process.start()
    yield {"url": ready["url"], "replicas": ready["replica_urls"], "state_dir": Path(ready["state_dir"]),
           "token": process.admin_token, "process": process}
    process.stop()


def rank(base, body):
    status, answer = request("POST", f"{base}/v1/rank", body)
    assert status == 200, answer
    return answer


def test_two_replicas_behind_one_learner(service):
    assert len(service["replicas"]) == 2
    replicas = set()
    for base in service["replicas"]:
        status, health = request("GET", f"{base}/healthz")
        assert status == 200 and health["learning"] == "learner"
        replicas.add(health["replica"])
    assert len(replicas) == 2
    status, info = request("GET", f"{service['url']}/v1/policy", token=service["token"])
    assert status == 200 and info["learning"] == "learner"


def test_learner_publishes_to_every_replica(service):
    first, second = service["replicas"]
    context = [0.0, 1.0, 0.0]
    start = rank(second, {"context": context})
    assert {item["score"] for item in start["ranking"]} == {0.0}
    # Feedback through the first replica only: arm "2" is good for this context.
    last_seq = 0
    for _ in range(3):
        event = rank(first, {"context": context, "candidates": ["2"]})["event_id"]
        status, answer = request("POST", f"{first}/v1/reward", {"event_id": event, "reward": 1.0})
        assert status == 200 and answer["status"] == "joined"
        last_seq = answer["seq"]
    # Both replicas switch to "2" once the learner's next version reaches them (no restart).
    for base in (first, second):
        deadline = time.monotonic() + 10
        while True:
            answer = rank(base, {"context": context})
            if answer["policy_watermark"] >= last_seq or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer["policy_watermark"] >= last_seq and answer["action"] == "2", answer
        assert answer["policy_version"] > start["policy_version"]
        assert all(rank(base, {"context": context})["action"] == "2" for _ in range(3))
    # A rollback on the learner reaches every replica too.
    status, rolled = request("POST", f"{second}/v1/policy/rollback", {"version": start["policy_version"]},
                             token=service["token"])
    assert status == 200
    for base in (first, second):
        deadline = time.monotonic() + 10
        while rank(base, {"context": context})["policy_version"] < rolled["policy_version"]:
            assert time.monotonic() < deadline, "rollback not published"
            time.sleep(0.05)
        assert {item["score"] for item in rank(base, {"context": context})["ranking"]} == {0.0}


def test_sum_rule_and_dropped_events(service):
    first, second = service["replicas"]
    event = rank(first, {"context": [1.0, 0.0, 0.0], "candidates": ["1"]})["event_id"]
    silent = rank(second, {"context": [1.0, 0.0, 0.0], "candidates": ["1"]})["event_id"]
    status, one = request("POST", f"{second}/v1/reward", {"event_id": event, "reward": 1.0})
    assert status == 200 and one["status"] == "joined"
    status, two = request("POST", f"{first}/v1/reward", {"event_id": event, "reward": 2.5})
    assert status == 200 and two["status"] == "added" and two["reward_total"] == 3.5 and two["reward_count"] == 2
    status, error = request("POST", f"{first}/v1/reward", {"event_id": "unknown-event", "reward": 1.0})
    assert status == 404
    time.sleep(WINDOW_S + 0.6)
    status, error = request("POST", f"{first}/v1/reward", {"event_id": event, "reward": 1.0})
    assert status == 409 and error["detail"][0]["type"] == "expired"
    status, error = request("POST", f"{second}/v1/reward", {"event_id": silent, "reward": 1.0})
    assert status == 409 and "dropped" in error["message"]
    frame = wait_for_log_rows(service["state_dir"], "expire", [event, silent])
    expired = frame[frame["kind"] == "expire"].set_index("event_id")
    assert expired.loc[event, "outcome"] == "rewarded" and expired.loc[event, "total"] == 3.5
    assert expired.loc[silent, "outcome"] == "dropped"
    # Model 1 learned one observation with reward 3.5 (the sum), none from the dropped event.
    status, info = request("GET", f"{first}/v1/policy", token=service["token"])
    status, state = request("GET", f"{first}/v1/policy/versions/{info['policy_version']}/state", token=service["token"])
    assert status == 200, state
    assert state["state"]["counts"][1] == 1.0 and state["state"]["data_response"][1][0] == 3.5
    assert state["state"]["response_square"][1] == 3.5**2


def test_promotion_through_the_learner_reaches_every_replica(service, tmp_path):
    """The gate's calls travel through the learner's handle: a model of 2 arms is refused (422, naming both), a
    candidate on fewer than 100 rewarded decisions is refused by the gate, the same one forced is served by both
    replicas with the checkpoint's statistics."""
    from conftest import train_linear_checkpoint

    from recbandits.algos.checkpoints import load_module

    theta = np.eye(3)
    good = train_linear_checkpoint(tmp_path / "good", ["0", "1", "2"], theta, seed=1)
    other = train_linear_checkpoint(tmp_path / "other", ["0", "1"], theta[:2], seed=2)
    url, token = f"{service['url']}/v1/policy/promote", service["token"]
    status, answer = request("POST", url, {"checkpoint": str(other)}, token=token)
    assert status == 422 and answer["message"] == (
        f"checkpoint: {other}: its model (disjoint, context 3, arms 2) does not fit the service "
        "(disjoint, context 3, arms 3)"), answer
    status, refused = request("POST", url, {"checkpoint": str(good)}, token=token)
    assert status == 200 and not refused["promoted"] and refused["policy_version"] is None
    assert refused["message"].endswith("rewarded decision(s); the gate needs at least 100 to compare the policies")
    status, forced = request("POST", url, {"checkpoint": str(good), "force": True}, token=token)
    assert status == 200 and forced["promoted"], forced
    version = forced["policy_version"]
    status, row = request("GET", f"{service['url']}/v1/policy/versions/{version}", token=token)
    assert row["version_kind"] == "promote" and row["forced"] and row["source"] == str(good)
    status, state = request("GET", f"{service['url']}/v1/policy/versions/{version}/state", token=token)
    trained = load_module(good).get_state()
    for name in ("data_precision", "data_response", "counts"):
        np.testing.assert_array_equal(np.asarray(state["state"][name]), trained[name], err_msg=name)
    for base in service["replicas"]:
        deadline = time.monotonic() + 10
        while (answer := rank(base, {"context": [0.0, 0.0, 5.0]}))["policy_version"] < version:
            assert time.monotonic() < deadline, answer
            time.sleep(0.1)
        assert answer["action"] == "2"  # theta: arm 2 is the context's third feature


def test_kill_9_under_traffic_loses_nothing_acknowledged(service):
    """Last in this module: SIGKILLs the whole service (driver, Ray, both replicas, the learner) with requests in
    flight on both replicas, then restores its state dir as a restart does (its checks and its BanditCore, in this
    process): every acknowledged decision and reward is in the log once, and the restored statistics are every
    rewarded event learned once, with the sum of its rewards (the ``sum`` rule; unrewarded events are dropped)."""
    from recbandits.serve.config import ServeConfig
    from recbandits.serve.core import BanditCore
    from recbandits.serve.state import check_state_dir, prepare_state_dir

    # What the earlier tests left: once their events are closed and learned, the state this test starts from.
    deadline = time.monotonic() + 30
    while True:
        status, info = request("GET", f"{service['url']}/v1/policy", token=service["token"])
        assert status == 200, info
        if info["open_events"] == 0 and info["queued_records"] == 0:
            break
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    status, start = request("GET", f"{service['url']}/v1/policy/versions/{info['policy_version']}/state",
                            token=service["token"])
    assert status == 200, start
    start_seq = info["log_seq"]
    acked_decisions: dict[str, dict] = {}
    acked_rewards: list[tuple[str, int]] = []  # (event id, seq)
    lock, stop = threading.Lock(), threading.Event()

    def traffic(worker: int) -> None:
        rng = np.random.default_rng(worker)
        base = service["replicas"][worker % 2]
        while not stop.is_set():
            try:
                status, answer = request("POST", f"{base}/v1/rank", {"context": rng.normal(size=3).round(6).tolist()},
                                         timeout=10)
                if status != 200:
                    continue
                with lock:
                    acked_decisions[answer["event_id"]] = answer
                if rng.random() < 0.3:  # open at the crash, or dropped unrewarded
                    continue
                status, result = request("POST", f"{base}/v1/reward",
                                         {"event_id": answer["event_id"], "reward": float(rng.integers(1, 4))},
                                         timeout=10)
            except OSError:  # the service is gone
                continue
            if status == 200:
                with lock:
                    acked_rewards.append((answer["event_id"], result["seq"]))

    with ThreadPoolExecutor(6) as pool:
        for worker in range(6):
            pool.submit(traffic, worker)
        deadline = time.monotonic() + 60
        while len(acked_rewards) < 150 and time.monotonic() < deadline:
            time.sleep(0.1)
        service["process"].kill()
        stop.set()
    assert len(acked_rewards) >= 150 and len(acked_decisions) > len(acked_rewards)

    frame = read_event_log(service["state_dir"])
    decisions = frame[frame["kind"] == "decision"].set_index("event_id")
    rewards = frame[frame["kind"] == "reward"]
    assert set(acked_decisions) <= set(decisions.index) and decisions.index.is_unique
    assert rewards["seq"].is_unique
    logged = set(zip(rewards["event_id"], rewards["seq"], strict=True))
    assert set(acked_rewards) <= logged

    # A restart takes the service's settings again (the state dir keeps the policy, not the options).
    config = ServeConfig(state_dir=str(service["state_dir"]), join_window_s=WINDOW_S, default_reward=None,
                         reward_rule="sum")
    assert check_state_dir(config) == []

    async def restored_statistics():
        core = BanditCore(prepare_state_dir(config, set()))
        try:
            assert core.restore_info["restored"], core.restore_info
            core.expire_due(now=time.time() + 2 * WINDOW_S)  # windows that ended while the service was down
            await core.log.drain()
            core.learn(force=True)
            return core.policy.get_state()
        finally:
            await core.close()

    state = asyncio.run(restored_statistics())
    # The sum rule learns an event when its window closes (an `expire` row, rewarded, with the total), the ones
    # whose window closed while the service was down included: each of this test's rewarded events exactly once,
    # with the sum of its rewards, on top of the state the test started from.
    frame = read_event_log(service["state_dir"])
    ours = frame[frame["seq"] > start_seq]
    rewards = ours[ours["kind"] == "reward"]
    learned = ours[(ours["kind"] == "expire") & (ours["outcome"] == "rewarded")].set_index("event_id")
    assert learned.index.is_unique and set(learned.index) == set(rewards["event_id"])
    np.testing.assert_array_equal(
        learned["total"].sort_index(), rewards.groupby("event_id")["reward"].sum().sort_index()
    )
    expected = {key: np.array(value, dtype=np.float64) for key, value in start["state"].items()}
    for event_id, row in learned.iterrows():
        x, model = (
            np.asarray(decisions.loc[event_id, "context"], dtype=np.float64), int(decisions.loc[event_id, "model"])
        )
        expected["data_precision"][model] += np.outer(x, x)
        expected["data_response"][model] += row["total"] * x
        expected["counts"][model] += 1
    assert len(learned) >= 150
    np.testing.assert_array_equal(state["counts"], expected["counts"])
    np.testing.assert_allclose(state["data_precision"], expected["data_precision"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(state["data_response"], expected["data_response"], rtol=1e-9, atol=1e-9)
