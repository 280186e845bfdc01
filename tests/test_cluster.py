"""Ray Tune sweeps, env runners on several nodes, and a killed env runner, on a multi-node Ray cluster.

The cluster is ``ray.cluster_utils.Cluster`` on this machine: a 4-CPU head with the custom resource ``packed``
and two 1-CPU nodes with ``spread``. Runners asking for ``spread`` land one per node, those asking for
``packed`` share the head, and Tune trials use plain CPUs.

Ray lifecycle: a process can only be connected to one Ray instance, and the session fixture ``ray_local``
(tests/conftest.py) may already have started a local one when this module runs. The module fixture
``cluster`` therefore remembers whether Ray was up, shuts it down, starts the cluster, and at the end shuts
the cluster down and, if Ray was up before, reconnects the local Ray exactly as ``ray_local`` does
(``connect(num_cpus=2)``), so later modules find what the session fixture gave them. Tests here that need no
cluster use no Ray at all, so the module works in any order, alone or in a full ``pytest tests`` run.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
import yaml
from conftest import REPO_ROOT
from typer.testing import CliRunner

from recbandits.jobs.sweep import SweepSpec, parse_values
from recbandits.jobs.tune import run_sweep, tune_command

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # the scaling model is the scaling benchmark's
from scaling_model import IterationTiming, TimedAlgorithm, fit_model, typical_timing  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def _app() -> typer.Typer:
    """A local app with the command registered as recbandits.cli registers it."""
    app = typer.Typer()
    app.callback()(lambda: None)  # keep `tune` a subcommand
    app.command("tune")(tune_command)
    return app


# ---------------------------------------------------------------------------------------------------- no Ray


def test_search_space_grid_ranges_seeds_and_errors():
    spec = SweepSpec(algo="linucb", space={"alpha": "1,5", "lambda": "0.01:1"}, num_samples=3, seeds=[0, 1])
    configurations = spec.configurations()
    assert len(configurations) == 2 * 3  # each grid point gets num_samples draws of the range
    assert sorted({c["alpha"] for c in configurations}) == [1.0, 5.0]
    assert all(0.01 <= c["lambda"] <= 1 for c in configurations)
    assert spec.configurations() == configurations, "draws are seeded (--search-seed)"

    drawn = SweepSpec(algo="eps-greedy", space={"epsilon": "0.01,0.1,0.2"}, search="random", num_samples=20)
    assert {c["epsilon"] for c in drawn.configurations()} <= {0.01, 0.1, 0.2}
    assert len(drawn.configurations()) <= 3, "duplicate draws run once"

    defaults = SweepSpec(algo="linucb", num_samples=4).configurations()  # the RayJob's sweep: default ranges
    assert len(defaults) == 4 and all(
        0.1 <= c["alpha"] <= 20 and 0.001 <= c["lambda"] <= 10 for c in defaults
    )
    from ray.tune.search.sample import Float, LogUniform, Uniform

    alpha, gamma = parse_values("alpha", "0.1:20"), parse_values("gamma", "0.9:1")  # Ray Tune's own domains
    assert isinstance(alpha, Float) and (alpha.lower, alpha.upper) == (0.1, 20.0)
    assert isinstance(alpha.get_sampler(), LogUniform)
    assert (gamma.lower, gamma.upper) == (0.9, 1.0) and isinstance(gamma.get_sampler(), Uniform)
    assert parse_values("layers", "50x50x50,100x100,8") == [(50, 50, 50), (100, 100), (8,)]
    assert SweepSpec(algo="tfa-neural-eps-greedy", space={"layers": "8,16x16"}).configurations() == [
        {"layers": (8,)},
        {"layers": (16, 16)},
    ]

    for kwargs, message in [
        (dict(algo="linucb", space={"epsilon": "0.1"}), "--epsilon does not apply to linucb"),
        (dict(algo="linucb", space={"lambda": "0,1"}), "--lambda 0 must be > 0"),
        (dict(algo="linucb", space={"gamma": "1.5"}), "must be in"),
        (dict(algo="linucb", space={"alpha": "5:1"}), "low < high"),
        (dict(algo="linucb", space={"alpha": "a,b"}), "comma-separated numbers"),
        (dict(algo="tfa-linucb", env="movielens-ranking"), "--env movielens"),
        (dict(algo="nope"), "--algo 'nope'"),
        (dict(seeds=[]), "--seeds"),
    ]:
        with pytest.raises(ValueError, match=message):
            SweepSpec(**kwargs)


def test_scaling_model_recovers_the_sync_cost_and_projects():
    def timing(n, sample_s=0.1):  # gather 2 + 1 n ms, learner 0.5 n ms, sync_weights 3 ms, other 1 + 0.5 n ms
        parts = dict(gather_s=(2 + n) * 1e-3, learn_s=0.5e-3 * n, sync_s=3e-3, other_s=(1 + 0.5 * n) * 1e-3)
        total = sample_s + sum(parts.values())
        return IterationTiming(runners=n, env_steps=1000 * n, total_s=total, sample_max_s=sample_s,
                               sample_mean_s=sample_s, sample_cpu_mean_s=sample_s, **parts)  # fmt: skip

    assert typical_timing([timing(2, 0.1), timing(2, 0.1), timing(2, 5.0), timing(2, 0.1)]) == timing(2, 0.1)
    model, parts = fit_model({n: timing(n) for n in (1, 2, 4)}, delta_bytes=1000)
    assert model.fixed_s == pytest.approx(6e-3) and model.per_runner_s == pytest.approx(2e-3)
    assert parts["sync_s"] == pytest.approx((3e-3, 0.0), abs=1e-12)
    assert model.steps_per_s(1) == pytest.approx(1000 / 0.108)
    assert model.efficiency(10) == pytest.approx(0.108 / 0.126)
    network = (100 * 1000 + 10 * 1000) / 1e6  # 100 deltas in and the state out to 10 nodes, at 1 MB/s
    assert model.iteration_s(100, nodes=10, bandwidth_bytes_per_s=1e6) == pytest.approx(0.306 + network)


def test_the_rayjob_entrypoint_and_bad_flags_parse_as_expected():
    entrypoint = yaml.safe_load((REPO_ROOT / "deploy/kuberay/rayjob-sweep.yaml").read_text())["spec"][
        "entrypoint"
    ]
    argv = entrypoint.split()
    assert argv[:2] == ["recbandits", "tune"]
    command = typer.main.get_command(_app()).commands["tune"]
    context = command.make_context("recbandits tune", argv[2:])
    assert context.params["num_samples"] == 32 and context.params["address"] == "auto"

    result = CliRunner().invoke(
        _app(), ["tune", "--algo", "linucb", "--epsilon", "0.1", "--out", "/nonexistent"]
    )
    assert result.exit_code == 2 and "--epsilon does not apply to linucb" in result.output
    result = CliRunner().invoke(_app(), ["tune", "--resume", "--out", "/nonexistent/sweep"])
    assert result.exit_code == 2 and "nothing to resume" in result.output


# ------------------------------------------------------------------------------------------ the Ray cluster


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    from recbandits.cluster import connect

    local_ray_was_up = ray.is_initialized()
    ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 4, "resources": {"packed": 2}, "include_dashboard": False},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1, resources={"spread": 1})
    try:
        connect(cluster.address)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if local_ray_was_up:
            connect(num_cpus=2)  # what tests/conftest.py's ray_local started


def _two_runner_algo(resource: str):
    """LinTS (random draws per decision: tests the per-runner RNG seeding), 2 runners, raw transitions."""
    from recbandits.jobs.simulate import SimulationSpec, build_config

    spec = SimulationSpec(
        env="movielens",
        algo="lints",
        num_env_runners=2,
        num_envs_per_env_runner=32,
        rollout_fragment_length=4,
        seed=7,
    )
    config = build_config(spec).training(record_transitions=True)
    config.env_runners(custom_resources_per_env_runner={resource: 1})
    config.fault_tolerance(restart_failed_env_runners=True, delay_between_env_runner_restarts_s=0.0)
    return config.build_algo()


@pytest.fixture(scope="module")
def spread_algo(cluster):
    algo = _two_runner_algo("spread")
    yield algo
    algo.stop()


def _interrupt_once(marker: Path):
    """A Tune callback that presses Ctrl+C (SIGINT to this process) once a trial has finished."""
    from ray import tune

    class InterruptOnce(tune.Callback):
        def on_step_end(self, iteration, trials, **info):
            # At the end of a step, a finished trial is recorded as such in the state Tune saves on SIGINT.
            if any(trial.status == "TERMINATED" for trial in trials) and not marker.exists():
                marker.touch()  # a resumed sweep unpickles this callback: it must not fire again
                os.kill(os.getpid(), signal.SIGINT)  # Tune's handler: stop, save the experiment state

    return InterruptOnce()


def test_sweep_on_the_default_data_is_interrupted_resumed_and_writes_its_outputs(cluster, tmp_path):
    out = tmp_path / "sweep"
    spec = SweepSpec(
        algo="linucb",
        steps=2048,
        space={"alpha": "0.5,5"},
        seeds=[0, 1],
        num_envs_per_env_runner=64,
        rollout_fragment_length=4,
        max_concurrent=3,
        asha=True,
        grace_steps=512,
    )
    previous_handler = signal.signal(signal.SIGINT, lambda *_: None)  # a late signal must never stop pytest
    try:
        interrupted = run_sweep(spec, out, verbose=0, callbacks=[_interrupt_once(tmp_path / "interrupted")])
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    before = pd.read_csv(out / "results.csv")
    assert interrupted["unfinished"] >= 1, before  # 4 trials, 3 at a time: the interrupt left some
    done_before = before[before["status"].isin(["completed", "stopped early"])]
    assert len(done_before) >= 1

    result = CliRunner().invoke(_app(), ["tune", "--resume", "--out", str(out), "--tune-output", "0"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 and set(table["status"]) <= {"completed", "stopped early"}, table
    assert sorted(zip(table["alpha"], table["seed"], strict=True)) == [(0.5, 0), (0.5, 1), (5.0, 0), (5.0, 1)]
    completed = table[table["status"] == "completed"]
    assert len(completed) >= 1 and (completed["env_steps"] == 2048).all(), table.to_string()
    assert (completed["cumulative_regret"] > 0).all()
    # Trials finished before the interrupt are kept as they were, not run again.
    kept = table.set_index("trial_id").loc[done_before["trial_id"]]
    np.testing.assert_array_equal(
        kept["cumulative_regret"].to_numpy(), done_before["cumulative_regret"].to_numpy()
    )

    best = json.loads((out / "best_config.json").read_text())
    assert (
        best["hyperparameters"]["alpha"] in (0.5, 5.0) and best["metric"] == "env_runners/cumulative_regret"
    )
    best_rows = completed[completed["alpha"] == best["hyperparameters"]["alpha"]]
    assert best["mean_cumulative_regret"] == pytest.approx(best_rows["cumulative_regret"].mean())
    assert Path(best["best_trial"]["checkpoint"]).is_dir()
    assert best["simulate_command"].startswith("recbandits simulate --env movielens --algo linucb")
    assert (out / "regret_vs_alpha.png").stat().st_size > 0
    assert "| sweep_config_id | alpha |" in (out / "results.md").read_text()
    assert "best:" in result.output


def test_runners_on_two_nodes_learn_exactly_what_one_node_learns(spread_algo, cluster):
    packed_algo = _two_runner_algo("packed")
    try:
        for _ in range(3):
            spread, packed = spread_algo.train(), packed_algo.train()
        assert spread["env_runners"]["num_nodes"] == 2 and len(spread_algo.runner_node_ids) == 2
        assert packed["env_runners"]["num_nodes"] == 1 and len(packed_algo.runner_node_ids) == 1
        assert set(spread_algo.runner_node_ids).isdisjoint(packed_algo.runner_node_ids)
        assert spread["env_runners"]["cumulative_regret"] == packed["env_runners"]["cumulative_regret"]
        for name in ("data_precision", "data_response", "response_square", "counts", "theta", "covariance"):
            np.testing.assert_array_equal(
                getattr(spread_algo.module, name).numpy(),
                getattr(packed_algo.module, name).numpy(),
                err_msg=name,
            )

        # The benchmark's per-iteration split of train() (benchmarks/scaling.py) adds up.
        _, timing = TimedAlgorithm(packed_algo).train()
        assert (
            timing.runners == 2
            and timing.env_steps == 2 * 32 * 4
            and 0 < timing.sample_max_s < timing.total_s
        )
        parts = timing.gather_s + timing.learn_s + timing.sync_s + timing.other_s
        assert (
            timing.sync_cost_s == pytest.approx(parts, abs=1e-6) and timing.learn_s > 0 and timing.sync_s > 0
        )
    finally:
        packed_algo.stop()


def _records(algo) -> dict[int, dict]:
    parts = algo.env_runner_group.foreach_env_runner(
        lambda runner: (runner.worker_index, os.getpid(), runner.recorded_transitions()),
        local_env_runner=False,
    )
    return {index: {"pid": pid, **transitions} for index, pid, transitions in parts}


def test_a_runner_killed_mid_iteration_is_restarted_and_no_transition_counts_twice(spread_algo):
    algo = spread_algo

    def arm_to_die_mid_sample(runner) -> bool:
        """The runner's next sample_statistics call learns from 2 vector steps, then dies before returning."""
        sample = runner.sample_statistics

        def sample_then_die(*args, **kwargs):
            sample(num_steps=2)
            os._exit(1)

        runner.sample_statistics = sample_then_die
        return True

    for _ in range(2):
        algo.train()
    victim = 1
    before = _records(algo)
    algo.env_runner_group.foreach_env_runner(
        arm_to_die_mid_sample, remote_worker_ids=[victim], local_env_runner=False
    )
    steps = algo.metrics.peek(("env_runners", "num_env_steps_sampled_lifetime"))

    result = algo.train()  # the victim dies in the middle of sampling; the other runner's data still counts
    assert result["env_runners"]["num_healthy_env_runners"] == 1
    assert result["env_runners"]["num_env_steps_sampled_lifetime"] == steps + 32 * 4
    deadline = time.monotonic() + 150
    while result["env_runners"]["num_healthy_env_runners"] < 2:  # training goes on while Ray restarts it
        assert time.monotonic() < deadline, "the killed env runner was not restarted"
        time.sleep(0.5)
        result = algo.train()
    for _ in range(2):
        result = algo.train()
    assert result["env_runners"]["num_nodes"] == 2

    after = _records(algo)
    assert after[victim]["pid"] != before[victim]["pid"], "a new process replaced the killed runner"
    # The new process draws fresh streams: its first users are not the ones the run started with.
    assert not np.array_equal(after[victim]["features"][:32], before[victim]["features"][:32])
    # Every transition the Learner holds: the victim's before it died (its last, partial call never returned),
    # the other runner's, and the restarted victim's since it came back: each exactly once.
    parts = [before[victim], after[2], after[victim]]
    features = np.concatenate([part["features"] for part in parts])
    models = np.concatenate([part["models"] for part in parts])
    rewards = np.concatenate([part["rewards"] for part in parts])
    module = algo.module
    assert (
        module.counts.sum().item() == len(rewards) == result["env_runners"]["num_env_steps_sampled_lifetime"]
    )
    precision = np.zeros_like(module.data_precision.numpy())
    response = np.zeros_like(module.data_response.numpy())
    np.add.at(precision, models, features[:, :, None] * features[:, None, :])
    np.add.at(response, models, features * rewards[:, None])
    np.testing.assert_allclose(module.data_precision.numpy(), precision, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(module.data_response.numpy(), response, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(module.counts.numpy(), np.bincount(models, minlength=module.num_models))


@pytest.mark.tf_agents
def test_sweep_over_network_sizes_of_a_tf_agents_backed_policy(cluster, tmp_path):
    out = tmp_path / "tfa"
    result = CliRunner().invoke(_app(), [
        "tune", "--algo", "tfa-neural-eps-greedy", "--layers", "8,16x16", "--epsilon", "0.1", "--steps", "48",
        "--num-envs", "8", "--rollout-fragment-length", "2", "--out", str(out), "--tune-output", "0",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "results.csv")
    assert sorted(table["layers"]) == ["16x16", "8"] and (table["status"] == "completed").all(), table
    assert (table["env_steps"] == 48).all() and (table["cumulative_regret"] >= 0).all()
    best = json.loads((out / "best_config.json").read_text())
    assert best["training"]["layers"] in ([8], [16, 16]) and best["training"]["epsilon"] == 0.1
    assert Path(best["best_trial"]["checkpoint"]).is_dir()
    assert (out / "regret_vs_layers.png").is_file()
