"""Serving pieces without Ray: scoring against the RLModule, learning records, the event log, restart replay.

The HTTP behaviour is tested against a real service in test_serve_api.py, test_serve_learner.py and
test_serve_restart.py; these tests pin the arithmetic and the on-disk formats quickly.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from recbandits.algos.candidates import CandidateSet, LearningRecord, LinearCandidatePolicy, build_module
from recbandits.serve.config import ServeConfig
from recbandits.serve.core import BanditCore
from recbandits.serve.eventlog import LOG_FILE, read_event_log, scan_log
from recbandits.serve.schemas import RankRequest, Rejection, RequestValidator
from recbandits.serve.state import prepare_state_dir


def _random_state(module, rng, rows: int = 50):
    """Statistics of random transitions for ``module`` (so theta and A^-1 are not trivial)."""
    if module.shape == "disjoint":
        features = torch.from_numpy(rng.normal(size=(rows, module.feature_dim)))
        models = torch.from_numpy(rng.integers(module.num_models, size=rows))
    else:
        features = torch.from_numpy(rng.normal(size=(rows, module.feature_dim)))
        models = torch.zeros(rows, dtype=torch.int64)
    module.absorb(*module.statistics(features, models, torch.from_numpy(rng.normal(size=rows))))
    return module.get_state()


def test_disjoint_scores_match_the_module():
    fields = {"shape": "disjoint", "context_dim": 5, "num_arms": 6, "arm_dim": 0, "arm_ids": list("abcdef"),
              "interaction": False, "model_config": {"exploration": "ucb", "alpha": 0.7}}
    module = build_module(fields)
    state = _random_state(module, np.random.default_rng(0))
    policy = LinearCandidatePolicy(fields, state)
    contexts = np.random.default_rng(1).normal(size=(4, 5))
    # float64 from the module's public posterior: theta_k.x + alpha sqrt(x^T A_k^-1 x).
    theta, covariance = module.theta.numpy(), module.covariance.numpy()
    expected = np.array([[theta[k] @ x + 0.7 * np.sqrt(x @ covariance[k] @ x) for k in range(6)] for x in contexts])
    arms = np.arange(6)
    decisions = policy.decide([CandidateSet(context=row, arms=arms) for row in contexts])
    np.testing.assert_allclose(np.stack([decision.scores for decision in decisions]), expected, rtol=1e-12)
    assert [decision.chosen for decision in decisions] == list(expected.argmax(1))
    # The module's own UCB scores (its widths are float32 products) agree to float32 precision.
    np.testing.assert_allclose(module.scores(module.features(contexts), "ucb").numpy(), expected, rtol=1e-5)
    # A subset of candidates: the same scores, gathered; the chosen candidate's model is its arm.
    subset = np.array([4, 1])
    decision = policy.decide([CandidateSet(context=contexts[0], arms=subset)])[0]
    np.testing.assert_allclose(decision.scores, expected[0, subset], rtol=1e-12)
    assert decision.model == subset[decision.chosen] and decision.order[0] == decision.chosen
    np.testing.assert_array_equal(decision.features, contexts[0])


@pytest.mark.parametrize("interaction", [False, True])
def test_shared_scores_match_the_module(interaction):
    fields = {"shape": "shared", "context_dim": 3, "num_arms": 0, "arm_dim": 2, "arm_ids": None,
              "interaction": interaction, "model_config": {"exploration": "ucb", "alpha": 1.3}}
    module = build_module(fields)
    rng = np.random.default_rng(2)
    state = _random_state(module, rng)
    policy = LinearCandidatePolicy(fields, state)
    global_features, arm_features = rng.normal(size=(2, 3)), rng.normal(size=(2, 7, 2))
    expected = module.scores(module.features({"global": global_features, "per_arm": arm_features}), "ucb").numpy()
    jobs = [CandidateSet(context=global_features[b], arm_features=arm_features[b]) for b in range(2)]
    decisions = policy.decide(jobs)
    np.testing.assert_allclose(np.stack([decision.scores for decision in decisions]), expected, rtol=1e-12)
    features = module.features({"global": global_features, "per_arm": arm_features}).numpy()
    for b, decision in enumerate(decisions):
        np.testing.assert_allclose(decision.features, features[b, decision.chosen])
        np.testing.assert_allclose(policy.learning_features(global_features[b], arm_features[b, decision.chosen]),
                                   decision.features)


def test_explorations_and_probabilities():
    base = {"shape": "disjoint", "context_dim": 2, "num_arms": 4, "arm_dim": 0, "arm_ids": list("wxyz"),
            "interaction": False}
    job = CandidateSet(context=np.array([1.0, 0.5]), arms=np.arange(4))
    cold = LinearCandidatePolicy({**base, "model_config": {"exploration": "greedy"}})
    choices = {cold.decide([job])[0].chosen for _ in range(60)}
    assert choices == {0, 1, 2, 3}  # exact ties at a cold start are broken at random
    np.testing.assert_allclose(cold.decide([job])[0].probabilities, 0.25)
    eps = LinearCandidatePolicy({**base, "model_config": {"exploration": "eps_greedy", "epsilon": 0.2}})
    records = [LearningRecord(1, 2, np.array([1.0, 0.5]), 5.0)]
    eps.absorb(records)
    decision = eps.decide([job])[0]
    np.testing.assert_allclose(decision.probabilities, [0.05, 0.05, 0.85, 0.05])
    thompson = LinearCandidatePolicy({**base, "model_config": {"exploration": "thompson"}})
    assert thompson.decide([job])[0].probabilities is None
    random = LinearCandidatePolicy({**base, "model_config": {"exploration": "random"}})
    np.testing.assert_allclose(random.decide([job])[0].probabilities, 0.25)


def test_order_is_the_chosen_then_the_rest_best_first_and_non_finite_scores_are_refused():
    fields = {"shape": "disjoint", "context_dim": 1, "num_arms": 5, "arm_dim": 0, "arm_ids": list("abcde"),
              "interaction": False, "model_config": {"exploration": "greedy", "lambda_": 1.0}}
    policy = LinearCandidatePolicy(fields)
    # theta_k = r_k / 2 after one record per arm with x = 1 (ridge, lambda 1): scores 1, 3, 3, 0, 2.
    policy.absorb([LearningRecord(k + 1, k, np.array([1.0]), 2.0 * score) for k, score in enumerate([1, 3, 3, 0, 2])])
    job = CandidateSet(context=np.array([1.0]), arms=np.arange(5))
    orders = set()
    for _ in range(40):
        decision = policy.decide([job])[0]
        assert decision.chosen in (1, 2)  # the tie of the best two is broken at random
        np.testing.assert_allclose(decision.probabilities, [0, 0.5, 0.5, 0, 0])
        orders.add(tuple(decision.order))
    assert orders == {(1, 2, 4, 0, 3), (2, 1, 4, 0, 3)}
    policy.theta[3] = np.nan  # a broken model: the decision is refused, never logged with a null score
    with pytest.raises(FloatingPointError, match="not finite"):
        policy.decide([job])


def test_learning_records_give_the_closed_form_statistics():
    fields = {"shape": "disjoint", "context_dim": 3, "num_arms": 2, "arm_dim": 0, "arm_ids": ["0", "1"],
              "interaction": False, "model_config": {}}
    policy = LinearCandidatePolicy(fields)
    x, y = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, -1.0])
    # Event 1 (model 0): rewards 1.5 then 2.0 under rule "sum"; event 2 (model 1): one reward of -1.
    policy.absorb([LearningRecord(1, 0, x, 1.5), LearningRecord(3, 1, y, -1.0)])
    policy.absorb([LearningRecord(4, 0, x, 2.0, full=False, previous=1.5)])
    state = policy.get_state()
    np.testing.assert_allclose(state["data_precision"][0], np.outer(x, x))
    np.testing.assert_allclose(state["data_response"][0], 3.5 * x)
    np.testing.assert_allclose(state["response_square"], [3.5**2, 1.0])
    np.testing.assert_array_equal(state["counts"], [1.0, 1.0])
    np.testing.assert_allclose(policy.theta[0], np.linalg.solve(np.eye(3) + np.outer(x, x), 3.5 * x))


def _config(tmp_path, **overrides) -> ServeConfig:
    settings = dict(state_dir=str(tmp_path / "state"), context_dim=2, num_arms=3, arm_ids=["a", "b", "c"],
                    model_config={"exploration": "greedy"}, join_window_s=30.0, snapshot_interval_s=60.0)
    settings.update(overrides)
    return prepare_state_dir(ServeConfig(**settings))


def _row(core, event_id, context, arm):
    model = core.policy.arm_index[arm]
    return {"kind": "decision", "event_id": event_id, "policy_version": core.version_id,
            "watermark": core.watermark, "context": context, "candidates": [arm], "action": arm, "model": model,
            "chosen_features": None}


def test_core_restart_replays_after_the_snapshot_and_repairs_a_torn_line(tmp_path):
    config = _config(tmp_path)

    async def first_life():
        core = BanditCore(config)
        await core.log_decisions([_row(core, f"e{i}", [1.0, float(i)], "abc"[i % 3]) for i in range(6)])
        for i in range(3):
            await core.record_reward(f"e{i}", float(i + 1))
        core.learn(force=True)
        await core.snapshot()  # covers e0..e2
        for i in range(3, 5):
            await core.record_reward(f"e{i}", float(i + 1))
        await core.log.drain()
        with pytest.raises(Rejection) as duplicate:
            await core.record_reward("e0", 9.0)
        assert duplicate.value.status == 409
        # A crash: no close(), and a torn line (a write the crash interrupted) at the end of the log.
        core.log.close()
        core._lock.release()
        with open(config.state_path / LOG_FILE, "ab") as log:
            log.write(b'{"kind":"reward","event_id":"e5","rew')

    asyncio.run(first_life())
    core = BanditCore(config)
    assert core.restore_info["restored"] and core.restore_info["replayed_records"] == 2
    assert core.version["version_kind"] == "restore"
    expected = np.zeros(3)
    for i in range(5):
        expected[i % 3] += 1
    np.testing.assert_array_equal(core.policy.counts, expected)
    np.testing.assert_allclose(core.policy.get_state()["data_response"][1], 2.0 * np.array([1.0, 1.0]) +
                               5.0 * np.array([1.0, 4.0]))
    assert set(core.open) == {"e5"}  # open again, with its window
    rows = list(scan_log(config.state_path / LOG_FILE))
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))  # torn line gone, seqs contiguous
    frame = read_event_log(config.state_path)
    assert set(frame["kind"]) == {"version", "decision", "reward"}

    async def second_life():
        assert (await core.record_reward("e5", 1.0))["status"] == "joined"
        with pytest.raises(Rejection) as closed:
            await core.record_reward("e1", 1.0)
        assert closed.value.status == 409
        with pytest.raises(Rejection) as unknown:
            await core.record_reward("nope", 1.0)
        assert unknown.value.status == 404
        await core.close()

    asyncio.run(second_life())


def test_state_dir_keeps_its_policy(tmp_path):
    _config(tmp_path)
    service = json.loads((tmp_path / "state" / "service.json").read_text())
    assert service["policy"]["arm_ids"] == ["a", "b", "c"] and service["origin"] == "cold"
    with pytest.raises(ValueError, match="belongs to another policy"):
        prepare_state_dir(ServeConfig(state_dir=str(tmp_path / "state"), context_dim=5), explicit={"context_dim"})
    # Not given explicitly: taken from the state dir.
    restarted = prepare_state_dir(ServeConfig(state_dir=str(tmp_path / "state")), explicit=set())
    assert restarted.context_dim == 2 and restarted.arm_ids == ["a", "b", "c"]


def test_validator_for_the_shared_shape(tmp_path):
    config = ServeConfig(state_dir=str(tmp_path), shape="shared", context_dim=2, arm_dim=3)
    validator = RequestValidator(config)
    job = validator.rank_job(RankRequest.model_validate(
        {"context": [1, 2], "candidates": [{"id": "m1", "features": [1, 0, 0]}, {"id": 7, "features": [0, 1, 0]}],
         "excluded": ["m1"]}))
    assert job.candidate_ids == ["7"] and job.score.arm_features.tolist() == [[0.0, 1.0, 0.0]]
    for body, field in [
        ({"context": [1, 2]}, "candidates"),
        ({"context": [1, 2], "candidates": [{"id": "m1"}]}, "candidates[0].features"),
        ({"context": [1, 2], "candidates": [{"id": "m1", "features": [1, 0]}]}, "candidates[0].features"),
    ]:
        with pytest.raises(Rejection) as rejected:
            validator.rank_job(RankRequest.model_validate(body))
        assert rejected.value.field == field and rejected.value.status == 422


def test_validator_defaults_to_every_arm_of_a_disjoint_config():
    """A config built in code (no state dir, no arm_ids) still ranks all of its arms when no candidates are given."""
    config = ServeConfig(shape="disjoint", context_dim=3, num_arms=4)
    job = RequestValidator(config).rank_job(RankRequest.model_validate({"context": [1, 0, 0]}))
    assert job.candidate_ids == ["0", "1", "2", "3"]
    assert job.score.arms.tolist() == [0, 1, 2, 3]
    named = RequestValidator(ServeConfig(shape="disjoint", context_dim=3, num_arms=2, arm_ids=["x", "y"]))
    assert named.rank_job(RankRequest.model_validate({"context": [0, 1, 0]})).candidate_ids == ["x", "y"]


def test_cli_options_override_the_config_file_only_when_given(tmp_path):
    """`recbandits serve --print-config`: a JSON file's switches stand unless the command line names them."""
    from typer.testing import CliRunner

    from recbandits.cli import app

    settings = tmp_path / "serve.json"
    settings.write_text(json.dumps({"fsync": False, "idle_ray_agent": False, "fast_path": False, "context_dim": 5}))

    def resolved(*options):
        result = CliRunner().invoke(app, ["serve", *options, "--print-config"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    from_file = resolved("--config", str(settings))
    assert (from_file["fsync"], from_file["idle_ray_agent"], from_file["fast_path"], from_file["context_dim"]) == (
        False, False, False, 5)
    overridden = resolved("--config", str(settings), "--fsync", "--idle-ray-agent", "--context-dim", "7")
    assert (overridden["fsync"], overridden["idle_ray_agent"], overridden["fast_path"], overridden["context_dim"]) == (
        True, True, False, 7)
    defaults = resolved()
    assert (defaults["fsync"], defaults["idle_ray_agent"], defaults["fast_path"]) == (True, True, True)
    assert resolved("--no-fsync")["fsync"] is False


def test_the_cli_a_config_file_and_serves_builder_args_resolve_the_same_settings(tmp_path):
    """`recbandits serve ...`, a --config file and `serve run recbandits.serve.app:build_app key=value` (strings,
    validated by Ray Serve into the typed ServeArgs) resolve alike: model settings at the top level or under
    model_config, arm_ids implying num_arms."""
    from pydantic import ValidationError
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application

    from recbandits.serve.app import build_app
    from recbandits.serve.cli import build_config
    from recbandits.serve.config import ServeArgs, config_from_args

    expected_model = {"exploration": "greedy", "alpha": 0.5}
    strings = {"state_dir": str(tmp_path / "built"), "context_dim": "3", "arm_ids": "a,b", "exploration": "greedy",
               "alpha": "0.5", "fsync": "false"}
    builder, builder_given = config_from_args(ServeArgs.model_validate(strings))
    settings = tmp_path / "serve.json"
    settings.write_text(json.dumps({"state_dir": str(tmp_path), "context_dim": 3, "arm_ids": ["a", "b"],
                                    "model_config": {"exploration": "ucb", "alpha": 0.5}, "fsync": False}))
    cli, cli_given = build_config({"exploration": "greedy", "alpha": None, "port": None}, settings)
    for config, given in ((builder, builder_given), (cli, cli_given)):
        assert config.model_config == expected_model and config.arm_ids == ["a", "b"] and config.num_arms == 2
        assert config.context_dim == 3 and config.fsync is False
        assert given == {"context_dim", "arm_ids", "num_arms", "model_config"}
    # Ray Serve's own builder call: it validates the strings into ServeArgs; the state dir records the policy.
    app = call_user_app_builder_with_args_if_necessary(build_app, strings)
    assert isinstance(app, Application)
    service = json.loads((tmp_path / "built" / "service.json").read_text())["policy"]
    assert (service["context_dim"], service["arm_ids"], service["model_config"]) == (3, ["a", "b"], expected_model)
    assert ServeArgs.model_validate({"model_config": '{"alpha": 2}'}).model_dump(exclude_unset=True,
                                                                                by_alias=True) == {
        "model_config": {"alpha": 2}}
    with pytest.raises(ValidationError, match=r"colour\n  Extra inputs are not permitted"):
        call_user_app_builder_with_args_if_necessary(build_app, {"colour": "blue"})
    with pytest.raises(ValidationError, match=r"context_dim\n  Input should be a valid integer"):
        ServeArgs.model_validate({"context_dim": "three"})


def test_every_serve_option_is_its_config_field(tmp_path):
    """The serve command's options are ServeConfig's fields (spec_cli): names, scaled units, parsed lists."""
    from typer.testing import CliRunner

    from recbandits.cli import app

    result = CliRunner().invoke(app, ["serve", "--state-dir", str(tmp_path), "--batch-wait-ms", "3",
                                      "--latency-target-ms", "20", "--arm-ids", "x, y,z", "--join-window", "7.5",
                                      "--no-fast-path", "--exploration", "greedy", "--lambda", "0.5",
                                      "--drop-unrewarded", "--print-config"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert (printed["batch_wait_timeout_s"], printed["latency_target_s"], printed["join_window_s"]) == (
        0.003, 0.02, 7.5)
    assert (printed["arm_ids"], printed["num_arms"], printed["fast_path"], printed["default_reward"]) == (
        ["x", "y", "z"], 3, False, None)
    assert printed["model_config"] == {"exploration": "greedy", "lambda_": 0.5}
    assert printed["state_dir"] == str(tmp_path)
    help_text = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "240"}).stdout
    assert "serve.batch wait, milliseconds. [default: 2.0]" in help_text
    assert "Largest request body (413 beyond). [default: sized for --max-candidates, >= 1 MiB]" in help_text


def test_metrics_interval_reaches_ray_and_is_checked():
    from recbandits.serve.runner import serve_environment

    assert serve_environment(ServeConfig())["RAY_metrics_report_interval_ms"] == "60000"
    assert serve_environment(ServeConfig(metrics_interval_s=2.5))["RAY_metrics_report_interval_ms"] == "2500"
    with pytest.raises(ValueError, match="metrics_interval_s=0.5 must be a finite number >= 1"):
        ServeConfig(metrics_interval_s=0.5)


def test_a_restart_quarantines_a_record_whose_mark_a_crash_lost(tmp_path):
    config = _config(tmp_path)

    async def crash_before_learning():
        core = BanditCore(config)
        await core.log_decisions([_row(core, "huge", [1e8, 1e8], "a"), _row(core, "fine", [1.0, 0.5], "b")])
        await core.record_reward("huge", 1.0)
        await core.record_reward("fine", 2.0)
        await core.log.drain()
        core.log.close()  # a crash: the records were durable, never learned, never marked
        core._lock.release()

    asyncio.run(crash_before_learning())
    core = BanditCore(config)
    frame = read_event_log(config.state_path)
    marks = frame[frame["kind"] == "quarantine"]
    assert marks["event_id"].tolist() == ["huge"] and len(core.quarantined) == 1
    assert core.counters["quarantined"] == 1 and core.counters["learning_records"] == 1
    assert core.counters["rewards"] == 2 and core.version["learned"] == 1
    np.testing.assert_array_equal(core.policy.counts, [0.0, 1.0, 0.0])

    async def close():
        await core.close()

    asyncio.run(close())
    restarted = BanditCore(config)  # marked now: counted once, not marked again
    assert restarted.counters["quarantined"] == 1 and restarted.counters["learning_records"] == 1
    frame = read_event_log(config.state_path)
    assert (frame["kind"] == "quarantine").sum() == 1
    asyncio.run(restarted.close())


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_serving_a_simulate_run_answers_with_movielens_ids_and_knows_its_users(small_data_dir, tmp_path):
    from typer.testing import CliRunner

    import recbandits
    from recbandits.cli import app
    from recbandits.loadgen.service_process import ServiceProcess, free_port_block, http_json

    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "simulate", "--steps", "1024", "--num-env-runners", "0", "--num-envs", "128", "--rollout-fragment-length", "4",
        "--rank", "6", "--num-movies", "12", "--data-dir", str(small_data_dir), "--no-references", "--out", str(run)])
    assert result.exit_code == 0, result.output
    policy = recbandits.load_policy(run)
    user = str(policy.user_ids[5])
    port = free_port_block(12)
    args = ["--state-dir", tmp_path / "state", "--port", port, "--replica-port", port + 1, "--exploration", "greedy"]
    service = ServiceProcess([*args, "--checkpoint", run], log_path=tmp_path / "service.log")
    ready = service.start()
    try:
        status, answer = http_json("POST", f"{ready['url']}/v1/rank", {"user_id": user, "top_k": 3})
        assert status == 200, answer
        # Arms are the run's MovieLens movie ids with their titles; greedy serving ranks them as the run's policy
        # scores them.
        expected = policy.recommend(int(user), 3)
        assert [(item["id"], item["title"]) for item in answer["ranking"]] == [
            (str(movie), title) for movie, title in zip(expected["movie_id"], expected["title"], strict=True)]
        assert all(item["title"] for item in answer["ranking"])
        status, answer = http_json("POST", f"{ready['url']}/v1/rank", {"user_id": "no-such-user"})
        assert status == 404 and "no-such-user" in json.dumps(answer)
    finally:
        service.stop()
    # A restart (no --checkpoint: the state dir has everything) looks the same users up, with the same arms.
    restarted = prepare_state_dir(ServeConfig.from_dict({"state_dir": str(tmp_path / "state")}), set())
    assert restarted.user_table == str((tmp_path / "state" / "run_users.npz").resolve())
    assert restarted.arm_ids == [str(movie) for movie in policy.movie_ids]
    assert restarted.item_titles == str((tmp_path / "state" / "run_titles.json").resolve())
    validator = RequestValidator(restarted)
    np.testing.assert_allclose(validator.users[user], policy._contexts[5])


def test_a_user_table_round_trips_and_a_wrong_one_is_named(tmp_path):
    import os

    from recbandits.logs.features import write_feature_table
    from recbandits.serve.schemas import load_user_table

    features = np.array([[0.5, -1.0], [2.0, 3.0]])
    path = write_feature_table(tmp_path / "users.npz", [7, "u8"], features)
    assert os.stat(path).st_mode & 0o777 == 0o600
    table = load_user_table(path, 2)
    assert sorted(table) == ["7", "u8"]
    np.testing.assert_array_equal(table["u8"], [2.0, 3.0])
    (tmp_path / "users.csv").write_text("id,a,b\n7,0.5,-1.0\n")
    np.testing.assert_array_equal(load_user_table(tmp_path / "users.csv", 2)["7"], [0.5, -1.0])
    with pytest.raises(ValueError, match=r"users.npz: features of shape \(2, 2\), expected \(users, 3\)"):
        load_user_table(path, 3)
    write_feature_table(tmp_path / "bad.npz", ["x"], [[float("nan"), 1.0]])
    with pytest.raises(ValueError, match="bad.npz has non-finite features"):
        load_user_table(tmp_path / "bad.npz", 2)


def test_item_titles_come_from_json_or_csv_and_an_unreadable_file_is_named_before_ray(tmp_path):
    from recbandits.serve.schemas import load_item_titles
    from recbandits.serve.state import StateDirError

    (tmp_path / "titles.json").write_text(json.dumps({"1": "Toy Story (1995)", "7": "Twelve Monkeys (1995)"}))
    (tmp_path / "titles.csv").write_text('movie_id,title\n1,Toy Story (1995)\n7,"Twelve Monkeys, The (1995)"\n')
    assert load_item_titles(tmp_path / "titles.json") == {"1": "Toy Story (1995)", "7": "Twelve Monkeys (1995)"}
    assert load_item_titles(tmp_path / "titles.csv") == {"1": "Toy Story (1995)", "7": "Twelve Monkeys, The (1995)"}
    (tmp_path / "list.json").write_text('["Toy Story (1995)"]')
    for path, message in ((tmp_path / "list.json", "expected a JSON object"), (tmp_path / "no.csv", "no.csv")):
        config = ServeConfig.from_dict({"state_dir": str(tmp_path / f"state-{path.name}"), "item_titles": str(path)})
        with pytest.raises(StateDirError, match=message):
            prepare_state_dir(config, set())
        assert not (tmp_path / f"state-{path.name}" / "service.json").exists()


def test_old_snapshots_are_pruned_and_their_versions_rebuilt_from_an_older_snapshot_and_the_log(tmp_path):
    config = _config(tmp_path, keep_snapshots=2)
    contexts = [[1.0, float(i)] for i in range(6)]

    async def run():
        core = BanditCore(config)
        versions = []
        for i, context in enumerate(contexts):
            await core.log_decisions([_row(core, f"e{i}", context, "a")])
            await core.record_reward(f"e{i}", float(i))
            core.learn(force=True)
            versions.append(core.version_id)
            if i in (0, 2, 4, 5):
                assert await core.snapshot() == core.version_id
        # The two newest snapshots are kept; the initial policy always is.
        assert core.snapshots.versions() == [versions[4], versions[5]] and core.snapshots.initial_path.is_file()
        for i, version in enumerate(versions):  # every version: what e0..ei give, snapshot or not
            state = await core.version_state(version)
            x, y = np.array(contexts[: i + 1]), np.arange(i + 1, dtype=float)
            np.testing.assert_allclose(state["data_precision"][0], x.T @ x, rtol=1e-12)
            np.testing.assert_allclose(state["data_response"][0], x.T @ y, rtol=1e-12)
            assert state["counts"].tolist() == [i + 1, 0.0, 0.0]
        await core.close()

    asyncio.run(run())


def test_events_whose_window_ended_while_the_service_was_down_expire_into_the_default_at_the_restart(tmp_path):
    import time

    config = _config(tmp_path, join_window_s=1.0, default_reward=0.5)

    async def before_the_stop():
        core = BanditCore(config)
        await core.log_decisions([_row(core, "late", [2.0, 1.0], "b"), _row(core, "paid", [1.0, 1.0], "c")])
        await core.record_reward("paid", 1.0)
        await core.close()

    asyncio.run(before_the_stop())

    async def after_the_restart():
        core = BanditCore(config)
        assert set(core.open) == {"late"}  # open again, with its deadline from the log ("paid" closed: rule first)
        assert core.expire_due(now=time.time() + 2.0) == 1  # its window ended while the service was down
        await core.log.drain()
        core.learn(force=True)
        assert core.counters["expired_default"] == 1
        np.testing.assert_array_equal(core.policy.counts, [0.0, 1.0, 1.0])
        np.testing.assert_allclose(core.policy.get_state()["data_response"][1], 0.5 * np.array([2.0, 1.0]))
        with pytest.raises(Rejection) as expired:
            await core.record_reward("late", 1.0)
        assert expired.value.status == 409 and "default reward" in expired.value.message
        await core.close()

    asyncio.run(after_the_restart())
    frame = read_event_log(config.state_path)
    assert frame[frame["kind"] == "expire"][["event_id", "outcome"]].values.tolist() == [["late", "default"]]


def test_a_log_that_cannot_be_written_stops_acknowledging_and_reports_unhealthy(tmp_path):
    """The disk fills up under the service (the log's file descriptor now writes to /dev/full: ENOSPC)."""
    import os

    from recbandits.serve.eventlog import LogWriteError

    config = _config(tmp_path)

    async def run():
        core = BanditCore(config)
        await core.log_decisions([_row(core, "before", [1.0, 0.0], "a")])
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, core.log._fd)
        os.close(full)
        with pytest.raises(LogWriteError, match="No space left on device"):
            await core.log_decisions([_row(core, "after", [1.0, 0.0], "a")])
        assert not core.healthy()  # /healthz: 503 unavailable; every write answers 503 log_failed
        with pytest.raises(LogWriteError):
            await core.record_reward("before", 1.0)
        assert "after" not in core.open and core.counters["decisions"] == 1 and core.counters["rewards"] == 0
        await core.close()

    asyncio.run(run())
    frame = read_event_log(config.state_path)
    assert frame[frame["kind"] == "decision"]["event_id"].tolist() == ["before"]  # nothing half-written


def test_a_first_start_from_a_missing_checkpoint_is_named_and_writes_nothing(tmp_path):
    config = ServeConfig(state_dir=str(tmp_path / "state"), checkpoint=str(tmp_path / "runs" / "simulate"))
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path / 'runs' / 'simulate'} does not exist"):
        prepare_state_dir(config, set())
    assert not (tmp_path / "state").exists()  # no admin token or half-made state dir left behind
