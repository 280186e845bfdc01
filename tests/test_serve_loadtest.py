"""`recbandits loadtest` against a real service over HTTP: every request accounted for, every reward timed."""

from __future__ import annotations

import pytest

from recbandits.loadgen.loadtest import LoadTestSpec, _slow_seconds, run_loadtest
from recbandits.loadgen.service_process import ServiceProcess, free_port_block

pytestmark = pytest.mark.slow  # a service under load: `make test-quick` leaves it out


def test_loadtest_accounts_for_every_request_and_times_every_reward(tmp_path):
    port = free_port_block(12)
    args = [
        "--state-dir", tmp_path / "state", "--port", port, "--replica-port", port + 1, "--context-dim", 20,
        "--num-arms", 20, "--join-window", 30, "--snapshot-interval", 10,
    ]  # fmt: skip
    process = ServiceProcess(args, log_path=tmp_path / "service.log")
    ready = process.start()
    try:
        # The default (synthetic) data; rewards batched as an event collector would send them.
        spec = LoadTestSpec(urls=ready["replica_urls"], rate=100.0, duration_s=4.0, warmup_s=1.0,
                            reward_delay=(0.05, 0.3), reward_batch_s=0.05, admin_token=process.admin_token)
        report = run_loadtest(spec)
    finally:
        process.stop()
    assert report["errors"] == {}
    assert report["rank"]["ok"] == report["issued"] == report["regret"]["decisions"]
    assert report["reward"]["ok"] == report["reward"]["sent"] == report["issued"]
    # Every acknowledged reward, the ones after the last arrival included, reached a served version.
    assert report["click_to_policy_s"]["observed"] == report["issued"]
    assert report["click_to_policy_s"]["not_observed"] == 0
    assert report["policy_version"]["observations_end"] == report["issued"]
    # The learning service beats the frozen copy of its (cold) starting policy on the same users.
    assert report["regret"]["online_cumulative"] < report["regret"]["frozen_cumulative"]
    tail = report["slow_seconds"]
    assert sum(item["slow"] for item in tail["worst"]) <= tail["slow"] <= report["rank"]["steady_ok"]


def test_slow_seconds_counts_the_tail_per_second_sent():
    # (sent, received): 60 ms (slow), 10 ms, 200 ms (slow), 51 ms (slow), seconds from a window start at 100 s.
    rows = [(100.2, 100.26), (100.5, 100.51), (102.1, 102.3), (102.9, 102.951)]
    assert _slow_seconds(rows, 100.0) == {
        "threshold_ms": 50.0, "slow": 3, "seconds_with_slow": 2, "seconds": 3,
        "worst": [{"second": 2, "slow": 2}, {"second": 0, "slow": 1}],
    }
    assert _slow_seconds([], 100.0)["slow"] == 0


def test_loadtest_drives_a_ranking_service_with_the_ranking_envs_click_models(tmp_path, small_data_dir):
    port = free_port_block(12)
    args = [
        "--state-dir", tmp_path / "state", "--port", port, "--replica-port", port + 1, "--shape", "shared",
        "--context-dim", 6, "--arm-dim", 6, "--slate-size", 3, "--exploration", "ucb", "--join-window", 30,
        "--snapshot-interval", 10,
    ]  # fmt: skip
    process = ServiceProcess(args, log_path=tmp_path / "service.log")
    ready = process.start()
    reports = {}
    try:
        # Cascading clicks one reward call each, then the position-based model's score vectors in batches.
        for choice_model, batch_s in (("cascade", 0.0), ("position_based", 0.05)):
            spec = LoadTestSpec(urls=ready["replica_urls"], rate=60.0, duration_s=4.0, warmup_s=1.0,
                                reward_delay=(0.05, 0.3), reward_batch_s=batch_s, data_dir=str(small_data_dir),
                                num_candidates=8, choice_model=choice_model, seed=len(reports),
                                admin_token=process.admin_token)
            reports[choice_model] = run_loadtest(spec)
    finally:
        process.stop()
    for report in reports.values():
        assert report["errors"] == {}
        assert report["rank"]["ok"] == report["issued"] == report["regret"]["decisions"]
        assert report["reward"]["ok"] == report["reward"]["sent"] == report["issued"]
        assert report["click_to_policy_s"]["not_observed"] == 0
    cascade, position_based = reports["cascade"], reports["position_based"]
    # Every slot a cascade examined is one observation (3 when nothing was clicked), every slot of a score vector.
    assert cascade["issued"] <= cascade["policy_version"]["observations_end"] <= 3 * cascade["issued"]
    assert position_based["policy_version"]["observations_end"] == (
        cascade["policy_version"]["observations_end"] + 3 * position_based["issued"])
    # Regret in expected clicks (tests/test_loadtest_users.py checks it against the env's): a slate's is at most 1
    # under the cascade; a few hundred decisions are too few to rank the online and the frozen policy.
    for name in ("online_cumulative", "frozen_cumulative"):
        assert 0 < cascade["regret"][name] < cascade["issued"], cascade["regret"]
