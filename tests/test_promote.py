"""The promotion gate: a checkpoint evaluated on the service's own recent log against the serving version.

A linear world (4 arms, 3 context features, reward = x . theta_arm + noise). Checkpoints are trained offline
(``recbandits train``) on logged rows of it: ``good`` on its rewards, ``bad`` on their negation, ``other`` on a
world of 5 features. The service starts from ``bad`` with eps-greedy exploration (logged propensities) and learns
online from the world's rewards; then, over real HTTP and the ``recbandits promote`` command, ``bad`` is refused
with the numbers, ``good`` promoted, ``other`` refused as not fitting, and everything survives a restart, across
which a rollback to the version before the promotion restores that version's statistics.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import linear_world_rewards, train_linear_checkpoint
from typer.testing import CliRunner

from recbandits.cli import app
from recbandits.loadgen.service_process import ServiceProcess, free_port_block
from recbandits.loadgen.service_process import http_json as request
from recbandits.serve.eventlog import read_event_log

ARMS = ["a", "b", "c", "d"]
THETA = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-0.6, -0.6, -0.6]])
DECISIONS = 600


def _trained(tmp_path: Path, name: str, sign: float, dim: int = 3) -> Path:
    theta = THETA if dim == 3 else np.random.default_rng(5).normal(size=(len(ARMS), dim))
    return train_linear_checkpoint(tmp_path / name, ARMS, theta, sign, seed=len(name))


def _promote(service, checkpoint: Path, *extra: str):
    return CliRunner().invoke(app, ["promote", "--service", service["url"], "--checkpoint", str(checkpoint),
                                    "--admin-token-file", str(service["token_file"]), *extra])


def _serve_the_world(service, count: int, seed: int) -> None:
    """``count`` decisions on the world's contexts, each rewarded with the world's reward of the chosen arm."""
    rng = np.random.default_rng(seed)
    rewards = []
    for context in rng.normal(size=(count, 3)):
        status, answer = request("POST", f"{service['fast']}/v1/rank", {"context": context.tolist()})
        assert status == 200, answer
        arm = ARMS.index(answer["action"])
        rewards.append({"event_id": answer["event_id"],
                        "reward": float(linear_world_rewards(context[None], np.array([arm]), rng, THETA)[0])})
    for start in range(0, count, 500):
        status, answer = request("POST", f"{service['fast']}/v1/rewards", {"rewards": rewards[start:start + 500]})
        assert status == 200 and answer["rejected"] == 0, answer


def _start(root: Path, extra: list) -> dict:
    port = free_port_block(4)
    process = ServiceProcess(["--state-dir", root / "state", "--port", port, "--replica-port", port + 1, *extra],
                             log_path=root / "service.log")
    ready = process.start()
    return {"url": ready["url"], "fast": ready["replica_urls"][0], "process": process,
            "token": process.admin_token, "token_file": Path(ready["admin_token_file"])}


@pytest.mark.slow
def test_the_gate_promotes_a_better_policy_refuses_a_worse_one_and_survives_restart(tmp_path):
    good, bad = _trained(tmp_path, "good", 1.0), _trained(tmp_path, "bad", -1.0)
    other = _trained(tmp_path, "other", 1.0, dim=5)
    service = _start(tmp_path, [
        "--checkpoint", bad, "--exploration", "eps_greedy", "--epsilon", 0.3, "--learning", "in_process",
        "--join-window", 600, "--reward-rule", "first", "--update-interval", 0.0, "--snapshot-interval", 1.0])
    try:
        _serve_the_world(service, DECISIONS, seed=7)

        # The worse candidate: refused, with both values, the interval and the rows in the message.
        result = _promote(service, bad)
        assert result.exit_code == 1, result.output
        refused = re.search(r"refused: the candidate's dr value (-?\d+\.\d{4}) \(95% interval \[(-?\d+\.\d{4}), "
                            r"(-?\d+\.\d{4})\]\) does not beat what the serving policy earned, (-?\d+\.\d{4}) "
                            r"\(observed mean reward\), on the 600 newest rewarded decisions", result.output)
        assert refused, result.output
        value, low, high, observed = (float(group) for group in refused.groups())
        assert low < value < high and low < observed

        # The better one: promoted as a new version, which serves at once.
        result = _promote(service, good)
        assert result.exit_code == 0, result.output
        promoted = int(re.search(r"promoted as policy version (\d+): the candidate's dr value", result.output)[1])
        status, version = request("GET", f"{service['fast']}/v1/policy/versions/{promoted}", token=service["token"])
        assert status == 200 and version["version_kind"] == "promote" and version["snapshot"], version
        assert version["source"] == str(good.resolve()) and version["evaluation"]["candidate"]["low"] > \
            version["evaluation"]["observed_value"]
        status, answer = request("POST", f"{service['fast']}/v1/rank", {"context": [3.0, 0.0, 0.0]})
        assert answer["policy_version"] >= promoted

        # Another feature spec: refused before any evaluation, naming what differs.
        result = _promote(service, other)
        assert result.exit_code == 2
        assert (f"the service refused the request (422): checkpoint: {other.resolve()}: its model (disjoint, context "
                "5, arms 4) does not fit the service (disjoint, context 3, arms 4)") in " ".join(result.output.split())
        status, answer = request("POST", f"{service['fast']}/v1/policy/promote", {"checkpoint": str(good)})
        assert status == 401
        status, answer = request("POST", f"{service['fast']}/v1/policy/promote",
                                 {"checkpoint": str(good), "window": 5}, token=service["token"])
        assert status == 422 and answer["detail"][0]["loc"] == ["body", "window"], answer
        damaged = tmp_path / "damaged"
        damaged.mkdir()
        for name in ("module_state.pkl", "class_and_ctor_args.pkl"):
            (damaged / name).write_bytes(b"not a pickle")
        status, answer = request("POST", f"{service['fast']}/v1/policy/promote", {"checkpoint": str(damaged)},
                                 token=service["token"])
        assert status == 422 and answer["message"].startswith(f"checkpoint: {damaged} cannot be loaded ("), answer

        status, before = request("GET", f"{service['fast']}/v1/policy/versions/{promoted - 1}/state",
                                 token=service["token"])
        assert status == 200
        status, listing = request("GET", f"{service['fast']}/v1/policy/promotions", token=service["token"])
        assert [row["promoted"] for row in listing["promotions"]] == [True, False]
    finally:
        service["process"].stop()

    logged = read_event_log(tmp_path / "state", "promotion")
    assert list(logged["promoted"]) == [False, True] and list(logged["policy_version"].fillna(0)) == [0, promoted]
    assert logged["evaluation"][0]["observed_value"] == pytest.approx(observed, abs=5e-5)

    service = _start(tmp_path, [])
    try:
        status, listing = request("GET", f"{service['fast']}/v1/policy/promotions", token=service["token"])
        assert [row["promoted"] for row in listing["promotions"]] == [True, False]
        status, version = request("GET", f"{service['fast']}/v1/policy/versions/{promoted}", token=service["token"])
        assert status == 200 and version["version_kind"] == "promote"
        status, rolled = request("POST", f"{service['fast']}/v1/policy/rollback", {"version": promoted - 1},
                                 token=service["token"])
        assert status == 200, rolled
        status, after = request("GET", f"{service['fast']}/v1/policy/versions/{rolled['policy_version']}/state",
                                token=service["token"])
        for name, value in before["state"].items():
            np.testing.assert_allclose(np.asarray(after["state"][name]), np.asarray(value), rtol=1e-12, err_msg=name)
    finally:
        service["process"].stop()
