"""TF-Agents' RankingAgent on recbandits' ranking env (real ml-100k, real TF-Agents): feedback, traces, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from recbandits.algos.tf_agents_ranking import (
    TFAgentsRankingConfig,
    _ranking_py_environment,
    run_tf_agents_ranking,
)
from recbandits.envs import MovieLensRankingVectorEnv
from recbandits.jobs.simulate import ENV_DEFAULTS

pytestmark = [pytest.mark.real_data, pytest.mark.tf_agents]


def _config(ml100k_dir, **settings) -> TFAgentsRankingConfig:
    return TFAgentsRankingConfig(data_dir=str(ml100k_dir), env_config={**ENV_DEFAULTS["movielens-ranking"],
                                                                       **settings.pop("env", {})},
                                 batch_size=16, **settings)


@pytest.mark.parametrize("choice_model", ["cascade", "position_based"])
def test_the_agent_sees_the_env_s_feedback_in_tf_agents_format(ml100k_dir, choice_model):
    """The adapter's observation, reward and regret are those of the same seeded recbandits env, step by step."""
    config = _config(ml100k_dir, env={"choice_model": choice_model})
    adapter = _ranking_py_environment(config)
    twin = MovieLensRankingVectorEnv(num_envs=16, data_dir=str(ml100k_dir), episode_length=None, **config.env_config)
    observation, _ = twin.reset(seed=config.seed)
    first = adapter.reset()
    np.testing.assert_array_equal(first.observation["per_arm"], observation["per_arm"])
    rng = np.random.default_rng(0)
    for _ in range(3):
        slates = np.argsort(rng.random((16, 20)), axis=1)[:, :5].astype(np.int32)
        step = adapter.step(slates)
        observation, clicks, _, _, info = twin.step(slates.astype(np.int64))
        np.testing.assert_array_equal(step.observation["global"], observation["global"])
        np.testing.assert_array_equal(adapter.regret[-1], info["regret"])
        if choice_model == "cascade":
            position = info["clicked_position"]
            np.testing.assert_array_equal(step.reward["chosen_index"], np.where(position < 0, 5, position))
            np.testing.assert_array_equal(step.reward["chosen_value"], (position >= 0).astype(np.float32))
            assert step.reward["chosen_index"].dtype == np.int32
        else:
            np.testing.assert_array_equal(step.reward, info["slot_clicks"].astype(np.float32))
            np.testing.assert_array_equal(step.reward.sum(axis=1), clicks)


def test_a_ranking_run_gives_exact_whole_loops_and_repeats_with_its_seed(ml100k_dir):
    config = _config(ml100k_dir)
    trace = run_tf_agents_ranking(config, 300)  # 16 x 2 per loop: rounds up to 10 loops, 320 slates
    np.testing.assert_array_equal(trace.samples, 32 * np.arange(1, 11))
    regret = np.diff(trace.cumulative_regret, prepend=0.0)
    assert np.all(regret >= 0) and np.all(regret <= 32)  # a cascade slate's expected clicks are within [0, 1]
    assert np.all(np.diff(trace.suboptimal, prepend=0) <= 32) and trace.wall_time_s > 0
    again = run_tf_agents_ranking(config, 300)
    np.testing.assert_array_equal(again.cumulative_regret, trace.cumulative_regret)
    other = run_tf_agents_ranking(_config(ml100k_dir, seed=1), 300)
    assert not np.array_equal(other.cumulative_regret, trace.cumulative_regret)


def test_compare_runs_each_contender_on_its_env():
    from recbandits.jobs.compare import ComparisonSpec

    spec = ComparisonSpec(algos=["linucb", "tfa-ranking", "tfa-ranking-descending"], env="movielens-ranking")
    assert spec.env_config()["num_candidates"] == 20
    with pytest.raises(ValueError, match=r"--env movielens: tfa-ranking runs on --env movielens-ranking"):
        ComparisonSpec(algos=["tfa-ranking"], env="movielens")
    with pytest.raises(ValueError, match=r"--env movielens-ranking: tfa-linucb runs on --env movielens \(TF-Agents "
                                         r"contenders here: tfa-ranking, tfa-ranking-descending\)"):
        ComparisonSpec(algos=["tfa-linucb"], env="movielens-ranking")
    with pytest.raises(ValueError, match=r"vw-squarecb picks one arm, not a slate"):
        ComparisonSpec(algos=["vw-squarecb"], env="movielens-ranking")
    with pytest.raises(ValueError, match=r"tfa-ranking:batch=8': TF-Agents baselines run with their example's batch"):
        ComparisonSpec(algos=["tfa-ranking:batch=8"], env="movielens-ranking")
