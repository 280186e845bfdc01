"""The service against inputs and operator mistakes that must not break it (a real service over HTTP).

Each test reproduces a failure that was found by attacking the service: numeric poisoning of the statistics by one
valid request, start-up failures whose cause was hidden in Ray's logs, oversized bodies, unauthenticated admin
calls, state files readable by everyone, and the smaller defects of the error format and restarts.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from recbandits.loadgen.service_process import ServiceProcess, free_port_block
from recbandits.loadgen.service_process import http_json as request
from recbandits.serve.eventlog import read_event_log

CONTEXT_DIM, NUM_ARMS = 20, 20


def _service_args(state_dir, port, *extra):
    return ["--state-dir", state_dir, "--port", port, "--replica-port", port + 1, "--metrics-interval", 60,
            "--update-interval", 0.0, "--snapshot-interval", 1.0, *extra]


def _closed_form(state_dir, num_models: int, dim: int, skip_seqs: set[int]):
    """A = sum x x^T, b = sum r x, n per model, rebuilt from the log's decisions, rewards and default expiries."""
    log = read_event_log(state_dir)
    decisions = {row.event_id: row for row in log[log["kind"] == "decision"].itertuples()}
    precision, response, counts = np.zeros((num_models, dim, dim)), np.zeros((num_models, dim)), np.zeros(num_models)
    learned = log[((log["kind"] == "reward") | ((log["kind"] == "expire") & (log.get("outcome") == "default")))]
    for row in learned.itertuples():
        if int(row.seq) in skip_seqs:
            continue
        decision = decisions[row.event_id]
        x, model = np.asarray(decision.context, dtype=np.float64), int(decision.model)
        precision[model] += np.outer(x, x)
        response[model] += float(row.reward) * x
        counts[model] += 1
    return precision, response, counts


def _wait_until_learned(base, token, timeout_s: float = 20.0):
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        status, info = request("GET", f"{base}/v1/policy", token=token)
        assert status == 200, info
        if info["queued_records"] == 0 and info["open_events"] == 0 or time.monotonic() > deadline:
            return info
        time.sleep(0.2)


@pytest.mark.slow
def test_one_huge_context_is_quarantined_and_learning_goes_on(tmp_path):
    """The reproduction: a context of 1e8 (inside the API's |x| <= 1e9) with its reward, then 300 normal requests."""
    port = free_port_block(12)
    state_dir = tmp_path / "state"
    args = _service_args(state_dir, port, "--context-dim", CONTEXT_DIM, "--num-arms", NUM_ARMS, "--join-window", 2.0)
    service = ServiceProcess(args, log_path=tmp_path / "service.log")
    base = service.start()["replica_urls"][0]
    try:
        status, poisoned = request("POST", f"{base}/v1/rank", {"context": [1e8] * CONTEXT_DIM})
        assert status == 200, poisoned
        status, joined = request("POST", f"{base}/v1/reward", {"event_id": poisoned["event_id"], "reward": 1.0})
        assert status == 200, joined
        poisoned_seq = joined["seq"]
        rng = np.random.default_rng(0)
        for _ in range(30):
            event_ids = []
            for _ in range(10):
                status, answer = request("POST", f"{base}/v1/rank", {"context": rng.normal(size=CONTEXT_DIM).tolist()})
                assert status == 200, answer
                event_ids.append(answer["event_id"])
            # Nine of ten rewarded; the tenth expires into the default reward (0.0) after the 2-s window.
            rewards = [{"event_id": event_id, "reward": float(rng.integers(0, 2))} for event_id in event_ids[:9]]
            status, answer = request("POST", f"{base}/v1/rewards", {"rewards": rewards})
            assert status == 200 and answer["accepted"] == 9, answer
        info = _wait_until_learned(base, service.admin_token)
        assert info["counters"]["quarantined"] == 1 and info["counters"]["learning_records"] == 300, info["counters"]
        assert [(row["event_id"], row["record_seq"]) for row in info["quarantined"]] == [(poisoned["event_id"],
                                                                                          poisoned_seq)]
        assert "too large to learn in float64" in info["quarantined"][0]["reason"]
        assert info["policy_version"] > 2 and info["watermark"] > poisoned_seq
        assert info["learning_problem"] is None
        status, health = request("GET", f"{base}/healthz")
        assert status == 200 and health["status"] == "ready", health
        version = info["policy_version"]
        status, state = request("GET", f"{base}/v1/policy/versions/{version}/state", token=service.admin_token)
        assert status == 200, state
        precision, response, counts = _closed_form(state_dir, NUM_ARMS, CONTEXT_DIM, {poisoned_seq})
        np.testing.assert_allclose(state["state"]["data_precision"], precision, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(state["state"]["data_response"], response, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(state["state"]["counts"], counts)
        status, rolled = request("POST", f"{base}/v1/policy/rollback", {"version": 2}, token=service.admin_token)
        assert status == 200 and rolled["rolled_back_to"] == 2, rolled
        status, old = request("GET", f"{base}/v1/policy/versions/{version}/state", token=service.admin_token)
        assert status == 200 and old["state"]["counts"] == state["state"]["counts"]
        log = read_event_log(state_dir)
        marks = log[log["kind"] == "quarantine"]
        assert marks["record_seq"].tolist() == [poisoned_seq]
        # A clean stop leaves no process behind (Ray's agents used to hold their ports ~60 s).
        left = service.terminate()
        assert service.process.returncode == 0 and left == [], (service.process.returncode, left)
    finally:
        service.stop()

    # A restart (in this process: the service's own start-up, without Ray) replays the log, the quarantined
    # record again not learned, and restores the counters.
    core = _restarted_core(state_dir)
    try:
        info = core.info()
        # The clean stop wrote a final snapshot: the restart replays nothing.
        assert info["restore"]["restored"] and info["restore"]["replayed_records"] == 0, info["restore"]
        assert info["counters"]["decisions"] == 301 and info["counters"]["rewards"] == 271, info["counters"]
        assert info["counters"]["quarantined"] == 1 and info["counters"]["expired_default"] == 30
        assert [row["record_seq"] for row in info["quarantined"]] == [poisoned_seq]
        np.testing.assert_array_equal(asyncio.run(core.version_state(version))["counts"], counts)
        decision = core.policy.decide([_score_job(core, [1e8] * CONTEXT_DIM)])[0]
        assert np.isfinite(decision.scores).all()
    finally:
        asyncio.run(core.close())
    log = read_event_log(state_dir)
    assert log[log["kind"] == "quarantine"]["record_seq"].tolist() == [poisoned_seq]  # not marked twice


def _restarted_core(state_dir):
    """What a restart of the service on ``state_dir`` serves from: its checks, then its BanditCore."""
    from recbandits.serve.config import ServeConfig
    from recbandits.serve.core import BanditCore
    from recbandits.serve.state import check_state_dir, prepare_state_dir

    config = ServeConfig(state_dir=str(state_dir))
    assert check_state_dir(config) == []
    return BanditCore(prepare_state_dir(config, set()))


def _score_job(core, context):
    from recbandits.serve.schemas import RankRequest, RequestValidator

    return RequestValidator(core.config).rank_job(RankRequest(context=context)).score


@pytest.mark.parametrize("shape", ["disjoint", "shared"])
def test_the_posterior_stays_finite_and_positive_definite_for_any_finite_statistics(shape):
    """A = lambda I + D with D >= 0: refresh must give a finite, positive-definite A^-1 whatever D's scale."""
    import torch

    from recbandits.algos.candidates import build_module

    fields = {"shape": shape, "context_dim": 20, "num_arms": 3 if shape == "disjoint" else 0,
              "arm_dim": 0 if shape == "disjoint" else 2, "arm_ids": None, "interaction": False,
              "model_config": {"exploration": "thompson"}}
    module = build_module(fields)
    dim = module.feature_dim
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(5, dim))
    huge = np.full(dim, 1e8)
    precision = np.zeros((module.num_models, dim, dim))
    precision[0] = normal.T @ normal + np.outer(huge, huge)  # what the unguarded service held: Cholesky failed
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.cholesky(torch.from_numpy(precision[0] + np.eye(dim)))
    state = module.get_state()
    state["data_precision"] = precision
    state["data_response"] = np.ones((module.num_models, dim))
    module.set_state(state)
    assert module.ill_conditioned == 1
    covariance = module.covariance.numpy()
    assert np.isfinite(covariance).all() and np.isfinite(module.theta.numpy()).all()
    for matrix in covariance:
        eigenvalues = np.linalg.eigvalsh(0.5 * (matrix + matrix.T))
        # Positive semi-definite to rounding (the huge direction's 1/(2e17) is below float64's resolution at 1),
        # and no eigenvalue of A^-1 above 1/lambda.
        assert eigenvalues.min() > -1e-15 and eigenvalues.max() <= 1.0 / module.lambda_ * (1 + 1e-9)
    features = module.features(np.zeros((4, 20)) if shape == "disjoint" else
                               {"global": np.ones((4, 20)), "per_arm": np.ones((4, 5, 2))})
    assert torch.isfinite(module.scores(features, "thompson")).all()
    assert torch.isfinite(module.scores(features, "ucb")).all()


def test_the_rllib_learner_absorbs_ill_conditioned_deltas():
    """Simulation: the Learner adds the runners' deltas through the same refresh."""
    import gymnasium as gym

    from recbandits.algos.linear import LinUCBConfig

    observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    config = LinUCBConfig().environment(observation_space=observation_space, action_space=gym.spaces.Discrete(2))
    learner = config.build_learner()
    huge = np.full(4, 1e8)
    precision = np.zeros((2, 4, 4))
    precision[1] = np.outer(huge, huge) + np.eye(4)
    learner.learn_from_runners([[precision, np.ones((2, 4)), np.ones(2), np.ones(2)]], num_batches=1)
    module = learner.bandit_module
    assert module.ill_conditioned == 1
    assert bool(module.covariance.isfinite().all()) and bool(module.theta.isfinite().all())
    np.testing.assert_allclose(module.theta[0].numpy(), np.ones(4))  # the other arm: b / lambda, exact


# --------------------------------------------------------------------------------------------------
# Start-up failures name their cause, before Ray starts
# --------------------------------------------------------------------------------------------------


def _state_with_history(tmp_path, events: int = 30):
    """A state dir a service has run on: decisions, rewards, versions and a snapshot (written without Ray)."""
    import asyncio

    from recbandits.serve.config import ServeConfig
    from recbandits.serve.core import BanditCore
    from recbandits.serve.state import prepare_state_dir

    config = prepare_state_dir(ServeConfig(state_dir=str(tmp_path / "state"), context_dim=2, num_arms=2,
                                           arm_ids=["a", "b"], model_config={"exploration": "greedy"}))

    async def run():
        core = BanditCore(config)
        for index in range(events):
            row = {"kind": "decision", "event_id": f"e{index}", "policy_version": core.version_id,
                   "watermark": core.watermark, "context": [1.0, float(index)], "candidates": None,
                   "action": "a", "model": 0, "chosen_features": None}
            await core.log_decisions([row])
            await core.record_reward(f"e{index}", 1.0)
            if index == events // 2:
                core.learn(force=True)
                await core.snapshot()
        await core.close()

    asyncio.run(run())
    return config.state_path


def _start_fails(state_dir, *extra, timeout_s: float = 120.0) -> str:
    """Run `python -m recbandits.serve` on a state dir that cannot be served: its one line of stderr."""
    import subprocess
    import sys

    port = free_port_block(4)
    result = subprocess.run([sys.executable, "-m", "recbandits.serve", "--state-dir", str(state_dir), "--port",
                             str(port), *extra], capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # one line, and nothing from Ray: it never started
    assert result.stdout == ""
    return lines[0]


def test_a_corrupt_log_line_is_named_and_repair_log_moves_the_tail_aside(tmp_path):
    state_dir = _state_with_history(tmp_path)
    log = state_dir / "events.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    lines[26] = b'{"kind":"reward","event_id":"e1\x00\xff garbage\n'
    log.write_bytes(b"".join(lines))
    message = _start_fails(state_dir)
    assert message.startswith(f"{log}:27 is not a JSON row") and "--repair-log" in message, message

    from recbandits.serve.config import ServeConfig
    from recbandits.serve.state import check_state_dir, scan_log_rows

    notes = check_state_dir(ServeConfig(state_dir=str(state_dir)), repair_log=True)
    aside = sorted(state_dir.glob("events.jsonl.corrupt-27-*"))
    assert len(aside) == 1 and notes == [f"moved {len(lines) - 26} log lines from {log}:27 (not a JSON row "
                                         f"({notes[0].split('(not a JSON row (')[1]}"]
    assert aside[0].read_bytes() == b"".join(lines[26:])  # nothing deleted
    assert log.read_bytes() == b"".join(lines[:26])
    assert scan_log_rows(log)[2] is None and oct(aside[0].stat().st_mode & 0o777) == "0o600"


def test_a_missing_starting_policy_is_named(tmp_path):
    state_dir = _state_with_history(tmp_path)
    for snapshot in (state_dir / "snapshots").glob("v*.npz"):
        snapshot.unlink()
    (state_dir / "snapshots" / "initial.npz").unlink()
    message = _start_fails(state_dir)
    assert message.startswith(f"{state_dir / 'snapshots' / 'initial.npz'} is missing"), message


def test_another_live_service_on_the_state_dir_is_named(tmp_path):
    from recbandits.serve.state import StateLock

    state_dir = _state_with_history(tmp_path)
    lock = StateLock(state_dir / "lock")
    try:
        message = _start_fails(state_dir)
    finally:
        lock.release()
    import os

    assert message == (f"another service (pid {os.getpid()}) holds {state_dir / 'lock'}: stop it, or use another "
                       "--state-dir"), message


def test_a_read_only_state_dir_is_named(tmp_path):
    import os
    import subprocess

    state_dir = _state_with_history(tmp_path)
    if os.geteuid() != 0:
        state_dir.chmod(0o500)
    elif subprocess.run(["mount", "--bind", str(state_dir), str(state_dir)], capture_output=True).returncode != 0:
        pytest.skip("as root a read-only state dir needs a read-only bind mount, which this machine refuses")
    else:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state_dir)], check=True)
    try:
        message = _start_fails(state_dir)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(state_dir)], check=True)
        else:
            state_dir.chmod(0o700)
    assert message.startswith(f"state dir {state_dir} is not writable (Read-only file system" if os.geteuid() == 0
                              else f"state dir {state_dir} is not writable (Permission denied"), message


def test_a_snapshot_holding_poisoned_statistics_starts_and_serves(tmp_path):
    """What the unguarded service wrote after a context of 1e8: a restart must start and serve from it."""
    from recbandits.serve.store import SnapshotStore, read_npz, write_npz_atomic

    state_dir = _state_with_history(tmp_path)
    store = SnapshotStore(state_dir)
    newest = store.path(max(store.versions()))
    state, meta = read_npz(newest)
    state["data_precision"][1] += np.full((2, 2), 1e16)  # arm b had no data: lambda I + 1e16 1 1^T
    write_npz_atomic(newest, state, meta)
    core = _restarted_core(state_dir)
    try:
        assert core.info()["restore"]["restored"] and core.policy.statistics()["ill_conditioned_models"] == 1
        decision = core.policy.decide([_score_job(core, [0.5, -1.0])])[0]
        assert np.isfinite(decision.scores).all() and decision.chosen in (0, 1)
        assert core.healthy() and core.learning_problem() is None  # /healthz: ready
    finally:
        asyncio.run(core.close())


# --------------------------------------------------------------------------------------------------
# Limits, admission control, access control, the error format (one service with tight limits)
# --------------------------------------------------------------------------------------------------

MAX_BODY = 65536


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    root = tmp_path_factory.mktemp("limited")
    port = free_port_block(12)
    args = _service_args(root / "state", port, "--context-dim", 4, "--num-arms", 3, "--max-ongoing-requests", 2,
                         "--max-queued-requests", 2, "--retry-after", 2, "--max-body-bytes", MAX_BODY,
                         "--header-timeout", 1, "--keep-alive-timeout", 1, "--max-connections", 64)
    service = ServiceProcess(args, log_path=root / "service.log")
    ready = service.start()
    yield {"service": service, "ready": ready, "fast": ready["replica_urls"][0], "url": ready["url"],
           "state_dir": root / "state"}
    service.stop()


def _raw_exchange(base: str, data: bytes, timeout_s: float = 20.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a new connection; (status, headers, body) of the answer."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as connection:
        try:
            connection.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # the server answered and closed before all was sent
            pass
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        chunked = headers.get("transfer-encoding") == "chunked"
        while (not body.endswith(b"0\r\n\r\n") if chunked else len(body) < int(headers.get("content-length", 0))):
            chunk = connection.recv(65536)
            if not chunk:
                break
            body += chunk
    if chunked:
        decoded = b""
        while body:
            size, _, rest = body.partition(b"\r\n")
            if int(size, 16) == 0:
                break
            decoded, body = decoded + rest[: int(size, 16)], rest[int(size, 16) + 2:]
        body = decoded
    return int(lines[0].split()[1]), headers, body


def _post_head(path: str, extra: str) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}\r\n".encode()


def _replica_pid(service) -> int:
    from recbandits.loadgen.service_process import session_pids
    from recbandits.serve.runner import process_argv

    pids = [pid for pid in session_pids(service.process.pid)
            if process_argv(pid)[0].startswith("ray::ServeReplica:recbandits:Recommender")]
    assert len(pids) == 1, pids
    return pids[0]


def _rss_mb(pid: int) -> float:
    from pathlib import Path

    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_bodies_over_the_limit_get_413_before_they_are_read(limited):
    import orjson

    replica = _replica_pid(limited["service"])
    before = _rss_mb(replica)
    for base in (limited["fast"], limited["url"]):
        # 100 MB announced, 1 MB sent: the answer comes without the rest.
        status, headers, body = _raw_exchange(base, _post_head("/v1/rank", "Content-Length: 100000000\r\n") +
                                              b"x" * (1 << 20))
        assert status == 413, (status, body)
        error = orjson.loads(body)
        assert error["message"] == f"body: 100000000 bytes exceed max_body_bytes={MAX_BODY}"
        assert error["detail"] == [{"loc": ["body"], "msg": error["message"][6:], "type": "too_large"}]
        # Chunked, no length: refused as soon as it passes the limit.
        chunk = b"%x\r\n%s\r\n" % (16384, b" " * 16384)
        status, _, body = _raw_exchange(base, _post_head("/v1/rank", "Transfer-Encoding: chunked\r\n") + chunk * 64)
        assert status == 413 and b"chunked body exceeds" in body, (status, body)
    for _ in range(4):
        status, _, _ = _raw_exchange(limited["fast"], _post_head("/v1/rewards", "Content-Length: 20000000\r\n") +
                                     b" " * (4 << 20))
        assert status == 413
    assert _rss_mb(replica) - before < 32, (before, _rss_mb(replica))
    # A body under the limit is served as before.
    status, answer = request("POST", f"{limited['fast']}/v1/rank", {"context": [0.0, 1.0, 0.0, 0.0]})
    assert status == 200, answer


def test_connections_that_send_no_complete_request_are_closed(limited):
    import socket
    import time
    from urllib.parse import urlsplit

    parts = urlsplit(limited["fast"])
    for data in (b"", b"POST /v1/rank HTTP/1.1\r\nHost: 127.0.0.1\r\n"):
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as connection:
            connection.sendall(data)
            started = time.monotonic()
            assert connection.recv(1024) == b""  # closed by the server (header timeout 1 s)
            assert time.monotonic() - started < 8
    # Idle after a complete exchange: the keep-alive timeout (1 s) closes it.
    body = b'{"context": [1, 0, 0, 0]}'
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as connection:
        connection.sendall(_post_head("/v1/rank", f"Content-Length: {len(body)}\r\n") + body)
        answer = b""
        while b"}" not in answer:
            answer += connection.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert connection.recv(1024) == b"" and time.monotonic() - started < 8


def test_overload_is_refused_at_once_with_retry_after(limited):
    """2 working + 2 queued per replica, 64 connections per server: of 200 requests arriving at once on their own
    connections to the replica and 100 to the proxy most are refused with 503 and Retry-After, in the service's
    error format."""
    from concurrent.futures import ThreadPoolExecutor

    import orjson

    body = b'{"context": [0.5, 0.5, 0.0, 1.0]}'
    data = _post_head("/v1/rank", f"Content-Length: {len(body)}\r\nConnection: close\r\n") + body
    bases = [limited["fast"]] * 200 + [limited["url"]] * 100
    with ThreadPoolExecutor(300) as pool:
        answers = list(pool.map(lambda base: _raw_exchange(base, data), bases))
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    refused = [(headers, body) for status, headers, body in answers if status == 503]
    assert refused and statuses.count(200) >= 4, statuses
    assert all(headers.get("retry-after") == "2" for headers, _ in refused), refused[0]
    # Refused by the in-flight limit or the connection limit (serve/limits.py), or, when a request passed the first
    # as another finished, by Ray Serve's own admission control (the same limits), whose plain-text answer the
    # in-flight limit replaces: every refusal is in the service's error format.
    messages = {orjson.loads(body)["message"] for _, body in refused}
    assert messages <= {"service: overloaded (4 requests in flight); retry after 2 s",
                        "connection: the server has 64 connections open; retry later"}, messages
    status, answer = request("POST", f"{limited['fast']}/v1/rank", {"context": [0.5, 0.5, 0.0, 1.0]})
    assert status == 200, answer  # and serving again right after


async def _discard(message) -> None:
    """An ASGI ``send`` that drops what it is sent."""


def test_ray_serves_own_refusal_is_answered_in_the_service_format():
    """A request that passes the in-flight limit as another finishes can still be refused by Ray Serve's admission
    control (plain text, Ray's own ASGI messages): the limit answers it with its JSON refusal; a JSON 503 of the
    application (a failed log write) passes unchanged."""
    import orjson
    from ray.serve._private.http_util import convert_object_to_asgi_messages

    from recbandits.serve.limits import InFlightLimit

    async def exchange(inner_messages) -> list[dict]:
        async def app(scope, receive, send):
            for message in inner_messages:
                await send(message)

        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        await InFlightLimit(app, limit=4, retry_after_s=2)({"type": "http"}, None, send)
        return sent

    ray_refusal = convert_object_to_asgi_messages("Request dropped due to backpressure", status_code=503,
                                                  extra_headers=[(b"retry-after", b"2")])
    start, body = asyncio.run(exchange(ray_refusal))
    assert start["status"] == 503 and dict(start["headers"])[b"retry-after"] == b"2"
    assert dict(start["headers"])[b"content-type"] == b"application/json"
    assert orjson.loads(body["body"]) == {
        "message": "service: overloaded (4 requests in flight); retry after 2 s",
        "detail": [{"loc": ["service"], "msg": "overloaded (4 requests in flight); retry after 2 s",
                    "type": "overloaded"}]}
    application_503 = convert_object_to_asgi_messages({"message": "log: disk full"}, status_code=503)
    assert asyncio.run(exchange(application_503)) == application_503


def test_the_in_flight_limit_shrinks_under_sustained_overload_and_grows_back():
    """Windows of 0.1 s: a median latency above half the 50 ms target in two windows in a row that refused requests
    halves the limit at most (in proportion to the excess), down to 8; a single slow window, or slow windows that
    refused nothing (a stall at a sustainable rate), change nothing; windows at or under half the target grow it
    by an eighth back to the ceiling."""
    from recbandits.serve.limits import InFlightLimit

    limiter = InFlightLimit(None, limit=128, retry_after_s=1, latency_target_s=0.05)

    def window(latency_s: float, refused: bool = True) -> int:
        """A window of 8 completions, the last one closing it, with or without a refusal in it."""
        start = limiter._window_start
        if refused:
            limiter.in_flight = limiter.limit
            asyncio.run(limiter({"type": "http"}, None, _discard))
            limiter.in_flight = 0
        for _ in range(InFlightLimit.MIN_WINDOW_REQUESTS - 1):
            limiter.completed(start + 0.01, latency_s)
        limiter.completed(start + InFlightLimit.WINDOW_S + 1e-6, latency_s)
        return limiter.limit

    assert [window(0.005) for _ in range(2)] == [128, 128]  # at the ceiling already
    assert [window(0.2), window(0.005)] == [128, 128]  # one stall
    assert [window(0.2, refused=False) for _ in range(5)] == [128] * 5  # slow, but the limit was never reached
    assert [window(0.03125) for _ in range(2)] == [128, 102]  # 25 ms / 31.25 ms = 0.8
    assert [window(0.5) for _ in range(5)] == [51, 25, 12, 8, 8]  # by half at most, to the floor
    assert [window(0.025) for _ in range(6)] == [9, 10, 11, 12, 13, 14]  # at half the target: +1/8, at least 1
    assert max(window(0.001) for _ in range(40)) == 128
    fewer = InFlightLimit(None, limit=4, retry_after_s=1, latency_target_s=0.05)
    assert fewer.floor == 4  # never below the configured limit's own size when that is small
    fixed = InFlightLimit(None, limit=128, retry_after_s=1, latency_target_s=None)
    assert fixed.latency_target_s is None  # 0 or None: the limit stays fixed


def test_an_overloaded_server_refuses_beyond_the_adapted_limit_and_names_it():
    """A real asyncio server whose requests take 40 ms whatever the load (above half the 50 ms target): with 32
    requests arriving every 10 ms the limit falls from 32 to the floor within half a second and the 503s name it."""
    import orjson

    from recbandits.serve.limits import InFlightLimit

    async def app(scope, receive, send):
        await asyncio.sleep(0.04)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    limiter = InFlightLimit(app, limit=32, retry_after_s=1, latency_target_s=0.05)

    async def one() -> tuple[int, bytes]:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        await limiter({"type": "http"}, None, send)
        return sent[0]["status"], sent[1]["body"]

    async def drive() -> list[tuple[int, bytes]]:
        tasks = []
        for _ in range(60):
            tasks += [asyncio.ensure_future(one()) for _ in range(32)]
            await asyncio.sleep(0.01)
        return await asyncio.gather(*tasks)

    answers = asyncio.run(drive())
    assert limiter.limit == 8
    messages = {orjson.loads(body)["message"] for status, body in answers if status == 503}
    assert "service: overloaded (8 requests in flight); retry after 1 s" in messages, messages
    assert {status for status, _ in answers} == {200, 503}


def test_the_admin_api_needs_the_token(limited):
    service, base = limited["service"], limited["fast"]
    for method, path, body in (("GET", "/v1/policy", None), ("GET", "/v1/policy/versions", None),
                               ("GET", "/v1/policy/versions/1", None), ("GET", "/v1/policy/versions/1/state", None),
                               ("POST", "/v1/policy/rollback", {"version": 1})):
        status, error = request(method, f"{base}{path}", body)
        assert status == 401, (path, status, error)
        assert error["message"].startswith("authorization: the admin API needs `Authorization: Bearer <token>`")
        assert error["detail"][0]["loc"] == ["header", "authorization"]
        status, error = request(method, f"{base}{path}", body, token="x" * 43)
        assert status == 403 and error["message"] == "authorization: this is not the admin token", error
        status, _ = request(method, f"{base}{path}", body, token=service.admin_token)
        assert status == 200, path
    status, _ = request("POST", f"{base}/v1/rank", {"context": [1, 0, 0, 0]})  # the decision API is public
    assert status == 200
    token_file = limited["state_dir"] / "admin.token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600" and len(service.admin_token) >= 32


def test_one_error_format_with_the_right_location(limited):
    service, base = limited["service"], limited["fast"]

    def check(status, error, expected_status, loc, start):
        assert status == expected_status, (status, error)
        assert error["message"].startswith(start), error
        assert error["detail"][0]["loc"] == loc, error

    check(*request("GET", f"{base}/nope"), 404, ["path"], "path: no endpoint /nope")
    status, headers, body = _raw_exchange(base, b"GET /v1/rank HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 405 and headers["allow"] == "POST" and body.startswith(b'{"message":"method: GET is not allowed')
    check(*request("GET", f"{base}/v1/policy/versions/abc", token=service.admin_token), 422, ["path", "version"],
          "version: ")
    check(*request("GET", f"{base}/v1/policy/versions/999999", token=service.admin_token), 404, ["path", "version"],
          "version: policy version 999999 is unknown")
    check(*request("POST", f"{base}/v1/rank", raw='{"event_id": "\\ud800", "context": [1, 0, 0, 0]}'), 422, ["body"],
          "body: malformed JSON (\\ud800 at byte 14 is a lone UTF-16 surrogate")
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"):
        check(*request("POST", f"{base}/v1/rank", {"context": [1, 0, 0, 0]}, headers={"content-type": content_type}),
              415, ["header", "content-type"], f"content-type: '{content_type}' is not supported")
    body = b'{"context": [1, 0, 0, 0]}'
    status, _, answer = _raw_exchange(base, b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert status == 415 and answer.startswith(b'{"message":"content-type: missing: send application/json'), answer
    status, _ = request("POST", f"{base}/v1/rank", {"context": [1, 0, 0, 0]},
                        headers={"content-type": "application/json; charset=UTF-8"})
    assert status == 200


def test_state_files_are_private(limited):
    state_dir = limited["state_dir"]
    paths = [state_dir, *state_dir.rglob("*")]
    assert {"events.jsonl", "lock", "service.json", "admin.token", "endpoints.json", "snapshots"} <= {
        path.name for path in paths}
    wrong = {str(path): oct(path.stat().st_mode & 0o777) for path in paths
             if path.stat().st_mode & 0o777 != (0o700 if path.is_dir() else 0o600)}
    assert not wrong, wrong


def _listening_sockets(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket of these processes."""
    import psutil

    found = []
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:  # ended meanwhile
            continue
        found += [(pid, connection.laddr.ip, connection.laddr.port) for connection in connections
                  if connection.status == psutil.CONN_LISTEN]
    return found


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_the_local_ray_listens_on_the_loopback_only(limited):
    from recbandits.loadgen.service_process import session_pids
    from recbandits.serve.runner import process_argv

    sockets = _listening_sockets(session_pids(limited["service"].process.pid))
    assert len(sockets) > 5, sockets
    exposed = [(process_argv(pid)[0], address, port) for pid, address, port in sockets if address not in LOOPBACK]
    # Ray Serve 2.60 opens each replica's gRPC server on [::] (hard-coded; Ray's token authentication guards it).
    assert all(name.startswith("ray::ServeReplica") and address == "::" for name, address, _ in exposed), exposed


def test_endpoints_file_follows_a_replaced_replica(limited):
    """endpoints.json lists the replicas' current URLs: after a replica is killed and replaced, the new one's."""
    import json
    import os
    import signal
    import time

    path = limited["state_dir"] / "endpoints.json"
    first = json.loads(path.read_text())
    assert first["replica_urls"] == limited["ready"]["replica_urls"] and first["url"] == limited["url"]
    status, health = request("GET", f"{first['replica_urls'][0]}/healthz")
    old_replica = health["replica"]
    os.kill(_replica_pid(limited["service"]), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        urls = json.loads(path.read_text())["replica_urls"]
        try:
            answers = [request("GET", f"{url}/healthz", timeout=2) for url in urls]
        except OSError as error:  # a URL of the old replica, not yet rewritten
            answers = [(None, str(error))]
        if urls and all(status == 200 and answer["replica"] != old_replica for status, answer in answers):
            break
        time.sleep(1.0)
    else:
        raise AssertionError(f"endpoints.json still lists {urls}: {answers}")
    status, answer = request("POST", f"{urls[0]}/v1/rank", {"context": [1, 0, 0, 0]})
    assert status == 200, answer


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs as the state dir: a disk that a test can fill (as root only: mounting needs it)."""
    import os
    import subprocess

    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs",
                                            str(state_dir)], capture_output=True).returncode != 0:
        pytest.skip("a full disk needs a small tmpfs mounted as the state dir: root and mount(8) are required")
    try:
        yield state_dir
    finally:
        subprocess.run(["umount", "-l", str(state_dir)], check=True)


def _fill(directory) -> None:
    """Write a filler file until the file system is full (ENOSPC)."""
    import errno
    import os

    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as error:
        assert error.errno == errno.ENOSPC, error
    finally:
        os.close(fd)


@pytest.mark.slow
def test_a_full_disk_answers_503_and_unhealthy_then_serves_again_once_freed(small_disk, tmp_path):
    """Learner mode, where every replica's decisions are logged by the learner: the disk fills up under it."""
    import time

    port = free_port_block(12)
    service = ServiceProcess(_service_args(small_disk, port, "--context-dim", 2, "--num-arms", 2, "--learning",
                                           "learner", "--num-replicas", 1), log_path=tmp_path / "service.log")
    ready = service.start()
    base = ready["replica_urls"][0]
    try:
        acked = []
        for index in range(5):
            status, answer = request("POST", f"{base}/v1/rank", {"context": [1.0, float(index)]})
            assert status == 200, answer
            acked.append(answer["event_id"])
        _fill(small_disk)
        # The log file's last page may still take a few rows; then every decision is refused, none acknowledged.
        for _ in range(500):
            status, answer = request("POST", f"{base}/v1/rank", {"context": [0.5, 0.5]})
            if status != 200:
                break
            acked.append(answer["event_id"])
        assert status == 503 and answer["detail"][0]["type"] == "log_failed", answer
        assert answer["message"].startswith("service: unavailable: ") and "No space left on device" in answer["message"]
        status, health = request("GET", f"{base}/healthz")
        assert status == 503 and health["status"] == "unavailable", health
        assert health["reason"].startswith("learner: the event log failed: ") and "No space left" in health["reason"]
        # Freed, the service comes back by itself (Ray Serve replaces the unhealthy learner, which restores from
        # the log), without a restart, and nothing acknowledged was lost.
        (small_disk / "filler").unlink()
        deadline = time.monotonic() + 120
        while (status := request("POST", f"{base}/v1/rank", {"context": [1.0, 0.0]})[0]) != 200:
            assert time.monotonic() < deadline, f"still {status} two minutes after the disk was freed"
            time.sleep(0.5)
        status, health = request("GET", f"{base}/healthz")
        assert status == 200 and health["status"] == "ready", health
        assert set(acked) <= set(read_event_log(small_disk).query("kind == 'decision'")["event_id"])
    finally:
        service.stop()
    printed = (tmp_path / "service.log").read_text() + service.stdout
    assert "Traceback" not in printed and "Error" not in printed, printed  # refusals, not crashes


def test_a_full_state_dir_is_named_before_anything_starts(small_disk):
    from recbandits.serve.config import ServeConfig
    from recbandits.serve.state import StateDirError, check_state_dir

    _fill(small_disk)
    with pytest.raises(StateDirError, match=rf"^state dir {small_disk} has \d+ KiB free: the service logs every "
                                            r"decision there and needs at least 1 MiB"):
        check_state_dir(ServeConfig(state_dir=str(small_disk), context_dim=2, num_arms=2))
