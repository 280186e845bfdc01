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


def test_tikhonov_defaults_follow_the_anchor_settings(tmp_path):
    def tikhonov(algo):
        return TFAgentsBaselineConfig(algo=algo, ratings_file=tmp_path / "u.data").tikhonov_weight

    assert tikhonov("tfa-linucb") == 0.001
    assert tikhonov("tfa-lints") == 1.0
    explicit = TFAgentsBaselineConfig(algo="tfa-lints", ratings_file=tmp_path / "u.data", tikhonov_weight=0.5)
    assert explicit.tikhonov_weight == 0.5


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
