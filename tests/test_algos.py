"""The linear bandits on RLlib: exact parallel statistics, checkpoints, metrics, learning, the simulate job."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core.rl_module.rl_module import RLModule
from typer.testing import CliRunner

from recbandits.algos import LinTSConfig, LinUCBConfig
from recbandits.algos.linear import LinTS
from recbandits.cli import app
from recbandits.jobs.simulate import SimulationSpec, build_config, summary_rows, train_policy

pytestmark = pytest.mark.usefixtures("ray_local")

MODULE_PATH = ("learner_group", "learner", "rl_module", "default_policy")

# Functions of this file run inside env runner processes (foreach_env_runner), which cannot import it.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _config(config_cls, data_dir, env="recbandits/MovieLens-v0", runners=2, envs=64, fragment=4, **training):
    env_config = {"data_dir": str(data_dir), "rank": 6}
    env_config.update({"num_movies": 12} if env.endswith("MovieLens-v0") else
                      {"num_candidates": 8, "slate_size": 3} if "Ranking" in env else {"num_actions": 8})
    return (
        config_cls()
        .environment(env, env_config=env_config)
        .env_runners(num_env_runners=runners, num_envs_per_env_runner=envs, rollout_fragment_length=fragment)
        .training(**training)
        .debugging(seed=7)
    )


def _record_what_the_envs_emit(algo) -> None:
    """Wrap every runner's vector env: it keeps each step's observations, actions, rewards and infos."""
    import gymnasium as gym

    def copy(value):
        return {key: np.array(part) for key, part in value.items()} if isinstance(value, dict) else np.array(value)

    class Recording(gym.vector.VectorWrapper):
        def __init__(self, env):
            super().__init__(env)
            self.steps, self._observations = [], None

        def reset(self, **kwargs):
            self._observations, info = self.env.reset(**kwargs)
            return self._observations, info

        def step(self, actions):
            observations, rewards, terminated, truncated, infos = self.env.step(actions)
            self.steps.append({"obs": copy(self._observations), "actions": np.array(actions),
                               "rewards": np.array(rewards), "infos": copy(infos)})
            self._observations = observations
            return observations, rewards, terminated, truncated, infos

    def wrap(runner):
        runner.env = Recording(runner.env)

    algo.env_runner_group.foreach_env_runner(wrap, local_env_runner=False)


def _learning_rows(algo, shape: str) -> dict[str, np.ndarray]:
    """(features, model, target, step index) of every observation, built here from what the envs emitted: the
    disjoint context and arm; the shared [global, arm, global x arm]; a cascade slate's slots down to the click."""
    recordings = algo.env_runner_group.foreach_env_runner(lambda runner: runner.env.steps, local_env_runner=False)
    rows = {"features": [], "models": [], "rewards": [], "batch": []}

    def add(features, models, rewards, batch):
        rows["features"].append(features)
        rows["models"].append(models)
        rows["rewards"].append(rewards)
        rows["batch"].append(np.full(len(rewards), batch))

    for steps in recordings:
        for batch, step in enumerate(steps):
            obs, actions, rewards, infos = step["obs"], step["actions"], step["rewards"], step["infos"]
            if shape == "disjoint":
                add(obs.astype(np.float64), actions, rewards, batch)
                continue
            for row in range(len(actions)):
                slate = np.atleast_1d(actions[row])
                global_features = obs["global"][row].astype(np.float64)
                arms = obs["per_arm"][row][slate].astype(np.float64)
                features = np.hstack([np.repeat(global_features[None], len(slate), 0), arms,
                                      np.einsum("g,sp->sgp", global_features, arms).reshape(len(slate), -1)])
                if shape == "shared":
                    add(features, np.zeros(1, dtype=np.int64), rewards[row:row + 1], batch)
                else:  # a cascade slate: the slots scanned down to the click (all of them without one)
                    clicked = int(infos["clicked_position"][row])
                    seen = clicked + 1 if clicked >= 0 else len(slate)
                    add(features[:seen], np.zeros(seen, dtype=np.int64), (np.arange(seen) == clicked).astype(float),
                        batch)
    return {key: np.concatenate(value) for key, value in rows.items()}


def _closed_form_ridge(transitions, num_models, lambda_, gamma=1.0):
    """theta and A^-1 per model from raw transitions, weighting batch t of N by gamma^(N-1-t)."""
    features, models, rewards = transitions["features"], transitions["models"], transitions["rewards"]
    weights = gamma ** (transitions["batch"].max() - transitions["batch"])
    dim = features.shape[1]
    thetas, covariances = [], []
    for model in range(num_models):
        rows = models == model
        x, r, w = features[rows], rewards[rows], weights[rows]
        precision = lambda_ * np.eye(dim) + (x * w[:, None]).T @ x
        thetas.append(np.linalg.solve(precision, (x * w[:, None]).T @ r))
        covariances.append(np.linalg.inv(precision))
    return np.array(thetas), np.array(covariances)


@pytest.mark.parametrize("env, config_cls, gamma, shape", [
    ("recbandits/MovieLens-v0", LinUCBConfig, 1.0, "disjoint"),
    ("recbandits/MovieLens-v0", LinTSConfig, 0.9, "disjoint"),
    ("recbandits/MovieLensPerArm-v0", LinUCBConfig, 1.0, "shared"),
    ("recbandits/MovieLensRanking-v0", LinUCBConfig, 1.0, "cascade"),
])
def test_parallel_statistics_equal_the_closed_form_ridge(small_data_dir, env, config_cls, gamma, shape):
    """The Learner's posterior equals ridge regression on the observations as the envs emitted them (features,
    interaction and slate feedback built by the test, not taken from the runners)."""
    algo = _config(config_cls, small_data_dir, env=env, lambda_=0.5, gamma=gamma).build_algo()
    try:
        _record_what_the_envs_emit(algo)
        for _ in range(3):
            algo.train()
        transitions = _learning_rows(algo, shape)
        module = algo.module
        # 2 runners x 64 sub-envs x 4 steps x 3 iterations, each learned from exactly once.
        assert transitions["batch"].max() == 11 and len(np.unique(transitions["batch"])) == 12
        if shape != "cascade":
            assert len(transitions["rewards"]) == 2 * 64 * 4 * 3
            assert module.counts.sum().item() == pytest.approx(sum(gamma ** (11 - t) for t in range(12)) * 128)
        else:
            assert module.counts.sum().item() == len(transitions["rewards"]) > 2 * 64 * 4 * 3
        theta, covariance = _closed_form_ridge(transitions, module.num_models, 0.5, gamma)
        np.testing.assert_allclose(module.theta.numpy(), theta, atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(module.covariance.numpy(), covariance, atol=1e-6, rtol=1e-6)
    finally:
        algo.stop()


def test_train_results_carry_the_bandit_metrics(small_data_dir):
    algo = _config(LinUCBConfig, small_data_dir, runners=0, envs=32, fragment=2).build_algo()
    try:
        total_regret = 0.0
        for iteration in range(1, 4):
            runners = algo.train()["env_runners"]
            assert runners["num_env_steps_sampled_lifetime"] == iteration * 64
            total_regret += runners["per_step_regret"] * 64
            assert runners["cumulative_regret"] == pytest.approx(total_regret)
            assert 0 <= runners["suboptimal_arm_rate"] <= 1 and runners["env_steps_per_s"] > 0
            assert np.isfinite(runners["mean_reward"]) and runners["num_nodes"] == 1
            # The sampling thread's CPU time: positive, and not more than the wall time it sampled for (up to
            # the two clocks' rates: the CPU clock is not slewed by NTP as the monotonic one is).
            assert 0 < runners["sample_cpu_time_s"] <= runners["sample_time_s"] * 1.001 + 1e-6
    finally:
        algo.stop()


def test_checkpoint_round_trip_gives_identical_actions(small_data_dir, tmp_path, monkeypatch):
    algo = _config(LinTSConfig, small_data_dir, runners=0).build_algo()
    observations = np.random.default_rng(0).normal(size=(50, 6))
    try:
        for _ in range(2):
            algo.train()
        path = algo.save(str(tmp_path / "checkpoint")).checkpoint.path
        expected = algo.module.forward_inference({"obs": torch.from_numpy(observations)})["actions"]
        theta = algo.module.theta.clone()
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(path)
    try:
        torch.testing.assert_close(restored.module.theta, theta, rtol=0, atol=0)
        # Paths relative to the working directory, as the README writes them: save, restore, serve.
        monkeypatch.chdir(tmp_path)
        relative = restored.save("relative/linucb").checkpoint.path
        assert Path(relative).resolve() == tmp_path / "relative" / "linucb"
        assert (tmp_path / "relative" / "linucb" / "algorithm_state.pkl").is_file()
        again = LinTS.from_checkpoint("relative/linucb")
        torch.testing.assert_close(again.module.theta, theta, rtol=0, atol=0)
        again.stop()
        from recbandits.serve.config import ServeConfig
        from recbandits.serve.policy import initial_policy

        fields, state, _ = initial_policy(ServeConfig(checkpoint="relative/linucb", state_dir="state"))
        np.testing.assert_array_equal(state["counts"], restored.module.counts.numpy())
        assert torch.equal(restored.module.forward_inference({"obs": torch.from_numpy(observations)})["actions"],
                           expected)
        # Exploration is seeded too: the same draws after a restore give the same Thompson samples.
        module_only = RLModule.from_checkpoint(tmp_path.joinpath("checkpoint", *MODULE_PATH))
        assert torch.equal(module_only.forward_inference({"obs": torch.from_numpy(observations)})["actions"], expected)
        torch.testing.assert_close(module_only.covariance, restored.module.covariance, rtol=0, atol=0)
    finally:
        restored.stop()


@pytest.mark.real_data
def test_linucb_regret_is_sublinear_on_real_movielens(ml100k_dir):
    spec = SimulationSpec(env="movielens", algo="linucb", steps=60_000, num_env_runners=0,
                          num_envs_per_env_runner=256, rollout_fragment_length=8, data_dir=str(ml100k_dir), seed=3)
    linucb, random = (summary_rows([train_policy(spec, algo)])[0] for algo in ("linucb", "random"))
    assert linucb["env_steps"] == random["env_steps"] == 61_440
    assert linucb["per_step_regret_last_tenth"] < 0.1 * random["per_step_regret_last_tenth"]


# In this process (no runner actors to start): parallel runners on the shared model are the closed-form tests'.
@pytest.mark.parametrize("algo, runners", [("lints", 0), ("eps-greedy", 0), ("linucb", 0)])
def test_shared_model_learns_on_the_per_arm_and_ranking_envs(small_data_dir, algo, runners):
    spec = SimulationSpec(env="movielens-per-arm", algo=algo, steps=16_384, num_env_runners=runners,
                          num_envs_per_env_runner=256, rollout_fragment_length=4, data_dir=str(small_data_dir),
                          env_config={"rank": 6, "user_demographics": False, "movie_genres": False},
                          training={"interaction": True})
    learned, random = (summary_rows([train_policy(spec, name)])[0] for name in (algo, "random"))
    assert learned["per_step_regret_last_tenth"] < 0.5 * random["per_step_regret_last_tenth"]
    if algo == "linucb":
        ranking = SimulationSpec(**{**spec.__dict__, "env": "movielens-ranking",
                                    "env_config": {**spec.env_config, "num_candidates": 10, "slate_size": 3}})
        learned, random = (summary_rows([train_policy(ranking, name)])[0] for name in (algo, "random"))
        assert learned["per_step_regret_last_tenth"] < 0.7 * random["per_step_regret_last_tenth"]


def test_runner_split_does_not_change_the_simulated_world(small_data_dir):
    """Two runners of 64 sub-envs simulate the same sub-envs as one runner of 128 (the oracle shows it)."""
    rewards = []
    for runners, envs in ((1, 128), (2, 64)):
        spec = SimulationSpec(env="movielens", algo="oracle", steps=1024, num_env_runners=runners,
                              num_envs_per_env_runner=envs, rollout_fragment_length=8, data_dir=str(small_data_dir))
        rewards.append([row["mean_reward"] for row in train_policy(spec, "oracle").rows])
    assert rewards[0] == pytest.approx(rewards[1], rel=1e-12)


def test_invalid_settings_are_named(small_data_dir):
    with pytest.raises(ValueError, match=r"lambda_=0 must be > 0"):
        LinUCBConfig().training(lambda_=0).validate()
    with pytest.raises(ValueError, match=r"gamma=1.5 must be in \(0, 1\]"):
        LinUCBConfig().training(gamma=1.5).validate()
    with pytest.raises(ValueError, match=r"--algo 'ucb' is not one of linucb, lints"):
        SimulationSpec(algo="ucb")
    with pytest.raises(ValueError, match=r"--env 'netflix'"):
        SimulationSpec(env="netflix")
    with pytest.raises(ValueError, match="data directory .*missing does not exist"):
        build_config(SimulationSpec(data_dir=str(small_data_dir / "missing")))


def test_simulate_command_writes_every_artifact(small_data_dir, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "simulate", "--env", "movielens", "--algo", "linucb", "--steps", "2048", "--num-env-runners", "0",
        "--num-envs", "128", "--rollout-fragment-length", "4", "--data-dir", str(small_data_dir), "--seed", "5",
        "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Simulation summary" in result.output
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["policy"].unique()) == ["linucb", "random", "oracle"]
    assert metrics.groupby("policy")["env_steps"].max().tolist() == [2048, 2048, 2048]
    assert (metrics.query("policy == 'oracle'")["cumulative_regret"] == 0).all()
    assert (out / "regret.png").stat().st_size > 10_000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert out.joinpath("checkpoint", *MODULE_PATH).is_dir()
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["seed"] == 5 and recorded["env_steps"] == 2048
    assert recorded["hyperparameters"] == {"exploration": "ucb", "alpha": 1.0, "lambda_": 1.0, "gamma": 1.0,
                                           "epsilon": 0.05, "posterior_scale": None, "noise_prior": 1.0,
                                           "interaction": None, "seed": 5}
    assert recorded["env_settings"] == {"rank": 20, "num_movies": 20, "data_dir": str(small_data_dir)}
    again = CliRunner().invoke(
        app, ["simulate", "--steps", "2048", "--data-dir", str(small_data_dir), "--out", str(out)]
    )
    assert again.exit_code == 2
    assert f"--out {out} already holds a run (config.json, metrics.csv" in again.output
    assert "pass --overwrite to replace it" in again.output
    assert metrics.equals(pd.read_csv(out / "metrics.csv"))  # nothing was touched
    bad = CliRunner().invoke(app, ["simulate", "--algo", "ucb", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--algo 'ucb' is not one of" in bad.output

    # --resume continues the learned policy to 4,096 steps in all, from the saved posterior.
    too_few = CliRunner().invoke(app, ["simulate", "--resume", str(out), "--steps", "2048"])
    assert too_few.exit_code == 2 and "already has 2,048 env steps; --steps is the new total" in too_few.output
    resumed = CliRunner().invoke(app, ["simulate", "--resume", str(out), "--steps", "4096"])
    assert resumed.exit_code == 0, resumed.output
    metrics = pd.read_csv(out / "metrics.csv")
    ours = metrics.query("policy == 'linucb'")
    assert ours["iteration"].tolist() == list(range(1, 9))  # 512 steps per iteration
    assert ours["env_steps"].tolist() == [512 * i for i in range(1, 9)]
    rows = ours.to_dict("records")
    assert rows[4]["cumulative_regret"] == pytest.approx(
        rows[3]["cumulative_regret"] + 512 * rows[4]["per_step_regret"]
    )
    assert rows[4]["per_step_regret"] < 0.5 * rows[0]["per_step_regret"]  # it did not start learning again
    assert metrics.query("policy == 'random'")["env_steps"].max() == 4096
    assert json.loads((out / "config.json").read_text())["steps"] == 4096
    assert out.joinpath("checkpoint", *MODULE_PATH).is_dir()
    nothing = CliRunner().invoke(app, ["simulate", "--resume", str(tmp_path / "none"), "--steps", "4096"])
    assert nothing.exit_code == 2 and "no finished simulate run there (missing config.json" in nothing.output


@pytest.mark.parametrize(("options", "message"), [
    (["--algo", "random", "--alpha", "3"], "--alpha does not apply to random (it takes no hyperparameters)"),
    (["--algo", "lints", "--alpha", "3", "--epsilon", "0.1"],
     "--alpha, --epsilon does not apply to lints (it takes --lambda, --gamma, --interaction, "
     "--posterior-scale)"),
    (["--algo", "tfa-linucb", "--interaction"],
     "--interaction does not apply to tfa-linucb (it takes --alpha, --lambda, --gamma)"),
    (["--alpha", "-3"], "--alpha -3 must be >= 0"),
    (["--gamma", "1.5"], "--gamma 1.5 must be in (0, 1]"),
    (["--interaction"], "interaction applies to per-arm (shared) observations only"),
    (["--data-dir", "missing"], "data directory missing does not exist"),
    (["--slate-size", "3"], "--slate-size does not apply to --env movielens (it takes --rank, --num-movies, "
                            "--reward-type, --drift-rate)"),
    (["--env", "movielens-ranking", "--num-movies", "5"], "--num-movies does not apply to --env movielens-ranking"),
])
def test_simulate_rejects_bad_options_in_one_line_before_ray_starts(tmp_path, monkeypatch, options, message):
    import ray

    monkeypatch.chdir(tmp_path)
    was_running = ray.is_initialized()
    result = CliRunner().invoke(app, ["simulate", "--steps", "2048", "--out", "run", *options])
    assert result.exit_code == 2, result.output
    assert result.output.strip().replace("\n", " ").startswith(message), result.output
    assert ray.is_initialized() == was_running  # no Ray was started for it
    assert not (tmp_path / "run").exists()


def test_jobs_refuse_malformed_data_in_one_line_naming_file_and_line(small_data_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(small_data_dir, bad)
    lines = (bad / "u.data").read_text().splitlines()
    fields = lines[10].split("\t")
    lines[10] = "\t".join([fields[0], fields[1], "three", fields[3]])
    (bad / "u.data").write_text("\n".join(lines) + "\n")
    for command in (["simulate"], ["compare", "--algos", "linucb,random"], ["tune", "--alpha", "1,2"]):
        result = CliRunner().invoke(app, [*command, "--data-dir", str(bad), "--out", str(tmp_path / command[0])])
        assert result.exit_code == 2, command
        assert result.output.strip() == "u.data line 11: rating 'three' is not a number", command
        assert not (tmp_path / command[0]).exists()


def test_statistics_equal_per_row_sums_with_idle_arms_and_empty_batches():
    import gymnasium as gym

    from recbandits.algos.module import LinearBanditModule

    module = LinearBanditModule(observation_space=gym.spaces.Box(-1, 1, (3,)), action_space=gym.spaces.Discrete(4),
                                inference_only=True, model_config={"lambda_": 0.5})
    generator = np.random.default_rng(3)
    features = generator.normal(size=(9, 3))
    models = np.array([0, 2, 2, 0, 3, 2, 0, 0, 3])  # arm 1 gets no row
    rewards = generator.normal(size=9)
    precision, response, response_square, counts = module.statistics(
        torch.from_numpy(features), torch.from_numpy(models), torch.from_numpy(rewards))
    for arm in range(4):
        rows = models == arm
        np.testing.assert_allclose(precision[arm].numpy(), features[rows].T @ features[rows], atol=1e-12)
        np.testing.assert_allclose(response[arm].numpy(), features[rows].T @ rewards[rows], atol=1e-12)
        assert response_square[arm].item() == pytest.approx(float(rewards[rows] @ rewards[rows]))
        assert counts[arm].item() == rows.sum()
    empty = module.statistics(torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.int64),
                              torch.zeros(0, dtype=torch.float64))
    assert [tuple(part.shape) for part in empty] == [(4, 3, 3), (4, 3), (4,), (4,)]
    assert all(float(part.abs().sum()) == 0.0 for part in empty)


def test_simulate_help_states_every_default_and_fits_80_columns():
    import re

    result = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["simulate", "--help"])
    assert result.exit_code == 0
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", result.output))
    for option in ("--alpha", "--lambda", "--gamma", "--epsilon", "--interaction", "--rank", "--num-movies",
                   "--num-actions", "--num-candidates", "--slate-size", "--reward-type", "--choice-model",
                   "--feedback", "--drift-rate", "--steps", "--num-envs", "--overwrite"):
        assert option in text, option
    assert "[default: linucb 1.0, tfa-* 10.0]" in text and "[default: 1.0; tfa-linucb 0.001, tfa-lints 1.0]" in text
    assert "[default: 0.05]" in text and "[default: cascade]" in text
    assert max(len(line) for line in result.output.splitlines()) <= 80


@pytest.mark.parametrize("name", ["simulate", "serve", "compare", "tune", "train", "logs collect",
                                  "logs from-ratings", "evaluate", "logs export"])
def test_every_option_of_a_command_states_its_default(name):
    import typer

    from recbandits.algos.module import DEFAULT_MODEL_CONFIG

    command = typer.main.get_command(app)
    for part in name.split():
        command = command.commands[part]
    silent = [param.name for param in command.params
              if param.default is None and not param.required and "default:" not in (getattr(param, "help", "") or "")
              and param.name not in ("help", "address", "config", "data_dir", "checkpoint", "user_table",
                                     "arm_ids", "fast_path", "idle_ray_agent", "fsync", "replica_port",
                                     "max_concurrent", "grace_steps")]
    assert silent == []
    if name == "serve":
        helps = {param.name: param.help for param in command.params}
        for option, key in (("alpha", "alpha"), ("lambda_", "lambda_"), ("epsilon", "epsilon"), ("seed", "seed")):
            assert f"\\[default: {DEFAULT_MODEL_CONFIG[key]}]" in helps[option], option


def test_load_policy_recommends_movielens_movies_by_id_and_title(small_data_dir, tmp_path):
    import gymnasium as gym

    import recbandits
    from recbandits.data import load_movielens
    from recbandits.envs import ENV_IDS

    items = load_movielens(small_data_dir).items.set_index("item_id")["title"]
    for env in ("movielens", "movielens-per-arm"):
        out = tmp_path / env
        result = CliRunner().invoke(app, [
            "simulate", "--env", env, "--steps", "1024", "--num-env-runners", "0", "--num-envs", "128",
            "--rollout-fragment-length", "4", "--rank", "6", "--data-dir", str(small_data_dir), "--no-references",
            "--out", str(out)])  # fmt: skip
        assert result.exit_code == 0, result.output
        policy = recbandits.load_policy(out)
        user = int(policy.user_ids[3])
        top = policy.recommend(user_id=user, k=4)
        assert list(top.columns) == ["movie_id", "title", "score"] and len(top) == 4
        assert top["score"].is_monotonic_decreasing
        assert top["title"].tolist() == items.loc[top["movie_id"]].tolist()  # MovieLens ids and titles
        scores = policy.scores(user)
        assert len(scores) == len(policy.movie_ids) and scores.max() == top["score"].iloc[0]
        # The scores are the module's own on what the env shows it: the user's features and a movie's.
        sim = gym.make(ENV_IDS[env], data_dir=str(small_data_dir), rank=6,
                       **({"num_movies": 20} if env == "movielens" else
                          {"num_actions": 20, "user_demographics": False, "movie_genres": False})).unwrapped.simulator
        row = list(sim.factorization.user_ids).index(user)
        if env == "movielens":
            observation = torch.from_numpy(sim.factorization.user_factors[row : row + 1].astype(np.float32))
            expected = policy.module.forward_inference({"obs": observation})["scores"][0].numpy()
            np.testing.assert_allclose(scores, expected)
        else:
            arms = sim.features.arm_features[:20][None]
            observation = {"global": torch.from_numpy(sim.features.global_features[row : row + 1]),
                           "per_arm": torch.from_numpy(arms)}
            expected = policy.module.forward_inference({"obs": observation})["scores"][0].numpy()
            np.testing.assert_allclose(scores[:20], expected)
    with pytest.raises(ValueError, match=r"user_id 999999 is not a user of this run's data"):
        policy.recommend(user_id=999999)
    with pytest.raises(ValueError, match="is not a `recbandits simulate --out` directory"):
        recbandits.load_policy(tmp_path)


@pytest.mark.usefixtures("ray_local")
def test_an_algorithm_waiting_for_cpus_another_holds_says_so_and_gives_up(small_data_dir, monkeypatch, capfd):
    import ray

    monkeypatch.setenv("RECBANDITS_RESOURCE_WAIT_S", "6")
    total = int(ray.cluster_resources()["CPU"])
    env_config = {"data_dir": str(small_data_dir), "rank": 6, "num_movies": 12}
    holder = (LinUCBConfig().environment("recbandits/MovieLens-v0", env_config=env_config)
              .env_runners(num_env_runners=total, num_envs_per_env_runner=8, rollout_fragment_length=2).build_algo())
    try:
        waiting = (LinUCBConfig().environment("recbandits/MovieLens-v0", env_config=env_config)
                   .env_runners(num_env_runners=1, num_envs_per_env_runner=8, rollout_fragment_length=2))
        with pytest.raises(RuntimeError, match=rf"gave up after \d+ s: 1 env runner\(s\) need 1 CPU\(s\); 0 of the "
                                               rf"cluster's {total} are free \(another algorithm in this process"):
            waiting.build_algo()
        assert "recbandits: waiting: 1 env runner(s) need 1 CPU(s)" in capfd.readouterr().err
    finally:
        holder.stop()


@pytest.mark.parametrize("shape", ["disjoint", "shared"])
def test_thompson_samples_follow_the_posterior_of_the_ridge_statistics(shape):
    """theta~ ~ N(theta_hat, v^2 A^-1) with A = lambda I + X^T X, theta_hat = A^-1 X^T y and
    v^2 = (a0 + (y^T y - b^T theta_hat) / 2) / (a0 + n / 2), all computed here from the raw rows; one theta~ per
    decision and model: the shared model scores every candidate of a row with the same draw, the disjoint arms draw
    independently."""
    import gymnasium as gym

    from recbandits.algos.module import LinearBanditModule

    lambda_, prior, dim, arms, draws = 0.5, 1.0, 3, 4, 40_000
    rng = np.random.default_rng(7)
    if shape == "disjoint":
        spaces = {"observation_space": gym.spaces.Box(-9, 9, (dim,)), "action_space": gym.spaces.Discrete(arms)}
    else:  # features [global (1), per_arm (2)], no interaction
        spaces = {"observation_space": gym.spaces.Dict({"global": gym.spaces.Box(-9, 9, (1,)),
                                                        "per_arm": gym.spaces.Box(-9, 9, (arms, dim - 1))}),
                  "action_space": gym.spaces.Discrete(arms)}
    module = LinearBanditModule(**spaces, inference_only=False,
                                model_config={"exploration": "thompson", "lambda_": lambda_, "noise_prior": prior,
                                              "interaction": False, "seed": 3})
    rows = 60
    features = rng.normal(size=(rows, dim))
    models = rng.integers(0, module.num_models, size=rows)
    rewards = features @ np.array([0.5, -1.0, 2.0]) + rng.normal(scale=0.7, size=rows)
    module.absorb(*module.statistics(torch.from_numpy(features), torch.from_numpy(models), torch.from_numpy(rewards)))

    # Scores of fixed candidates over many decisions.
    candidates = rng.normal(size=(arms, dim))
    if shape == "disjoint":
        obs = np.repeat(candidates[:1], draws, axis=0)  # one context, every arm scores it with its own theta~
        per_arm_x = np.repeat(candidates[:1], arms, axis=0)
    else:
        candidates[:, 0] = 1.3  # the global feature is the row's, the same for every candidate
        obs = {"global": np.full((draws, 1), 1.3), "per_arm": np.repeat(candidates[None, :, 1:], draws, axis=0)}
        per_arm_x = candidates
    scores = module.scores(module.features(obs), "thompson").numpy()  # [draws, arms]

    mean, covariance = np.zeros(arms), np.zeros((arms, arms))
    for model in range(module.num_models):
        chosen = models == model
        x, y = features[chosen], rewards[chosen]
        precision = lambda_ * np.eye(dim) + x.T @ x
        theta = np.linalg.solve(precision, x.T @ y)
        noise = (prior + 0.5 * (y @ y - (x.T @ y) @ theta)) / (prior + 0.5 * chosen.sum())
        np.testing.assert_allclose(module.noise_scale[model].item() ** 2, noise, rtol=1e-9)
        posterior = noise * np.linalg.inv(precision)
        scored = [model] if shape == "disjoint" else list(range(arms))
        mean[scored] = per_arm_x[scored] @ theta
        covariance[np.ix_(scored, scored)] = per_arm_x[scored] @ posterior @ per_arm_x[scored].T
    standard_error = np.sqrt(np.diag(covariance) / draws)
    assert np.all(np.abs(scores.mean(0) - mean) < 5 * standard_error), (scores.mean(0), mean)
    # Covariances within 5 standard errors (of a sample covariance of normals); zero across disjoint arms.
    sample = np.cov(scores, rowvar=False)
    covariance_error = np.sqrt((covariance**2 + np.outer(np.diag(covariance), np.diag(covariance))) / draws)
    assert np.all(np.abs(sample - covariance) < 5 * covariance_error), (sample, covariance)
