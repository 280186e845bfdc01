"""TF-Agents baselines on TF-Agents' own MovieLens env (real ml-100k): traces, seeding, learning."""

from __future__ import annotations

import numpy as np
import pytest

from recbandits.algos.tf_agents_baseline import (
    TF_AGENTS_ALGOS,
    BaselineTrace,
    TFAgentsBaselineConfig,
    run_tf_agents_baseline,
)

pytestmark = [pytest.mark.real_data, pytest.mark.tf_agents]

SMALL_BUDGET = 150  # not a multiple of batch 8 * 2 steps: rounds up to 10 loops, 160 samples
SAMPLES_PER_LOOP = 16

_small_runs: dict[tuple[str, int], tuple[BaselineTrace, list[int]]] = {}


def _small_run(ml100k_dir, algo: str, seed: int = 0) -> tuple[BaselineTrace, list[int]]:
    """Run (once per module) `algo` for SMALL_BUDGET samples; returns its trace and the progress calls."""
    if (algo, seed) not in _small_runs:
        calls: list[int] = []
        config = TFAgentsBaselineConfig(algo=algo, ratings_file=ml100k_dir / "u.data", seed=seed)
        _small_runs[algo, seed] = run_tf_agents_baseline(config, SMALL_BUDGET, progress=calls.append), calls
    return _small_runs[algo, seed]


def _per_sample_regret(trace: BaselineTrace) -> np.ndarray:
    """Mean regret per sample of each loop."""
    return np.diff(trace.cumulative_regret, prepend=0.0) / np.diff(trace.samples, prepend=0)


@pytest.mark.parametrize("algo", TF_AGENTS_ALGOS)
def test_small_run_gives_a_consistent_trace(ml100k_dir, algo):
    trace, calls = _small_run(ml100k_dir, algo)
    loops = -(-SMALL_BUDGET // SAMPLES_PER_LOOP)
    assert trace.algo == algo
    assert len(trace.samples) == len(trace.cumulative_regret) == len(trace.suboptimal) == loops
    np.testing.assert_array_equal(trace.samples, SAMPLES_PER_LOOP * np.arange(1, loops + 1))
    assert np.all(trace.samples % SAMPLES_PER_LOOP == 0) and trace.samples[-1] >= SMALL_BUDGET
    assert calls == trace.samples.tolist()
    assert np.all(np.isfinite(trace.cumulative_regret))
    assert trace.cumulative_regret[0] >= 0 and np.all(np.diff(trace.cumulative_regret) >= 0)
    assert trace.suboptimal[0] >= 0 and np.all(np.diff(trace.suboptimal) >= 0)
    assert np.all(trace.suboptimal <= trace.samples)
    # Ten loops are far too few for any agent to always pick the best movie.
    assert trace.cumulative_regret[-1] > 0 and trace.suboptimal[-1] > 0
    assert trace.wall_time_s > 0 and trace.samples_per_s == pytest.approx(
        trace.samples[-1] / trace.wall_time_s
    )
    # After the two loops that trace: a rate over the other eight, never below the whole run's (tracing is slow).
    assert trace.steady_samples_per_s > trace.samples_per_s


def test_same_seed_gives_identical_traces(ml100k_dir):
    first, _ = _small_run(ml100k_dir, "tfa-linucb")
    config = TFAgentsBaselineConfig(algo="tfa-linucb", ratings_file=ml100k_dir / "u.data", seed=0)
    second = run_tf_agents_baseline(config, SMALL_BUDGET)
    np.testing.assert_array_equal(first.cumulative_regret, second.cumulative_regret)
    np.testing.assert_array_equal(first.suboptimal, second.suboptimal)


def test_unknown_algo_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError) as excinfo:
        TFAgentsBaselineConfig(algo="tfa-ucb1", ratings_file=tmp_path / "u.data")
    for algo in TF_AGENTS_ALGOS:
        assert algo in str(excinfo.value)
    config = TFAgentsBaselineConfig(algo="tfa-linucb", ratings_file=tmp_path / "u.data")
    config.algo = "linucb"
    with pytest.raises(ValueError, match="tfa-linucb"):
        run_tf_agents_baseline(config, 16)


def _example_settings(example: str) -> tuple[dict, dict]:
    """(module-level constants, keyword arguments of each agent constructor call) of an installed TF-Agents example."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(f"tf_agents.bandits.agents.examples.v2.{example}")
    tree = ast.parse(open(spec.origin).read())
    constants = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
                 if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                 and isinstance(node.value, ast.Constant | ast.Tuple)}
    calls: dict[str, dict] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.endswith("Agent"):
            keywords = {}
            for keyword in node.keywords:
                value = keyword.value
                if isinstance(value, ast.Constant):
                    keywords[keyword.arg] = value.value
                elif isinstance(value, ast.Name) and value.id in constants:
                    keywords[keyword.arg] = constants[value.id]
                elif isinstance(value, ast.Call) and keyword.arg == "optimizer":  # AdamOptimizer(learning_rate=LR)
                    rate = value.keywords[0].value
                    keywords["learning_rate"] = constants[rate.id] if isinstance(rate, ast.Name) else rate.value
            calls.setdefault(node.func.attr, keywords)
    return constants, calls


def test_every_baseline_runs_with_the_hyperparameters_its_tf_agents_example_ships(tmp_path):
    """Read back from the installed examples and agents, so a wrong baseline setting cannot hide."""
    import inspect

    from tf_agents.bandits.agents import linear_thompson_sampling_agent

    from recbandits.algos.tf_agents_baseline import AS_SHIPPED

    def config(algo):
        return TFAgentsBaselineConfig(algo=algo, ratings_file=tmp_path / "u.data")

    constants, calls = _example_settings("train_eval_movielens")
    linucb = calls["LinearUCBAgent"]
    assert (config("tfa-linucb").alpha, config("tfa-linucb").tikhonov_weight) == (
        linucb["alpha"], linucb["tikhonov_weight"]
    ) == (10.0, 0.001)
    # The example builds LinTS without alpha or tikhonov_weight: the agent's own defaults.
    assert not {"alpha", "tikhonov_weight"} & set(calls["LinearThompsonSamplingAgent"])
    defaults = inspect.signature(linear_thompson_sampling_agent.LinearThompsonSamplingAgent).parameters
    lints = config("tfa-lints")
    assert (lints.alpha, lints.tikhonov_weight) == (defaults["alpha"].default, defaults["tikhonov_weight"].default)
    eps_greedy = config("tfa-neural-eps-greedy")
    assert (eps_greedy.epsilon, eps_greedy.layers, eps_greedy.learning_rate) == (
        constants["EPSILON"], constants["LAYERS"], calls["NeuralEpsilonGreedyAgent"]["learning_rate"])
    sparse_constants, sparse_calls = _example_settings("train_eval_sparse_features")
    neural = sparse_calls["NeuralLinUCBAgent"]
    neural_linucb = config("tfa-neural-linucb")
    assert (neural_linucb.alpha, neural_linucb.epsilon, neural_linucb.learning_rate, neural_linucb.encoding_dim,
            neural_linucb.encoding_network_num_train_steps) == (
        neural["alpha"], neural["epsilon_greedy"], neural["learning_rate"], neural["encoding_dim"],
        neural["encoding_network_num_train_steps"])
    assert set(AS_SHIPPED) == set(TF_AGENTS_ALGOS)
    explicit = TFAgentsBaselineConfig(algo="tfa-lints", ratings_file=tmp_path / "u.data", tikhonov_weight=0.5)
    assert explicit.tikhonov_weight == 0.5 and explicit.alpha == 1.0


def test_linucb_learns(ml100k_dir):
    # 2000 samples, 125 loops: over seeds 0-7 the first quarter costs ~3.6 regret per sample and the last
    # quarter ~0.27 (never above 0.3).
    config = TFAgentsBaselineConfig(algo="tfa-linucb", ratings_file=ml100k_dir / "u.data", seed=0)
    trace = run_tf_agents_baseline(config, 2000)
    assert trace.samples[-1] == 2000
    assert np.isfinite(trace.cumulative_regret[-1])
    per_sample = _per_sample_regret(trace)
    quarter = len(per_sample) // 4
    first, last = per_sample[:quarter].mean(), per_sample[-quarter:].mean()
    assert last < 0.5 * first, (first, last)
