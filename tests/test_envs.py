"""The Gymnasium simulators: API conformance, exact oracle and regret, vectorized equivalence, drift, errors."""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from recbandits.envs import (
    ENV_IDS,
    MovieLensEnv,
    MovieLensPerArmEnv,
    MovieLensPerArmVectorEnv,
    MovieLensRankingEnv,
    MovieLensRankingVectorEnv,
    MovieLensVectorEnv,
    _random,
    factorize_movielens,
)

SINGLE_AND_VECTOR = [
    (MovieLensEnv, MovieLensVectorEnv, dict(rank=8, num_movies=15, reward_noise_std=0.5, drift_rate=0.05)),
    (MovieLensEnv, MovieLensVectorEnv, dict(rank=8, num_movies=15, movie_selection="most_rated", reward_type="click")),
    (MovieLensPerArmEnv, MovieLensPerArmVectorEnv, dict(rank=6, num_actions=10, drift_rate=0.02, reward_noise_std=0.1)),
    (MovieLensPerArmEnv, MovieLensPerArmVectorEnv, dict(rank=6, num_actions=300, reward_type="click")),
    (MovieLensRankingEnv, MovieLensRankingVectorEnv, dict(rank=6, num_candidates=12, slate_size=4)),
    (
        MovieLensRankingEnv,
        MovieLensRankingVectorEnv,
        dict(rank=6, num_candidates=8, slate_size=3, choice_model="position_based", feedback="score_vector",
             drift_rate=0.05),
    ),
]


def _assert_same(left, right, what):
    if isinstance(left, dict):
        assert left.keys() == right.keys(), what
        for key in left:
            _assert_same(left[key], right[key], f"{what}[{key}]")
    else:
        _assert_equal_up_to_rounding(left, right, what)


def _assert_equal_up_to_rounding(left, right, what):
    # Batched and single-row BLAS calls may round the last bit differently depending on the CPU; integers
    # (actions, clicks, positions) must match exactly.
    left, right = np.asarray(left), np.asarray(right)
    if np.issubdtype(left.dtype, np.floating) or np.issubdtype(right.dtype, np.floating):
        np.testing.assert_allclose(left, right, rtol=1e-12, atol=1e-12, err_msg=what)
    else:
        np.testing.assert_array_equal(left, right, err_msg=what)


@pytest.mark.parametrize("env_cls, kwargs", [
    (MovieLensEnv, dict(rank=8, num_movies=20)),
    (MovieLensEnv, dict(rank=8, num_movies=20, reward_type="click", drift_rate=0.01)),
    (MovieLensPerArmEnv, dict(rank=8, num_actions=10)),
    (MovieLensRankingEnv, dict(rank=8, num_candidates=10, slate_size=4, choice_model="position_based")),
    (MovieLensRankingEnv, dict(rank=8, num_candidates=10, slate_size=4, feedback="score_vector")),
])
def test_envs_pass_gymnasium_env_checker(env_cls, kwargs):
    env = env_cls(**kwargs)
    check_env(env, skip_render_check=True)


@pytest.mark.parametrize("single_cls, vector_cls, kwargs", SINGLE_AND_VECTOR)
def test_vector_env_gives_the_transitions_of_single_envs(single_cls, vector_cls, kwargs):
    num_envs, seed, episode_length, steps = 4, 11, 5, 13
    vector_env = vector_cls(num_envs=num_envs, episode_length=episode_length, **kwargs)
    singles = [single_cls(episode_length=episode_length, **kwargs) for _ in range(num_envs)]
    vector_obs, _ = vector_env.reset(seed=seed)
    single_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    action_rng = np.random.default_rng(0)
    needs_reset = np.zeros(num_envs, dtype=bool)
    for step in range(steps):
        for i in range(num_envs):
            _assert_same(_row(vector_obs, i), single_obs[i], f"obs of sub-env {i} at step {step}")
        actions = _sample_actions(vector_env, action_rng)
        vector_obs, rewards, terminated, truncated, infos = vector_env.step(actions)
        for i, env in enumerate(singles):
            if needs_reset[i]:
                single_obs[i], _ = env.reset()
                assert rewards[i] == 0.0 and not infos["_regret"][i]
                continue
            single_obs[i], reward, single_terminated, single_truncated, info = env.step(_row(actions, i))
            _assert_equal_up_to_rounding(rewards[i], reward, f"reward of sub-env {i} at step {step}")
            assert (terminated[i], truncated[i]) == (single_terminated, single_truncated)
            for key, value in info.items():
                assert infos[f"_{key}"][i]
                _assert_equal_up_to_rounding(infos[key][i], value, f"info[{key}] of sub-env {i} at step {step}")
        needs_reset = truncated | terminated
    # 13 steps with episodes of 5 steps went through two autoresets per sub-env.
    assert vector_env._episode_steps.max() < episode_length


def _row(batch, i):
    return {key: value[i] for key, value in batch.items()} if isinstance(batch, dict) else batch[i]


def _sample_actions(vector_env, rng):
    space = vector_env.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, space.n, size=vector_env.num_envs)
    # A slate: distinct candidates per row.
    return np.stack([rng.permutation(space.nvec[0])[: len(space.nvec)] for _ in range(vector_env.num_envs)])


@pytest.mark.parametrize("env_id", sorted(ENV_IDS.values()))
def test_registered_ids_make_single_and_vector_envs(env_id):
    env = gym.make(env_id, rank=6)
    obs, info = env.reset(seed=3)
    assert obs in env.observation_space
    assert "optimal_action" in info and "optimal_reward" in info
    vector_env = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point", rank=6)
    vector_obs, _ = vector_env.reset(seed=3)
    assert vector_obs in vector_env.observation_space
    _assert_same(_row(vector_obs, 0), obs, "sub-env 0 of the vector env equals the single env with the same seed")


def test_same_seed_same_trajectory_other_seed_other_users():
    def users(seed):
        env = MovieLensEnv(rank=8, reward_noise_std=1.0)
        env.reset(seed=seed)
        return [(info["user_id"], reward) for reward, info in (env.step(0)[1::3] for _ in range(50))]

    assert users(5) == users(5)
    assert users(5) != users(6)


def test_mf_rewards_and_oracle_are_the_factorized_ratings():
    env = MovieLensEnv(rank=8, num_movies=20)
    factorization = env.unwrapped.simulator.factorization
    approx = factorization.approx_ratings()
    row_of_user = {user_id: row for row, user_id in enumerate(factorization.user_ids)}
    obs, info = env.reset(seed=0)
    rng = np.random.default_rng(1)
    for _ in range(200):
        oracle = env.unwrapped.oracle_action()
        action = int(rng.integers(20))
        next_obs, reward, _, _, info = env.step(action)
        row = row_of_user[info["user_id"]]
        np.testing.assert_array_equal(obs, factorization.user_factors[row].astype(np.float32))
        assert reward == approx[row, action] == info["expected_reward"]
        assert info["optimal_action"] == oracle == np.argmax(approx[row])
        assert info["optimal_reward"] == approx[row].max()
        assert info["regret"] == approx[row].max() - approx[row, action] >= 0
        obs = next_obs


def test_oracle_policy_has_zero_regret_and_random_policy_positive_regret():
    for env in (MovieLensEnv(rank=8), MovieLensPerArmEnv(rank=8), MovieLensRankingEnv(rank=8, slate_size=3)):
        env.reset(seed=2)
        oracle_regret = [env.step(env.unwrapped.oracle_action())[4]["regret"] for _ in range(100)]
        assert np.max(np.abs(oracle_regret)) == 0.0, type(env).__name__
        random_regret = [env.step(env.action_space.sample())[4]["regret"] for _ in range(100)]
        assert np.min(random_regret) >= 0 and np.mean(random_regret) > 0, type(env).__name__


def test_per_arm_observation_holds_user_and_candidate_features():
    env = MovieLensPerArmEnv(rank=8, num_actions=12, user_demographics=True, movie_genres=True)
    features = env.unwrapped.simulator.features
    factorization = features.factorization
    obs, info = env.reset(seed=4)
    num_genres = len(features.arm_feature_names) - 8
    assert obs["per_arm"].shape == (12, 8 + num_genres)
    assert features.global_feature_names[8] == "age" and features.global_feature_names[9].startswith("gender=")
    candidate_rows = np.searchsorted(factorization.item_ids, info["candidate_ids"])
    assert len(set(info["candidate_ids"].tolist())) == 12
    np.testing.assert_array_equal(obs["per_arm"][:, :8], factorization.item_factors[candidate_rows].astype(np.float32))
    genre_flags = obs["per_arm"][:, 8:]
    assert set(np.unique(genre_flags)) <= {0.0, 1.0} and genre_flags.sum(axis=1).min() >= 1
    _, reward, _, _, step_info = env.step(5)
    user_row = np.searchsorted(factorization.user_ids, step_info["user_id"])
    np.testing.assert_array_equal(obs["global"][:8], factorization.user_factors[user_row].astype(np.float32))
    expected = factorization.user_factors[user_row] @ factorization.item_factors[candidate_rows].T
    assert reward == pytest.approx(expected[5], abs=1e-12)
    assert step_info["optimal_action"] == np.argmax(expected)
    assert step_info["movie_id"] == info["candidate_ids"][5]


def test_candidate_sampling_covers_the_catalogue_uniformly():
    population, size, rows = 50, 5, 20000
    keys = np.full(rows, 123, dtype=np.uint64)
    counters = np.arange(rows)
    sparse = _random.sample_without_replacement(keys, counters, 2, population, size)
    dense = _random.sample_without_replacement(keys, counters, 2, 12, 6)
    for draws, n in ((sparse, population), (dense, 12)):
        assert all(len(set(row)) == draws.shape[1] for row in draws[:500])
        counts = np.bincount(draws.ravel(), minlength=n)
        expected = draws.size / n
        # Chi-square with n-1 dof: far below the 0.999 quantile (about 86 for 49 dof, 32 for 11 dof).
        assert ((counts - expected) ** 2 / expected).sum() < (86 if n == population else 32)


@pytest.mark.parametrize("choice_model", ["cascade", "position_based"])
def test_ranking_oracle_is_the_best_slate_over_all_permutations(choice_model):
    env = MovieLensRankingEnv(rank=8, num_candidates=6, slate_size=3, choice_model=choice_model, eta=0.7)
    simulator = env.unwrapped.simulator
    env.reset(seed=8)
    for _ in range(20):
        attraction = np.clip(simulator.candidate_ratings()[0] / 5.0, 0, 1)
        values = []
        for slate in itertools.permutations(range(6), 3):
            a = attraction[list(slate)]
            if choice_model == "cascade":
                values.append(1 - np.prod(1 - a))
            else:
                values.append(np.sum(a / np.arange(1, 4) ** 0.7))
        _, _, _, _, info = env.step(np.array([0, 1, 2]))
        assert info["optimal_reward"] == pytest.approx(max(values), abs=1e-12)
        assert info["expected_reward"] == pytest.approx(values[0], abs=1e-12)  # (0, 1, 2) is the first permutation


@pytest.mark.parametrize("choice_model, feedback", [("cascade", "cascading"), ("position_based", "score_vector")])
def test_ranking_clicks_follow_the_choice_model(choice_model, feedback):
    env = MovieLensRankingEnv(rank=8, num_candidates=10, slate_size=4, choice_model=choice_model, feedback=feedback)
    env.reset(seed=9)
    rewards, expected = [], []
    for _ in range(4000):
        _, reward, _, _, info = env.step(env.unwrapped.oracle_action())
        rewards.append(reward)
        expected.append(info["expected_reward"])
        if feedback == "cascading":
            assert reward == (info["clicked_position"] >= 0)
            assert (info["clicked_value"] > 0) == (info["clicked_position"] >= 0)
        else:
            assert reward == info["slot_clicks"].sum()
    standard_error = np.std(rewards) / np.sqrt(len(rewards))
    assert abs(np.mean(rewards) - np.mean(expected)) < 4 * standard_error


def _slot_outcomes(choice_model, eta=1.0, steps=40, num_envs=500, slate_size=4):
    """(attraction of the movie in each slot [N, S], the step's info) over many users and candidate sets."""
    env = MovieLensRankingVectorEnv(num_envs=num_envs, rank=8, num_candidates=10, slate_size=slate_size,
                                    choice_model=choice_model, eta=eta)
    env.reset(seed=21)
    slate = np.tile(np.arange(slate_size), (num_envs, 1))
    attractions, infos = [], []
    for _ in range(steps):
        attraction = env.unwrapped.simulator._attraction()[1]
        _, reward, _, _, info = env.step(slate)
        attractions.append(np.take_along_axis(attraction, slate, axis=1))
        infos.append({**info, "reward": reward})
    return np.concatenate(attractions), {key: np.concatenate([info[key] for info in infos]) for key in infos[0]}


def _assert_rate(observed: np.ndarray, probability: np.ndarray, what: str) -> None:
    """Bernoulli outcomes against their per-row probabilities: within 4 standard errors."""
    expected, spread = probability.sum(), np.sqrt((probability * (1 - probability)).sum())
    assert abs(observed.sum() - expected) < 4 * spread, f"{what}: {observed.sum()} vs {expected:.1f} +- {spread:.1f}"


def test_the_cascade_first_click_is_in_slot_k_with_probability_a_k_times_the_skips_above():
    attraction, info = _slot_outcomes("cascade")
    skipped_above = np.cumprod(np.hstack([np.ones((len(attraction), 1)), 1 - attraction[:, :-1]]), axis=1)
    for slot in range(attraction.shape[1]):
        _assert_rate(info["clicked_position"] == slot, attraction[:, slot] * skipped_above[:, slot], f"slot {slot}")
    _assert_rate(info["clicked_position"] == -1, np.prod(1 - attraction, axis=1), "no click")
    np.testing.assert_array_equal(info["reward"], info["clicked_position"] >= 0)  # at most one click


@pytest.mark.parametrize("eta", [0.0, 1.0, 2.0])
def test_position_based_clicks_slot_k_with_its_attraction_times_k_to_the_minus_eta(eta):
    attraction, info = _slot_outcomes("position_based", eta=eta)
    assert info["slot_clicks"].shape == attraction.shape  # score-vector feedback, its default
    for slot in range(attraction.shape[1]):
        _assert_rate(info["slot_clicks"][:, slot], attraction[:, slot] / (slot + 1) ** eta, f"eta {eta}, slot {slot}")
    np.testing.assert_array_equal(info["reward"], info["slot_clicks"].sum(axis=1))
    # Independent slots: two clicks on one slate happen, as often as the product says.
    _assert_rate(info["slot_clicks"][:, 0] & info["slot_clicks"][:, 1],
                 attraction[:, 0] * attraction[:, 1] / 2**eta, f"eta {eta}, slots 0 and 1")


def test_position_based_clicks_refuse_cascading_feedback():
    with pytest.raises(ValueError, match=r"feedback='cascading' \(the first click only\) is the cascade model's "
                                         r"observation: under choice_model='position_based'"):
        MovieLensRankingEnv(rank=8, num_candidates=10, slate_size=4, choice_model="position_based",
                            feedback="cascading")


def test_click_reward_is_bernoulli_with_the_scaled_rating():
    env = MovieLensEnv(rank=8, reward_type="click")
    env.reset(seed=10)
    rewards, expected = [], []
    for _ in range(5000):
        _, reward, _, _, info = env.step(3)
        rewards.append(reward)
        expected.append(info["expected_reward"])
    assert set(rewards) == {0.0, 1.0}
    assert 0.0 <= min(expected) and max(expected) <= 1.0
    assert abs(np.mean(rewards) - np.mean(expected)) < 4 * np.std(rewards) / np.sqrt(len(rewards))


def test_drift_turns_preferences_and_the_oracle_follows():
    env = MovieLensEnv(rank=8, num_movies=20, drift_rate=0.05, episode_length=None)
    simulator = env.unwrapped.simulator
    env.reset(seed=12)
    user = simulator.users[0]
    start = simulator.expected_rewards()[0].copy()
    for _ in range(300):
        _, _, _, _, info = env.step(env.unwrapped.oracle_action())
        assert info["regret"] == 0.0
    simulator.users[0] = user
    later = simulator.expected_rewards()[0]
    rotation = simulator.drift.rotations[0]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(8), atol=1e-9)
    # The taste vector keeps its length while the ratings of the same user change.
    taste = simulator.user_vectors[user]
    assert np.linalg.norm(rotation @ taste) == pytest.approx(np.linalg.norm(taste), rel=1e-9)
    assert np.max(np.abs(later - start)) > 0.1
    # Turning about 0.05 rad a step as a random walk: after 300 steps about 0.05 * sqrt(300) = 0.87 rad.
    angle = np.arccos(np.clip((rotation @ taste) @ taste / (taste @ taste), -1, 1))
    assert 0.3 < angle < 1.6

    stationary = MovieLensEnv(rank=8, num_movies=20)
    stationary.reset(seed=12)
    assert stationary.unwrapped.simulator.drift is None


def test_invalid_parameters_name_the_parameter():
    with pytest.raises(ValueError, match=r"rank=25 exceeds the rank of the .*x20 .*\(20\)"):
        MovieLensEnv(rank=25, num_movies=20)
    with pytest.raises(ValueError, match=r"slate_size=6 must be between 1 and num_candidates=5"):
        MovieLensRankingEnv(rank=4, num_candidates=5, slate_size=6)
    with pytest.raises(ValueError, match=r"num_candidates=0"):
        MovieLensPerArmEnv(rank=4, num_actions=0)
    with pytest.raises(ValueError, match=r"num_movies=5000 must be between 1 and 1682"):
        MovieLensEnv(rank=4, num_movies=5000)
    with pytest.raises(ValueError, match=r"movie_selection='popular'"):
        MovieLensEnv(rank=4, movie_selection="popular")
    with pytest.raises(ValueError, match=r"reward_type='stars'"):
        MovieLensEnv(rank=4, reward_type="stars")
    with pytest.raises(ValueError, match=r"drift_rate=-1"):
        MovieLensEnv(rank=4, drift_rate=-1)
    with pytest.raises(ValueError, match=r"choice_model='dbn'"):
        MovieLensRankingEnv(rank=4, choice_model="dbn")
    with pytest.raises(ValueError, match=r"episode_length=0"):
        MovieLensEnv(rank=4, episode_length=0)


def test_empty_ratings_are_rejected(tmp_path):
    from recbandits.data import write_synthetic_movielens

    directory = write_synthetic_movielens(tmp_path / "data", num_users=30, num_items=40, num_ratings=900, seed=1)
    (directory / "u.data").write_text("")
    with pytest.raises(ValueError, match="u.data"):
        MovieLensEnv(data_dir=directory, rank=2, num_movies=5)


def test_invalid_actions_are_rejected_with_a_clear_message():
    env = MovieLensEnv(rank=4, num_movies=10)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 10 is out of range: choose a movie index in \[0, 10\)"):
        env.step(10)
    with pytest.raises(ValueError, match=r"action -1 is out of range"):
        env.step(-1)
    with pytest.raises(ValueError, match=r"must be integers"):
        env.step(1.5)
    with pytest.raises(ValueError, match=r"shape"):
        env.step([1, 2])
    ranking = MovieLensRankingEnv(rank=4, num_candidates=6, slate_size=3)
    ranking.reset(seed=0)
    with pytest.raises(ValueError, match=r"slate \[1, 4, 1\] places candidate 1 twice"):
        ranking.step(np.array([1, 4, 1]))
    vector_env = MovieLensVectorEnv(num_envs=3, rank=4, num_movies=10)
    vector_env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 12 \(sub-env 2\) is out of range"):
        vector_env.step(np.array([0, 1, 12]))
    with pytest.raises(gym.error.ResetNeeded):
        MovieLensEnv(rank=4).step(0)


def test_factorization_of_the_default_data_is_deterministic_and_low_rank():
    first = factorize_movielens(None, 8, movie_selection="most_rated", num_movies=50)
    assert first.user_factors.shape[1] == first.item_factors.shape[1] == 8
    assert first.num_items == 50
    assert np.all(np.diff(first.singular_values) <= 0)
    assert first is factorize_movielens(None, 8, movie_selection="most_rated", num_movies=50)  # cached per process
