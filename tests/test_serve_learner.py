"""The separate-learner architecture over real HTTP: two ingress replicas, one Learner deployment.

Rewards sent to one replica reach the learner, which publishes new versions that every replica swaps in
without restarting; the ``sum`` reward rule and dropping unrewarded events are exercised on this service.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from recbandits.serve.testing import ServiceProcess, free_port_block, wait_for_log_rows
from recbandits.serve.testing import http_json as request

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
           "token": process.admin_token}
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
