"""kill -9 of the whole service under load, then a restart on the same state dir: nothing acknowledged is lost
or counted twice.

The service starts from a checkpoint laid out as ``recbandits simulate --out DIR`` writes it
(``DIR/checkpoint/learner_group/learner/rl_module/default_policy``), takes traffic, snapshots, takes more traffic
and is SIGKILLed (every process of its session: driver, Ray, replica) while requests are in flight. The test
checks the event log against what was acknowledged, restarts, and compares the restored statistics with the
checkpoint's plus every learning row of the log, exactly once.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from recbandits.loadgen.service_process import ServiceProcess, free_port_block
from recbandits.loadgen.service_process import http_json as request
from recbandits.serve.eventlog import read_event_log

pytestmark = pytest.mark.slow  # kill -9 and restarts under traffic: `make test-quick` leaves them out

ARMS = 4
DIM = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A trained-looking LinearBanditModule saved where `recbandits simulate` puts its module."""
    import gymnasium as gym
    import torch

    from recbandits.algos.module import LinearBanditModule

    module = LinearBanditModule(
        observation_space=gym.spaces.Box(-np.inf, np.inf, (DIM,), np.float32), action_space=gym.spaces.Discrete(ARMS),
        inference_only=False, model_config={"exploration": "ucb", "alpha": 0.5, "lambda_": 1.0},
    )
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(size=(200, DIM)))
    actions = torch.from_numpy(rng.integers(ARMS, size=200))
    rewards = torch.from_numpy(rng.normal(size=200))
    module.absorb(*module.statistics(features, actions, rewards))
    out = tmp_path_factory.mktemp("simulate_out")
    module.save_to_path(str(out / "checkpoint" / "learner_group" / "learner" / "rl_module" / "default_policy"))
    return out, module.get_state()


def _args(state_dir: Path, port: int, checkpoint: Path | None = None) -> list:
    # The join window outlasts two start-ups on a slow machine: no event expires (and learns its default reward)
    # between the kill and the checks after the restart.
    args = ["--state-dir", state_dir, "--port", port, "--replica-port", port + 1, "--exploration", "greedy",
            "--join-window", 900, "--snapshot-interval", 1.0, "--learning", "in_process"]
    return args + (["--checkpoint", checkpoint] if checkpoint else [])


def _expected_state(initial: dict[str, np.ndarray], frame) -> dict[str, np.ndarray]:
    """The checkpoint's statistics plus every learning row of the log (rule first: each reward row)."""
    state = {key: np.array(value, dtype=np.float64) for key, value in initial.items()}
    decisions = frame[frame["kind"] == "decision"].set_index("event_id")
    for _, row in frame[frame["kind"] == "reward"].iterrows():
        decision = decisions.loc[row["event_id"]]
        x, model, value = np.asarray(decision["context"]), int(decision["model"]), float(row["reward"])
        state["data_precision"][model] += np.outer(x, x)
        state["data_response"][model] += value * x
        state["response_square"][model] += value * value
        state["counts"][model] += 1
    return state


def test_kill_9_and_restart_loses_nothing(tmp_path, checkpoint):
    checkpoint_dir, checkpoint_state = checkpoint
    state_dir = tmp_path / "state"
    port = free_port_block(12)
    service = ServiceProcess(_args(state_dir, port, checkpoint_dir), log_path=tmp_path / "first.log")
    ready = service.start()
    base = ready["replica_urls"][0]
    rng = np.random.default_rng(1)
    acked_decisions: dict[str, dict] = {}
    acked_rewards: dict[str, dict] = {}
    lock = threading.Lock()
    stop = threading.Event()

    # The starting policy is the checkpoint's module.
    status, initial = request("GET", f"{base}/v1/policy/versions/1/state", token=service.admin_token)
    assert status == 200
    np.testing.assert_array_equal(np.asarray(initial["state"]["counts"]), checkpoint_state["counts"])
    np.testing.assert_allclose(np.asarray(initial["state"]["data_precision"]), checkpoint_state["data_precision"])

    def one_event(index: int) -> None:
        context = rng.normal(size=DIM).round(6).tolist()
        try:
            status, answer = request("POST", f"{base}/v1/rank", {"context": context}, timeout=10)
        except OSError:
            return
        if status != 200:
            return
        with lock:
            acked_decisions[answer["event_id"]] = answer
        if index % 3 == 2:  # a third of the events stay without reward (open at the crash)
            return
        value = float(index % 5)
        try:
            status, result = request("POST", f"{base}/v1/reward", {"event_id": answer["event_id"], "reward": value},
                                     timeout=10)
        except OSError:
            return
        if status == 200:
            with lock:
                acked_rewards[answer["event_id"]] = {"reward": value, **result}

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one_event, range(90)))
    time.sleep(2.5)  # a snapshot covers phase 1
    status, listing = request("GET", f"{base}/v1/policy/versions?limit=1000", token=service.admin_token)
    snapshotted = [row for row in listing["versions"] if row["snapshot"] and row["policy_version"] > 1]
    assert snapshotted, listing
    max_version_before = listing["policy_version"]

    # Phase 2: traffic in flight when the whole service is SIGKILLed.
    def traffic(worker: int) -> None:
        index = 1000 * (worker + 1)
        while not stop.is_set():
            one_event(index)
            index += 1

    threads = [threading.Thread(target=traffic, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    service.kill()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    with lock:
        decisions, rewards = dict(acked_decisions), dict(acked_rewards)
    assert len(rewards) > 60 and len(decisions) > len(rewards)

    # Everything acknowledged is in the log, once.
    frame = read_event_log(state_dir)
    logged_decisions = frame[frame["kind"] == "decision"]
    logged_rewards = frame[frame["kind"] == "reward"]
    assert set(decisions) <= set(logged_decisions["event_id"])
    assert logged_rewards["event_id"].is_unique
    by_event = logged_rewards.set_index("event_id")
    for event_id, acked in rewards.items():
        assert by_event.loc[event_id, "reward"] == acked["reward"] and by_event.loc[event_id, "seq"] == acked["seq"]

    # Restart on the same state dir (no checkpoint: the state dir has everything).
    port = free_port_block(12)
    service = ServiceProcess(_args(state_dir, port), log_path=tmp_path / "second.log")
    ready = service.start()
    base = ready["replica_urls"][0]
    try:
        assert ready["restore"]["restored"] and ready["restore"]["replayed_records"] > 0, ready
        status, info = request("GET", f"{base}/v1/policy", token=service.admin_token)
        assert info["policy_version"] > max_version_before
        assert info["version"]["version_kind"] == "restore"
        status, restored = request("GET", f"{base}/v1/policy/versions/{info['policy_version']}/state",
                                   token=service.admin_token)
        expected = _expected_state(checkpoint_state, frame)
        np.testing.assert_array_equal(np.asarray(restored["state"]["counts"]), expected["counts"])
        for key in ("data_precision", "data_response", "response_square"):
            np.testing.assert_allclose(np.asarray(restored["state"][key]), expected[key], rtol=1e-9, atol=1e-9)
        # Open events are still open: their reward joins; rewarded ones stay closed; the rest is unknown.
        open_event = next(event for event in decisions if event not in set(logged_rewards["event_id"]))
        status, answer = request("POST", f"{base}/v1/reward", {"event_id": open_event, "reward": 1.0})
        assert status == 200 and answer["status"] == "joined", answer
        status, answer = request("POST", f"{base}/v1/reward", {"event_id": next(iter(rewards)), "reward": 1.0})
        assert status == 409
        status, answer = request("POST", f"{base}/v1/rank", {"context": [0.1, 0.2, 0.3]})
        assert status == 200 and answer["policy_version"] > max_version_before
    finally:
        service.stop()
