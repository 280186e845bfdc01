"""The MovieLens env in TF-Agents parity mode equals TF-Agents' own MovieLensPyEnvironment on real ml-100k."""

from __future__ import annotations

import numpy as np
import pytest

from recbandits.envs import MovieLensEnv

pytestmark = [pytest.mark.real_data, pytest.mark.tf_agents]

RANK, NUM_MOVIES = 20, 20


@pytest.fixture(scope="module")
def tf_agents_env(ml100k_dir):
    from recbandits.worker_env import set_worker_env

    set_worker_env()  # before TensorFlow is first imported
    from tf_agents.bandits.environments import movielens_py_environment

    return movielens_py_environment.MovieLensPyEnvironment(
        str(ml100k_dir / "u.data"), rank_k=RANK, batch_size=8, num_movies=NUM_MOVIES, csv_delimiter="\t"
    )


@pytest.fixture(scope="module")
def env(ml100k_dir):
    return MovieLensEnv(data_dir=ml100k_dir, rank=RANK, num_movies=NUM_MOVIES)


def test_reward_matrix_contexts_and_oracle_equal_tf_agents(env, tf_agents_env):
    factorization = env.unwrapped.simulator.factorization
    ours = factorization.approx_ratings()
    theirs = tf_agents_env._approx_ratings_matrix
    assert ours.shape == theirs.shape == (tf_agents_env._effective_num_users, NUM_MOVIES)
    assert np.max(np.abs(ours - theirs)) <= 1e-6
    np.testing.assert_allclose(factorization.user_factors, tf_agents_env._u_hat, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(np.argmax(ours, axis=1), tf_agents_env._optimal_action_table)
    assert np.max(np.abs(np.max(ours, axis=1) - tf_agents_env._optimal_reward_table)) <= 1e-6


def test_stepping_gives_tf_agents_rewards_and_oracle(env, tf_agents_env):
    factorization = env.unwrapped.simulator.factorization
    row_of_user = {user_id: row for row, user_id in enumerate(factorization.user_ids)}
    rng = np.random.default_rng(0)
    observation, _ = env.reset(seed=0)
    for _ in range(500):
        action = int(rng.integers(NUM_MOVIES))
        next_observation, reward, _, _, info = env.step(action)
        row = row_of_user[info["user_id"]]
        # TF-Agents' env for the same user: its context, its reward for the action, its oracle.
        tf_agents_env._current_users = [row]
        tf_agents_env._previous_users = [row]
        np.testing.assert_allclose(observation, tf_agents_env._u_hat[row], atol=1e-6, rtol=1e-6)
        assert abs(reward - tf_agents_env._apply_action(np.array([action]))[0]) <= 1e-6
        assert info["optimal_action"] == tf_agents_env.compute_optimal_action()[0]
        assert abs(info["optimal_reward"] - tf_agents_env.compute_optimal_reward()[0]) <= 1e-6
        observation = next_observation
