"""TF-Agents bandit agents as RLlib algorithms: parallel sampling, weight sync, checkpoints, export.

Real Ray (the session's local Ray, 2 CPUs) and real TF-Agents; networks are small so the module stays fast.
Most of the time goes into starting env runner processes (each imports torch, RLlib and TensorFlow).

TensorFlow must not have been imported by RLlib in the process that drives the algorithm: without
``RLLIB_TEST_NO_TF_IMPORT=1``, importing ``ray.rllib`` imports TensorFlow in TF1 graph mode with Keras 3,
which TF-Agents cannot use. ``recbandits.algos`` sets it before importing RLlib, and this module imports
RLlib only through it; but when an earlier test module of the session imported ``ray.rllib`` first, the
scenarios run in a Ray worker process instead (``_run``), whose environment has recbandits' variables.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import ray
import torch

from recbandits.algos.tf_agents_policy import (
    TF_AGENTS_ALGORITHM_CONFIGS,
    TFAgentsBanditConfig,
    TFAgentsBanditModule,
    export_policy,
)

pytestmark = [pytest.mark.tf_agents, pytest.mark.usefixtures("ray_local")]

MODULE_PATH = ("learner_group", "learner", "rl_module", "default_policy")
MF_ENV, PER_ARM_ENV = "recbandits/MovieLens-v0", "recbandits/MovieLensPerArm-v0"
ENVS, FRAGMENT = 8, 2  # TF-Agents' MovieLens example: batch 8, 2 steps per loop
SMALL = {"layers": (16, 16), "encoding_dim": 4, "encoding_network_num_train_steps": 2}

# The scenarios may run in a Ray worker, which cannot import this file: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _tensorflow_usable_here() -> bool:
    tf = sys.modules.get("tensorflow")
    if tf is None:  # recbandits imports it with the right settings when it is needed
        return True
    return tf.executing_eagerly() and not str(getattr(tf.keras, "__version__", "2")).startswith("3")


def _run(scenario, *args):
    """Run a scenario in this process or, if RLlib already imported TensorFlow here, in a Ray worker."""
    if _tensorflow_usable_here():
        return scenario(*args)
    return ray.get(ray.remote(num_cpus=0)(scenario).remote(*args))


def _config(name, data_dir, env=MF_ENV, runners=2, **training):
    env_config = {"data_dir": str(data_dir), "rank": 6}
    env_config.update({"num_movies": 12} if env == MF_ENV else {"num_actions": 8})
    return (
        TF_AGENTS_ALGORITHM_CONFIGS[name]()
        .environment(env, env_config=env_config)
        .env_runners(num_env_runners=runners, num_envs_per_env_runner=ENVS, rollout_fragment_length=FRAGMENT)
        .training(**{**SMALL, **training})
        .debugging(seed=11)
    )


def _observations(module: TFAgentsBanditModule, rows: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    if not module.per_arm:
        return rng.normal(size=(rows, module.global_dim)).astype(np.float32)
    return {"global": rng.normal(size=(rows, module.global_dim)).astype(np.float32),
            "per_arm": rng.normal(size=(rows, module.num_actions, module.arm_dim)).astype(np.float32)}


def _assert_states_equal(left: dict, right: dict) -> None:
    assert set(left) == set(right)
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)


def _assert_export_acts_like(module: TFAgentsBanditModule, path, observations) -> None:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    step = loaded.action(module.time_step(observations))
    actions, scores = module.greedy_actions(observations)
    np.testing.assert_array_equal(step.action.numpy(), actions)
    np.testing.assert_allclose(step.info.predicted_rewards_mean.numpy(), scores, rtol=1e-5, atol=1e-5)
    assert int(loaded.get_train_step().numpy()) == module.train_step


def _runner_settings(runner):
    """What a runner process runs TensorFlow next to torch with."""
    import os

    import tensorflow as tf

    threads = tf.config.threading
    return (os.environ.get("TF_USE_LEGACY_KERAS"), tf.executing_eagerly(),
            threads.get_intra_op_parallelism_threads(), threads.get_inter_op_parallelism_threads(),
            torch.get_num_threads())


def _train_on_parallel_runners(data_dir, tmp_path, name):
    from ray.rllib.core.rl_module.rl_module import RLModule

    combine = name == "tfa-lints"  # one agent.train on both runners' step k instead of one per runner step
    algo = _config(name, data_dir, combine_runner_batches=combine).build_algo()
    try:
        runners = algo.env_runner_group
        initial = runners.foreach_env_runner(lambda runner: runner.module.get_state(), local_env_runner=False)
        _assert_states_equal(initial[0], initial[1])  # both start from the Learner's agent
        for iteration in range(1, 4):
            result = algo.train()
            learner = result["learners"]
            assert np.isfinite(learner["loss"])
            # One call per vector step (8 rows: under the minibatch of 16), per runner unless combined.
            assert learner["num_train_calls"] == (FRAGMENT if combine else 2 * FRAGMENT)
            assert learner["num_transitions"] == 2 * ENVS * FRAGMENT
            sampled = result["env_runners"]
            assert sampled["num_env_steps_sampled_lifetime"] == iteration * 2 * ENVS * FRAGMENT
            assert np.isfinite(sampled["per_step_regret"]) and np.isfinite(sampled["cumulative_regret"])
            assert sampled["num_healthy_env_runners"] == 2
        module = algo.module
        # Linear agents count samples, neural ones agent.train calls (one per runner vector step).
        assert module.train_step == (3 * 2 * ENVS * FRAGMENT if name in ("tfa-linucb", "tfa-lints") else 12)
        learner_state = module.get_state(inference_only=True)
        for state in runners.foreach_env_runner(lambda runner: runner.module.get_state(), local_env_runner=False):
            _assert_states_equal(state, learner_state)
        assert any(not np.array_equal(initial[0][key], learner_state[key]) for key in learner_state)
        if name == "tfa-neural-linucb":  # 2 encoding-network train calls, then 10 LinUCB updates of 8 rows
            assert not module.agent.actions_from_reward_layer.numpy()
            assert sum(float(n.numpy()) for n in module.agent.num_samples) == 10 * ENVS
        assert runners.foreach_env_runner(_runner_settings, local_env_runner=False) == [("1", True, 1, 1, 1)] * 2

        observations = _observations(module)
        expected, _ = module.greedy_actions(observations)
        algo.save(str(tmp_path / "checkpoint"))
        restored = RLModule.from_checkpoint(tmp_path.joinpath("checkpoint", *MODULE_PATH))
        assert isinstance(restored, TFAgentsBanditModule)
        assert torch.equal(restored.forward_inference({"obs": torch.from_numpy(observations)})["actions"],
                           torch.from_numpy(expected))
        _assert_states_equal(restored.get_state(), module.get_state())
        _assert_export_acts_like(module, export_policy(algo, tmp_path / "export"), observations)
    finally:
        algo.stop()


# The training paths of parallel runners: linear statistics with the runners' step k combined into one train
# call (tfa-lints), and per-runner train calls of a gradient phase followed by a linear one (tfa-neural-linucb).
# tfa-linucb and tfa-neural-eps-greedy train through the same two code paths.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["tfa-lints", "tfa-neural-linucb"])
def test_agent_trains_on_parallel_runners_and_every_runner_gets_its_weights(small_data_dir, tmp_path, name):
    _run(_train_on_parallel_runners, small_data_dir, tmp_path, name)


def _restore_per_arm(data_dir, tmp_path, name):
    from ray.rllib.algorithms.algorithm import Algorithm

    algo = _config(name, data_dir, env=PER_ARM_ENV, runners=0).build_algo()
    try:
        for _ in range(3):
            result = algo.train()
            assert np.isfinite(result["learners"]["loss"])
            assert np.isfinite(result["env_runners"]["per_step_regret"])
        module = algo.module
        assert module.per_arm and module.num_actions == 8
        observations = _observations(module)
        expected, scores = module.greedy_actions(observations)
        assert scores.shape == (40, 8)
        state = module.get_state()  # the full Learner state: with Adam's slots for the neural agents
        assert any(key.startswith("optimizer/") for key in state) == name.startswith("tfa-neural")
        path = algo.save(str(tmp_path / "checkpoint")).checkpoint.path
        _assert_export_acts_like(module, export_policy(module, tmp_path / "export"), observations)
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(path)
    try:
        _assert_states_equal(restored.module.get_state(), state)
        actions, restored_scores = restored.module.greedy_actions(observations)
        np.testing.assert_array_equal(actions, expected)
        np.testing.assert_array_equal(restored_scores, scores)
        _assert_states_equal(restored.env_runner.module.get_state(), restored.module.get_state(inference_only=True))
        assert np.isfinite(restored.train()["learners"]["loss"])  # training goes on
    finally:
        restored.stop()


# One agent of each state layout: linear statistics (tfa-lints, as tfa-linucb) and networks with Adam's slots
# plus statistics (tfa-neural-linucb; tfa-neural-eps-greedy has the network and slots alone).
@pytest.mark.parametrize("name", ["tfa-lints", "tfa-neural-linucb"])
def test_per_arm_agent_restores_from_checkpoint_and_exports(small_data_dir, tmp_path, name):
    _run(_restore_per_arm, small_data_dir, tmp_path, name)


def test_agents_are_selected_by_name_with_their_hyperparameters():
    with pytest.raises(ValueError, match=r"unknown TF-Agents agent 'ucb'; valid agents: linucb, lints, "
                                         r"neural-eps-greedy, neural-linucb"):
        TFAgentsBanditConfig().training(agent="ucb")
    with pytest.raises(ValueError, match=r"epsilon=1.5 must be in \[0, 1\]"):
        TF_AGENTS_ALGORITHM_CONFIGS["tfa-neural-eps-greedy"]().training(epsilon=1.5).validate()
    config = TFAgentsBanditConfig().training(agent="tfa-neural-linucb", alpha=2.0, layers=[8], learning_rate=0.01,
                                             encoding_dim=3, encoding_network_num_train_steps=5)
    resolved = config.resolved_model_config
    assert (resolved["agent"], resolved["alpha"], resolved["layers"], resolved["learning_rate"]) == (
        "neural-linucb", 2.0, (8,), 0.01)
    assert (resolved["encoding_dim"], resolved["encoding_network_num_train_steps"]) == (3, 5)
    # TF-Agents' MovieLens defaults: LinUCB alpha 10 / tikhonov 0.001, LinTS tikhonov 1.0, batch 8, 2 steps.
    linucb = TF_AGENTS_ALGORITHM_CONFIGS["tfa-linucb"]()
    assert (linucb.resolved_model_config["alpha"], linucb.resolved_model_config["tikhonov_weight"]) == (10.0, 0.001)
    assert TF_AGENTS_ALGORITHM_CONFIGS["tfa-lints"]().resolved_model_config["tikhonov_weight"] == 1.0
    assert (linucb.num_envs_per_env_runner, linucb.rollout_fragment_length) == (8, 2)


def _learns_at_the_default_simulate_layout(data_dir, name):
    from recbandits.jobs.simulate import SimulationSpec, train_policy

    default = SimulationSpec(algo=name)
    assert (default.num_env_runners, default.num_envs_per_env_runner, default.rollout_fragment_length) == (1, 256, 8)
    # The same layout sampled in this process (no runner actor to start): 256 sub-envs x 8 steps per iteration.
    spec = SimulationSpec(algo=name, steps=10_240, data_dir=str(data_dir), num_env_runners=0)
    rows = train_policy(spec, name).rows
    assert [row["env_steps"] for row in rows] == [2048 * i for i in range(1, 6)]
    return rows[-1]["per_step_regret"]


@pytest.fixture(scope="module")
def random_regret_at_the_default_layout(ml100k_dir):
    """Random's per-step regret in the last iteration of the same run (the same for every algorithm)."""
    from recbandits.jobs.simulate import SimulationSpec, train_policy

    spec = SimulationSpec(algo="random", steps=10_240, data_dir=str(ml100k_dir), num_env_runners=0)
    return train_policy(spec, "random").rows[-1]["per_step_regret"]


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("name", list(TF_AGENTS_ALGORITHM_CONFIGS))
def test_every_tf_agents_algorithm_beats_random_at_the_default_simulate_layout(ml100k_dir, name,
                                                                              random_regret_at_the_default_layout):
    # 256 sub-envs x 8 steps: with the policy fixed for a fragment, LinUCB's first-index ties sent all 2,048
    # decisions of a fragment to one arm and it did worse than random (4.09 vs 3.68 per step).
    regret = _run(_learns_at_the_default_simulate_layout, ml100k_dir, name)
    random_regret = random_regret_at_the_default_layout
    assert 3.0 < random_regret < 4.5
    assert regret < 0.5 * random_regret, f"{name}: per-step regret {regret:.3f} vs random {random_regret:.3f}"
