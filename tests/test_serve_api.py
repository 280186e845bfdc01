"""The serving API over real HTTP: one in-process-learning service (Ray Serve, own local Ray) for the module.

Covers the reward join window (on time, late, duplicate, unknown, idempotent retries), in-process learning
changing the served decisions, policy versions and rollback, readiness, OpenAPI docs, Ray Serve's metrics,
and every bad-input case (4xx naming the field, never a 5xx, the model untouched).
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
from pathlib import Path

import pytest

from recbandits.loadgen.service_process import (
    ServiceProcess,
    free_port_block,
    session_pids,
    wait_for_log_rows,
)
from recbandits.loadgen.service_process import http_json as request
from recbandits.serve.eventlog import read_event_log
from recbandits.serve.runner import process_argv

ARMS = ["a", "b", "c", "d"]
WINDOW_S = 3.0


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_api")
    users = root / "users.csv"
    users.write_text("user_id,f0,f1,f2,f3\nalice,1,0,0,0\n42,0,1,0,0\n")
    port = free_port_block(12)
    args = [
        "--state-dir", root / "state", "--port", port, "--replica-port", port + 1, "--metrics-port", port + 10,
        "--metrics-interval", 2,
        "--shape", "disjoint", "--context-dim", 4, "--arm-ids", ",".join(ARMS), "--exploration", "greedy",
        "--learning", "in_process", "--join-window", WINDOW_S, "--default-reward", 0.0, "--reward-rule", "first",
        "--max-candidates", 8, "--user-table", users, "--snapshot-interval", 1.0, "--update-interval", 0.0,
    ]  # fmt: skip
    process = ServiceProcess(args, log_path=root / "service.log")
    ready = process.start()
    assert ready["replica_urls"], ready
    yield {"url": ready["url"], "fast": ready["replica_urls"][0], "state_dir": Path(ready["state_dir"]),
           "metrics_port": port + 10, "process": process, "ready": ready, "token": process.admin_token}
    process.stop()


def rank(service, body, base=None):
    status, answer = request("POST", f"{base or service['fast']}/v1/rank", body)
    assert status == 200, answer
    return answer


def reward(service, event_id, value, **extra):
    return request("POST", f"{service['fast']}/v1/reward", {"event_id": event_id, "reward": value, **extra})


def policy(service):
    status, info = request("GET", f"{service['fast']}/v1/policy", token=service["token"])
    assert status == 200, info
    return info


def test_health_docs_and_both_entry_points(service):
    for base in (service["url"], service["fast"]):
        status, health = request("GET", f"{base}/healthz")
        assert status == 200 and health["status"] == "ready"
    # /docs works offline: the page and every asset it loads come from the service, none from a CDN.
    page = urllib.request.urlopen(f"{service['url']}/docs", timeout=30).read().decode()
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page)
    assert assets and all(asset.startswith("/docs-assets/") for asset in assets), assets
    assert "cdn" not in page.lower()
    for asset in assets:
        with urllib.request.urlopen(f"{service['url']}{asset}", timeout=30) as answer:
            assert answer.status == 200 and len(answer.read()) > 100, asset
    status, schema = request("GET", f"{service['url']}/openapi.json")
    assert status == 200 and {"/v1/rank", "/v1/reward", "/v1/policy", "/healthz"} <= set(schema["paths"])
    # The proxy (every replica behind it) and the replica's own port serve the same API.
    answer = rank(service, {"context": [0, 0, 0, 1], "candidates": ["a", "b"]}, base=service["url"])
    assert answer["action"] in ("a", "b")


def test_rank_answer(service):
    answer = rank(service, {"context": [0, 0, 1, 0], "candidates": ["a", {"id": "b"}, "c"], "top_k": 2})
    assert len(answer["event_id"]) >= 16 and answer["exploration"] == "greedy"
    assert [item["id"] for item in answer["ranking"]][0] == answer["action"] and len(answer["ranking"]) == 2
    assert isinstance(answer["policy_version"], int) and isinstance(answer["policy_watermark"], int)
    # Cold start: all three tie, so each has probability 1/3 of being chosen.
    assert all(abs(item["probability"] - 1 / 3) < 1e-12 for item in answer["ranking"])
    # Excluded ids are never chosen; the client's event id is kept, and may not be reused.
    answer = rank(service, {"event_id": "client-1", "context": [0, 0, 1, 0], "excluded": ["a", "b", "c"]})
    assert answer["event_id"] == "client-1" and answer["action"] == "d"
    status, error = request("POST", f"{service['fast']}/v1/rank", {"event_id": "client-1", "context": [0, 0, 1, 0]})
    assert status == 409 and error["message"].startswith("event_id:")


def test_user_id_context(service):
    answer = rank(service, {"user_id": "alice", "candidates": ["a", "b"]})
    frame = read_event_log(service["state_dir"], "decision")
    row = frame[frame["event_id"] == answer["event_id"]].iloc[0]
    assert row["context"] == [1.0, 0.0, 0.0, 0.0] and row["user_id"] == "alice"
    assert rank(service, {"user_id": 42})["action"] in ARMS  # integer ids are their decimal string
    status, error = request("POST", f"{service['fast']}/v1/rank", {"user_id": "bob"})
    assert status == 404 and error["message"].startswith("user_id:")


def test_join_window_semantics(service):
    context = {"context": [0, 1, 1, 0], "candidates": ["c"]}
    # On time: joined, with the log seq of the reward.
    event = rank(service, context)["event_id"]
    status, joined = reward(service, event, 1.0)
    assert status == 200 and joined["status"] == "joined" and joined["seq"] > 0
    # Duplicate under rule "first": 409, and the first reward stands.
    status, error = reward(service, event, 5.0)
    assert status == 409 and error["detail"][0]["type"] == "duplicate_reward" and "event_id" in error["message"]
    # A retried reward with the same reward_id is acknowledged again (idempotent), not counted twice.
    event = rank(service, context)["event_id"]
    assert reward(service, event, 2.0, reward_id="r-1")[1]["status"] == "joined"
    status, again = reward(service, event, 2.0, reward_id="r-1")
    assert status == 200 and again["status"] == "duplicate" and again["seq"] == reward(service, event, 2.0,
                                                                                      reward_id="r-1")[1]["seq"]
    # Unknown event: 404.
    status, error = reward(service, "never-decided", 1.0)
    assert status == 404 and error["detail"][0]["type"] == "unknown_event"
    # Late: after the window the default reward was applied; the reward gets 409.
    late = rank(service, context)["event_id"]
    unrewarded = rank(service, context)["event_id"]
    time.sleep(WINDOW_S + 0.6)
    status, error = reward(service, late, 1.0)
    assert status == 409 and error["detail"][0]["type"] == "expired" and "default reward 0.0" in error["message"]
    frame = wait_for_log_rows(service["state_dir"], "expire", [late, unrewarded])
    rewards = frame[frame["kind"] == "reward"]
    assert list(rewards[rewards["event_id"] == event]["reward"]) == [2.0]  # once, despite the retry
    expired = frame[(frame["kind"] == "expire") & frame["event_id"].isin([late, unrewarded])]
    assert sorted(expired["event_id"]) == sorted([late, unrewarded])
    assert set(expired["outcome"]) == {"default"} and set(expired["reward"]) == {0.0}
    assert policy(service)["counters"]["expired_default"] >= 2


def test_reward_batches(service):
    first = rank(service, {"context": [0, 1, 0, 0], "candidates": ["a"]})["event_id"]
    second = rank(service, {"context": [0, 1, 0, 0], "candidates": ["b"]})["event_id"]
    status, answer = request("POST", f"{service['fast']}/v1/rewards", {"rewards": [
        {"event_id": first, "reward": 1.0}, {"event_id": "no-such-event", "reward": 1.0},
        {"event_id": first, "reward": 2.0}, {"event_id": second, "reward": 0.5, "reward_id": "x"}]})
    assert status == 200 and answer["accepted"] == 2 and answer["rejected"] == 2
    statuses = [(item["status"], (item.get("error") or {}).get("code")) for item in answer["results"]]
    assert statuses == [("joined", None), ("rejected", "unknown_event"), ("rejected", "duplicate_reward"),
                        ("joined", None)]
    assert answer["results"][0]["seq"] < answer["results"][3]["seq"]


def test_in_process_learning_changes_decisions(service):
    context = [1.0, 0.0, 0.0, 0.0]
    before = rank(service, {"context": context})
    assert {item["score"] for item in before["ranking"]} == {0.0}  # nothing learned for this context yet

    def teach(arm: str, value: float, times: int) -> int:
        seq = 0
        for _ in range(times):
            event = rank(service, {"context": context, "candidates": [arm]})["event_id"]
            status, answer = reward(service, event, value)
            assert status == 200, answer
            seq = answer["seq"]
        return seq

    seq = teach("b", 1.0, 3)
    after = rank(service, {"context": context})
    assert after["action"] == "b" and after["policy_watermark"] >= seq
    assert after["policy_version"] > before["policy_version"]
    assert all(rank(service, {"context": context})["action"] == "b" for _ in range(5))
    teach("c", 4.0, 3)
    assert all(rank(service, {"context": context})["action"] == "c" for _ in range(5))
    statistics = {model["model"]: model["observations"] for model in policy(service)["statistics"]["models"]}
    assert statistics["b"] >= 3 and statistics["c"] >= 3


BAD_REQUESTS = [
    # (path, JSON body or raw text, status, field named in the message)
    ("/v1/rank", {"context": [1, 2]}, 422, "context"),
    ("/v1/rank", '{"context": [NaN, 0, 0, 0]}', 422, "context[0]"),
    ("/v1/rank", '{"context": [0, Infinity, 0, 0]}', 422, "context[1]"),
    ("/v1/rank", '{"context": [0, 0, -Infinity, 0]}', 422, "context[2]"),
    ("/v1/rank", '{"context": [0, 0, 0, 1e999]}', 422, "context[3]"),
    ("/v1/rank", {"context": [0, 0, 0, 1e300]}, 422, "context[3]"),
    ("/v1/rank", {"context": [0, 0, 0, 1], "candidates": []}, 422, "candidates"),
    ("/v1/rank", {"context": [0, 0, 0, 1], "candidates": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}, 422,
     "candidates"),
    ("/v1/rank", {"context": [0, 0, 0, 1], "candidates": ["a", "b", "a"]}, 422, "candidates[2].id"),
    ("/v1/rank", {"context": [0, 0, 0, 1], "candidates": ["a", {"id": "zz"}]}, 422, "candidates[1].id"),
    ("/v1/rank", {"context": [0, 0, 0, 1], "candidates": [{"id": "a", "features": [1.0]}]}, 422,
     "candidates[0].features"),
    ("/v1/rank", {"context": [0, 0, 0, 1], "candidates": [True]}, 422, "candidates[0].id"),
    ("/v1/rank", {"context": [0, 0, 0, 1], "candidates": [1.5]}, 422, "candidates[0].id"),
    ("/v1/rank", {"context": [0, 0, 0, 1], "excluded": ["a", "b", "c", "d"]}, 422, "excluded"),
    ("/v1/rank", {"context": "0,0,0,1"}, 422, "context"),
    ("/v1/rank", {"context": ["0", 0, 0, 1]}, 422, "context[0]"),
    ("/v1/rank", {"context": [0, 0, True, 1]}, 422, "context[2]"),
    ("/v1/rank", {"context": [0, 0, 0, 1], "top_k": "2"}, 422, "top_k"),
    ("/v1/rank", {"context": [0, 0, 0, 1], "top_k": 0}, 422, "top_k"),
    ("/v1/rank", {"context": [0, 0, 0, 1], "event_id": 7}, 422, "event_id"),
    ("/v1/rank", {"context": [0, 0, 0, 1], "event_id": "has space"}, 422, "event_id"),
    ("/v1/rank", {"context": [0, 0, 0, 1], "user_id": "alice"}, 422, "user_id"),
    ("/v1/rank", {"candidates": ["a"]}, 422, "context"),
    ("/v1/rank", {"contxt": [0, 0, 0, 1]}, 422, "contxt"),
    ("/v1/rank", '{"context": [0, 0, 0, 1]', 422, "body"),
    ("/v1/rank", "not json", 422, "body"),
    ("/v1/rank", "[1, 2]", 422, "body"),
    ("/v1/rank", "", 422, "body"),
    ("/v1/reward", {"event_id": "x", "reward": "1"}, 422, "reward"),
    ("/v1/reward", '{"event_id": "x", "reward": NaN}', 422, "reward"),
    ("/v1/reward", '{"event_id": "x", "reward": Infinity}', 422, "reward"),
    ("/v1/reward", {"event_id": "x", "reward": -1e200}, 422, "reward"),
    ("/v1/reward", {"reward": 1.0}, 422, "event_id"),
    ("/v1/reward", {"event_id": ["x"], "reward": 1.0}, 422, "event_id"),
    ("/v1/reward", '{"event_id": "x", "reward": }', 422, "body"),
    ("/v1/rewards", {"rewards": []}, 422, "rewards"),
    ("/v1/rewards", {"rewards": [{"event_id": "x", "reward": 1.0}, {"event_id": "y", "reward": "1"}]}, 422,
     "rewards[1].reward"),
    ("/v1/rewards", {"rewards": [{"event_id": "x", "reward": 1.0}] * 1001}, 422, "rewards"),
    ("/v1/policy/rollback", {"version": "1"}, 422, "version"),
    ("/v1/policy/rollback", {"version": 0}, 422, "version"),
    ("/v1/policy/rollback", {"version": 10**9}, 404, "version"),
]


def test_bad_inputs_are_4xx_naming_the_field_and_leave_the_model_alone(service):
    before = policy(service)
    for path, body, expected, field in BAD_REQUESTS:
        raw = body if isinstance(body, str) else None
        for base in (service["fast"],) if path != "/v1/rank" or raw is None else (service["fast"], service["url"]):
            token = service["token"] if path.startswith("/v1/policy") else None
            status, error = request("POST", f"{base}{path}", None if raw is not None else body, raw=raw, token=token)
            assert status == expected, (path, body, status, error)
            assert isinstance(error, dict) and error["message"].split(":")[0].split("; ")[0] == field, (body, error)
    status, error = request("GET", f"{service['fast']}/v1/policy/versions/abc", token=service["token"])
    assert status == 422 and "version" in error["message"]
    after = policy(service)
    for counter in ("decisions", "rewards"):
        assert after["counters"][counter] == before["counters"][counter]
    # Earlier tests' unrewarded events may expire meanwhile (and be learned): nothing else is logged.
    frame = read_event_log(service["state_dir"])
    assert set(frame[frame["seq"] > before["log_seq"]]["kind"]) <= {"expire", "version"}


def test_versions_and_rollback(service):
    context = [0.0, 0.0, 0.0, 1.0]
    for _ in range(3):
        event = rank(service, {"context": context, "candidates": ["d"]})["event_id"]
        assert reward(service, event, 3.0)[0] == 200
    assert rank(service, {"context": context})["action"] == "d"
    status, listing = request("GET", f"{service['fast']}/v1/policy/versions?limit=500", token=service["token"])
    assert status == 200
    versions = {row["policy_version"]: row for row in listing["versions"]}
    assert versions[1]["version_kind"] == "initial" and versions[1]["snapshot"]
    assert listing["policy_version"] == max(versions)
    # Back to the cold start: every score of this context is 0 again, learning continues from there.
    status, rolled = request("POST", f"{service['fast']}/v1/policy/rollback", {"version": 1}, token=service["token"])
    assert status == 200 and rolled["rolled_back_to"] == 1 and rolled["policy_version"] > max(versions)
    answer = rank(service, {"context": context})
    assert answer["policy_version"] >= rolled["policy_version"]
    assert {item["score"] for item in answer["ranking"]} == {0.0}
    status, state = request("GET", f"{service['fast']}/v1/policy/versions/{rolled['policy_version']}/state",
                            token=service["token"])
    assert status == 200 and sum(state["state"]["counts"]) == 0.0
    event = rank(service, {"context": context, "candidates": ["a"]})["event_id"]
    assert reward(service, event, 1.0)[0] == 200
    assert rank(service, {"context": context})["action"] == "a"


def test_ray_agent_runs_at_idle_priority(service):
    """The local Ray's dashboard agent (its metrics pipeline's bursts) only gets CPU the service leaves free."""
    agent = service["ready"]["idle_ray_agent"]
    assert agent and agent["pids"] and agent["threads"] >= len(agent["pids"]), service["ready"]
    for pid in agent["pids"]:
        assert process_argv(pid)[0].startswith("ray::DashboardAgent")
        threads = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
        assert threads and all(os.sched_getscheduler(tid) == os.SCHED_IDLE for tid in threads)
    replicas = [
        pid for pid in session_pids(service["process"].process.pid) if "ServeReplica" in " ".join(process_argv(pid))
    ]
    assert replicas and all(os.sched_getscheduler(pid) == os.SCHED_OTHER for pid in replicas)


def test_ray_serve_metrics_exported(service):
    """Ray Serve's own request counters and latency histograms reach Ray's Prometheus endpoint."""
    url = f"http://127.0.0.1:{service['metrics_port']}/metrics"
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        rank(service, {"context": [0, 0, 0, 1]})
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            text = ""
        if "ray_serve_deployment_request_counter" in text and "ray_serve_deployment_processing_latency_ms" in text:
            break
        time.sleep(2)
    assert "ray_serve_deployment_request_counter" in text, text[:2000]
    assert "ray_serve_deployment_processing_latency_ms" in text


def test_start_and_stop_print_only_the_services_own_lines(service):
    """Last in this module: stops the service, then reads everything it printed (tests/test_output.py)."""
    from conftest import library_lines

    assert service["process"].terminate() == []
    printed = (service["state_dir"].parent / "service.log").read_text() + service["process"].stdout
    assert '{"stopping": true}' in printed
    # Only the service's own lines: not Ray Serve's settings notice (its controller logs it at INFO, a bullet per
    # setting, before Serve applies its logging config; the service filters it out), nor the raylet's
    # "ServeController.graceful_shutdown failed" (a local Ray's Serve is not shut down apart).
    assert library_lines(printed) == [], printed
    assert "Ray Serve enabled" not in printed and "\u2022" not in printed, printed
