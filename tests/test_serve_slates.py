"""Serving a ranking policy: slates with per-slot probabilities, per-slot feedback, learned as in simulation.

The kernel's slot probabilities are checked against the frequencies of its own choices; the core's slate
records (cascading clicks, score vectors, the default on expiry) against the simulation's rule and across a
restart; and, over real HTTP, a checkpoint of ``recbandits simulate --env movielens-ranking`` is served to the
ranking simulator's users: every slate the service shows is the one a policy trained on the same feedback in
simulation shows, and the service's statistics equal the simulation-trained ones.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from recbandits.algos import kernel
from recbandits.algos.candidates import CandidateSet, LinearCandidatePolicy, build_module
from recbandits.serve.config import ServeConfig
from recbandits.serve.core import BanditCore
from recbandits.serve.schemas import Rejection
from recbandits.serve.state import prepare_state_dir


@pytest.mark.parametrize("exploration", ["ucb", "eps_greedy", "random"])
def test_slot_probabilities_are_the_frequencies_of_the_slates_shown(exploration):
    # Ties on purpose: candidates 1, 2, 3 share the top score, 4 and 5 the next; one padded candidate.
    scores = torch.tensor([[0.5, 2.0, 2.0, 2.0, 1.0, 1.0, -torch.inf]], dtype=torch.float64)
    valid = torch.tensor([[True] * 6 + [False]])
    generator = torch.Generator().manual_seed(0)
    draws = 20_000
    counts = torch.zeros(7, 4, dtype=torch.float64)  # candidate x slot
    reported = torch.zeros(7, 4, dtype=torch.float64)
    for _ in range(draws // 1000):
        batch = scores.expand(1000, 7)
        if exploration == "random":  # its scores are uniform draws (Posterior.scores)
            batch = torch.rand(1000, 7, dtype=torch.float64, generator=generator).masked_fill(~valid, -torch.inf)
        slates = kernel.choose(batch, exploration, 0.3, generator, 4, valid=valid.expand(1000, 7))
        assert not (slates == 6).any()  # padding is never shown
        for slot in range(4):
            counts[:, slot] += torch.bincount(slates[:, slot], minlength=7).to(torch.float64)
        probabilities = kernel.slot_probabilities(batch, slates, exploration, 0.3, valid.expand(1000, 7))
        for slot in range(4):  # the probability reported for each (candidate, slot) it was shown in
            reported[slates[:, slot], slot] = probabilities[:, slot]
    seen = counts > 0
    np.testing.assert_allclose(reported[seen].numpy(), (counts / draws)[seen].numpy(), atol=0.01)
    if exploration == "ucb":  # exact: each of the three tied candidates a third of the time in slots 0-2
        np.testing.assert_allclose(kernel.slot_probabilities(scores, torch.tensor([[2, 1, 3, 5]]), exploration, 0.3,
                                                             valid).numpy(), [[1 / 3, 1 / 3, 1 / 3, 1 / 2]])


def test_slate_feedback_is_the_simulations_rule():
    observed, targets = kernel.slate_feedback(4, clicked_position=torch.tensor([2, -1, 0]))
    assert observed.tolist() == [[True, True, True, False], [True] * 4, [True, False, False, False]]
    assert targets[observed].tolist() == [0, 0, 1, 0, 0, 0, 0, 1]
    observed, targets = kernel.slate_feedback(3, slot_rewards=torch.tensor([[0.0, 1.0, 1.0]]))
    assert observed.all() and targets.tolist() == [[0.0, 1.0, 1.0]]


FIELDS = dict(shape="shared", context_dim=2, arm_dim=3, slate_size=3, model_config={"exploration": "ucb"})


def _slate_config(tmp_path, **overrides):
    settings = dict(state_dir=str(tmp_path / "state"), join_window_s=30.0, snapshot_interval_s=60.0, **FIELDS)
    settings.update(overrides)
    return prepare_state_dir(ServeConfig(**settings))


def _decision_row(core, event_id, rng):
    """A decision row as the service logs it (app.Recommender._row), decided by the core's policy."""
    context, arm_features = rng.normal(size=2), rng.normal(size=(4, 3))
    decision = core.policy.decide([CandidateSet(context=context, arm_features=arm_features)])[0]
    return {"kind": "decision", "event_id": event_id, "policy_version": core.version_id, "watermark": core.watermark,
            "context": context.tolist(), "candidates": [f"m{k}" for k in range(4)], "action": f"m{decision.chosen}",
            "model": 0, "chosen_features": arm_features[decision.chosen].tolist(),
            "candidate_features": arm_features.tolist(), "slate": decision.slate,
            "slot_probabilities": decision.slot_probabilities}, decision


def test_core_learns_slates_slot_by_slot_and_replays_them(tmp_path):
    config = _slate_config(tmp_path)
    rng = np.random.default_rng(3)
    expected = build_module(LinearCandidatePolicy(config.policy_fields()).fields)
    expected.refresh()

    def learn_expected(decision, observed, targets):
        features = torch.from_numpy(decision.slate_features)[observed[0]]
        expected.absorb(*expected.statistics(features, torch.zeros(len(features), dtype=torch.int64),
                                             targets[0][observed[0]]))

    async def life():
        core = BanditCore(config)
        rows, decisions = zip(*(_decision_row(core, f"e{i}", rng) for i in range(5)), strict=True)
        await core.log_decisions(list(rows))
        assert all(len(decision.slate) == 3 for decision in decisions)
        assert (await core.record_reward("e0", None, clicks=[1]))["reward_total"] == 1.0
        learn_expected(decisions[0], *kernel.slate_feedback(3, clicked_position=torch.tensor([1])))
        await core.record_reward("e1", None, clicks=[])  # no click: every slot examined and skipped
        learn_expected(decisions[1], *kernel.slate_feedback(3, clicked_position=torch.tensor([-1])))
        await core.record_reward("e2", None, clicks=[2, 0])  # the cascade stops at the first click, slot 0
        learn_expected(decisions[2], *kernel.slate_feedback(3, clicked_position=torch.tensor([0])))
        await core.record_reward("e3", None, slot_rewards=[0.0, 1.0, 0.5])
        learn_expected(decisions[3], *kernel.slate_feedback(3, slot_rewards=torch.tensor([[0.0, 1.0, 0.5]])))
        for feedback, field, code in [({"clicks": [3]}, "clicks[0]", "outside_slate"),
                                      ({"clicks": [1, 1]}, "clicks[1]", "duplicate"),
                                      ({"slot_rewards": [1.0]}, "slot_rewards", "wrong_dimension")]:
            with pytest.raises(Rejection) as refused:
                await core.record_reward("e4", None, **feedback)
            assert (refused.value.status, refused.value.field, refused.value.code) == (422, field, code)
        with pytest.raises(Rejection, match="is a slate of 3 slots: send clicks"):
            await core.record_reward("e4", 1.0)
        with pytest.raises(Rejection) as again:  # a slate's feedback is complete: the event is closed
            await core.record_reward("e0", None, clicks=[0])
        assert again.value.status == 409
        core.expire_due(time.time() + 31.0)  # e4: the default reward 0 on every slot
        learn_expected(decisions[4], torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.float64))
        await core.log.drain()
        core.learn(force=True)
        assert core.counters["learning_records"] == 2 + 3 + 1 + 3 + 3
        state = core.policy.get_state()
        await core.close()
        return state

    live = asyncio.run(life())
    want = expected.get_state()
    for key in ("data_precision", "data_response", "response_square", "counts"):
        np.testing.assert_allclose(live[key], want[key], rtol=1e-12, atol=1e-12, err_msg=key)
    restarted = BanditCore(config)  # the snapshot at close, then nothing to replay
    np.testing.assert_allclose(restarted.policy.get_state()["data_precision"], want["data_precision"], rtol=1e-12)
    assert restarted.counters["learning_records"] == 12
    asyncio.run(restarted.close())
    # Without snapshots every slot record is replayed from the log alone.
    for snapshot in (config.state_path / "snapshots").glob("v*.npz"):
        snapshot.unlink()
    rebuilt = BanditCore(config)
    np.testing.assert_allclose(rebuilt.policy.get_state()["data_response"], want["data_response"], rtol=1e-12)
    assert rebuilt.restore_info["replayed_records"] == 12
    asyncio.run(rebuilt.close())


def test_a_slate_needs_the_shared_shape():
    with pytest.raises(ValueError, match="slates are served by the shared shape"):
        ServeConfig(shape="disjoint", slate_size=3)


def _served_version_covers(url: str, token: str, seq: int, timeout_s: float = 30.0) -> dict:
    """``GET /v1/policy`` once the replica serves the version that learned every reward up to ``seq``."""
    from recbandits.loadgen.service_process import http_json

    deadline = time.monotonic() + timeout_s
    while True:
        status, info = http_json("GET", f"{url}/v1/policy", token=token)
        assert status == 200, info
        if info["watermark"] >= seq and info["served_by_this_replica"] == info["policy_version"]:
            return info
        assert time.monotonic() < deadline, f"no served version covers seq {seq}: {info}"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_simulated_ranking_checkpoint_serves_and_learns_over_http_as_in_simulation(small_data_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from recbandits.algos.candidates import module_policy_fields
    from recbandits.algos.checkpoints import load_linear_module
    from recbandits.cli import app
    from recbandits.envs import MovieLensRankingVectorEnv
    from recbandits.loadgen.service_process import ServiceProcess, free_port_block, http_json

    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "simulate", "--env", "movielens-ranking", "--steps", "512", "--num-env-runners", "0", "--num-envs", "64",
        "--rollout-fragment-length", "4", "--rank", "6", "--num-candidates", "8", "--slate-size", "3",
        "--data-dir", str(small_data_dir), "--no-references", "--out", str(run)])
    assert result.exit_code == 0, result.output
    module = load_linear_module(run, "the test")  # what simulation trained; it keeps learning here as it would there
    fields = module_policy_fields(module)
    assert fields["slate_size"] == 3 and fields["model_config"]["exploration"] == "ucb"
    env = MovieLensRankingVectorEnv(num_envs=24, **json.loads((run / "config.json").read_text())["env_settings"])
    observations, _ = env.reset(seed=5)

    port = free_port_block(12)
    args = ["--state-dir", tmp_path / "state", "--port", port, "--replica-port", port + 1, "--learning", "in_process",
            "--update-interval", 0.0, "--join-window", 600.0, "--snapshot-interval", 1.0]  # nothing expires here
    service = ServiceProcess([*args, "--checkpoint", run], log_path=tmp_path / "service.log")
    ready = service.start()
    url, token = ready["replica_urls"][0], service.admin_token
    last_seq, clicks_sent = 0, 0
    try:
        for _ in range(3):
            _served_version_covers(url, token, last_seq)
            global_features = observations["global"].astype(np.float64)
            arm_features = observations["per_arm"].astype(np.float64)
            mirror = LinearCandidatePolicy(fields, module.get_state())
            expected = mirror.decide([CandidateSet(context=global_features[row], arm_features=arm_features[row])
                                      for row in range(env.num_envs)])
            answers = []
            for row in range(env.num_envs):
                candidates = [{"id": f"c{k}", "features": features.tolist()}
                              for k, features in enumerate(arm_features[row])]
                status, answer = http_json("POST", f"{url}/v1/rank",
                                           {"context": global_features[row].tolist(), "candidates": candidates})
                assert status == 200, answer
                answers.append(answer)
            slates = np.array([[int(item["id"][1:]) for item in answer["ranking"]] for answer in answers])
            # The slates served are the simulation-trained policy's, each slot shown with probability 1 (UCB).
            assert slates.tolist() == [decision.slate for decision in expected]
            assert all(item["probability"] == 1.0 for answer in answers for item in answer["ranking"])
            observations, _, _, _, infos = env.step(slates)
            for row, answer in enumerate(answers):  # the simulator's cascading clicks, through HTTP
                position = int(infos["clicked_position"][row])
                status, joined = http_json("POST", f"{url}/v1/reward", {"event_id": answer["event_id"],
                                                                        "clicks": [position] if position >= 0 else []})
                assert status == 200 and joined["status"] == "joined", joined
                last_seq, clicks_sent = max(last_seq, joined["seq"]), clicks_sent + (position >= 0)
            # The simulation's learning step on the same feedback (env_runner._slate_feedback).
            features = kernel.candidate_features(torch.from_numpy(global_features), torch.from_numpy(arm_features),
                                                 fields["interaction"])
            observed, targets = kernel.slate_feedback(3, clicked_position=infos["clicked_position"])
            slot_features = features[torch.arange(env.num_envs).unsqueeze(1), torch.from_numpy(slates)][observed]
            module.absorb(*module.statistics(slot_features, torch.zeros(len(slot_features), dtype=torch.int64),
                                             targets[observed]), decay=module.gamma)
        assert 0 < clicks_sent < 3 * env.num_envs  # the feedback had both clicks and skips
        info = _served_version_covers(url, token, last_seq)
        status, served = http_json("GET", f"{url}/v1/policy/versions/{info['policy_version']}/state", token=token)
        assert status == 200, served
    finally:
        service.stop()
    want = module.get_state()
    for key in ("data_precision", "data_response", "response_square", "counts"):
        np.testing.assert_allclose(np.asarray(served["state"][key]), want[key], rtol=1e-9, atol=1e-9, err_msg=key)
    # A restart from the state dir alone (its snapshot and log) serves the same statistics.
    restarted = ServiceProcess(args, log_path=tmp_path / "restarted.log")
    ready = restarted.start()
    try:
        url, token = ready["replica_urls"][0], restarted.admin_token
        info = _served_version_covers(url, token, last_seq)
        status, again = http_json("GET", f"{url}/v1/policy/versions/{info['policy_version']}/state", token=token)
        assert status == 200, again
    finally:
        restarted.stop()
    np.testing.assert_allclose(np.asarray(again["state"]["data_precision"]), want["data_precision"], rtol=1e-9)
