"""The load test's simulated users: who arrives when, how the service's arms map to movies, drifting tastes."""

from __future__ import annotations

import numpy as np
import pytest

from recbandits.envs import MovieLensEnv
from recbandits.envs._random import key_from_seed
from recbandits.envs.core import PreferenceDrift
from recbandits.loadgen.loadtest import LoadTestSpec
from recbandits.loadgen.users import movielens_users


def _factorization():
    return MovieLensEnv(rank=4, num_movies=6).unwrapped.simulator.factorization


def test_drifting_users_see_one_world_turning_a_step_per_arrival():
    factorization = _factorization()
    spec = LoadTestSpec(max_requests=50, rank=4, drift_rate=0.2, seed=3)
    users = movielens_users(spec, 4, [str(k) for k in range(6)])
    # The reference: one PreferenceDrift world stepped by the env's own `advance`, arrival by arrival.
    drift = PreferenceDrift(4, 0.2)
    drift.reset(1)
    key = np.array([key_from_seed(3)], dtype=np.uint64)
    for arrival in range(50):
        taste = drift.apply(factorization.user_factors[users.arrival_users[[arrival]]], slice(None))
        np.testing.assert_allclose(users.expected_at(np.array([arrival]))[0], (taste @ factorization.item_factors.T)[0],
                                   rtol=1e-12, atol=1e-12)
        drift.advance(key, np.array([arrival]), slice(None))
    # The first arrival sees the tastes the ratings were fitted to; the world then moves away from them.
    still = users.expected[users.arrival_users]
    np.testing.assert_allclose(users.expected_at(np.array([0])), still[:1], rtol=1e-12)
    assert np.abs(users.expected_at(np.arange(40, 50)) - still[40:]).max() > 0.1
    # Without drift every arrival sees the fitted ratings.
    stationary = movielens_users(LoadTestSpec(max_requests=50, rank=4, seed=3), 4, [str(k) for k in range(6)])
    np.testing.assert_array_equal(stationary.arrival_users, users.arrival_users)
    np.testing.assert_array_equal(stationary.expected_at(np.arange(50)), still)


def test_the_services_arms_map_to_the_envs_movies():
    factorization = _factorization()
    movie_ids = [str(movie) for movie in factorization.item_ids]
    spec = LoadTestSpec(max_requests=5, rank=4)
    # A simulate run's service names its arms by MovieLens id, in any order.
    assert movielens_users(spec, 4, movie_ids[::-1]).movie_of_arm == {movie: k for k, movie in enumerate(movie_ids)}
    assert movielens_users(spec, 4, [str(k) for k in range(6)]).movie_of_arm == {str(k): k for k in range(6)}
    with pytest.raises(ValueError, match="arm ids must be 0..K-1 or the env's MovieLens movie ids"):
        movielens_users(spec, 4, ["a", "b", "c", "d", "e", "f"])
    with pytest.raises(ValueError, match="the env's users have 4 features, the service expects 5"):
        movielens_users(spec, 5, movie_ids)
    with pytest.raises(ValueError, match="--drift-rate -1 must be a finite number >= 0"):
        LoadTestSpec(drift_rate=-1)


@pytest.mark.parametrize("choice_model", ["cascade", "position_based"])
def test_ranking_users_are_the_ranking_envs_arrivals_and_clicks(small_data_dir, choice_model):
    import orjson

    from recbandits.envs import MovieLensRankingVectorEnv
    from recbandits.loadgen.users import RankingUsers, simulated_users

    spec = LoadTestSpec(max_requests=40, rank=6, data_dir=str(small_data_dir), num_candidates=8, seed=4,
                        choice_model=choice_model)
    users = simulated_users(spec, {"shape": "shared", "context_dim": 6, "arm_dim": 6, "slate_size": 3})
    assert isinstance(users, RankingUsers)
    # The reference: the ranking env of `simulate --env movielens-ranking`, one sub-env per arrival.
    env = MovieLensRankingVectorEnv(num_envs=40, data_dir=small_data_dir, rank=6, num_candidates=8, slate_size=3,
                                    choice_model=choice_model, user_demographics=False, movie_genres=False)
    observations, info = env.reset(seed=4)
    for index in (0, 17, 39):
        body = orjson.loads(users.body(index))
        assert body["context"] == observations["global"][index].astype(np.float64).tolist()
        assert [item["id"] for item in body["candidates"]] == [str(movie) for movie in info["candidate_ids"][index]]
        assert [item["features"] for item in body["candidates"]] == observations["per_arm"][index].astype(
            np.float64).tolist()
    slates = np.argsort(np.random.default_rng(0).random((40, 8)), axis=1)[:, :3]
    # What the service answered (ids of the slate, top first) maps back to the candidates shown.
    shown = [users.shown(index, {"ranking": [{"id": body_id} for body_id in
                                             np.asarray(info["candidate_ids"][index])[slate].astype(str)]})
             for index, slate in enumerate(slates)]
    assert shown == [tuple(slate) for slate in slates.tolist()]
    _, clicks, _, _, infos = env.step(slates)
    feedback = [users.feedback(index, shown[index], np.random.default_rng()) for index in range(40)]
    if choice_model == "cascade":
        assert feedback == [{"clicks": [int(p)] if p >= 0 else []} for p in infos["clicked_position"]]
    else:
        assert feedback == [{"slot_rewards": row.astype(float).tolist()} for row in infos["slot_clicks"]]
    assert 0 < sum(len(item.get("clicks", [])) or sum(item.get("slot_rewards", [])) for item in feedback) < 40 * 3
    np.testing.assert_allclose(users.regret(np.arange(40), shown), infos["regret"], rtol=1e-12)


def test_the_ranking_users_refuse_what_they_do_not_simulate(small_data_dir):
    from recbandits.loadgen.users import simulated_users

    fields = {"shape": "shared", "context_dim": 6, "arm_dim": 6, "slate_size": 3}
    with pytest.raises(ValueError, match="have 5 and 5 features \\(rank 5\\), the service expects 6 and 6: pass "
                                         "--rank"):
        simulated_users(LoadTestSpec(max_requests=4, rank=5, data_dir=str(small_data_dir)), fields)
    with pytest.raises(ValueError, match="--drift-rate: the ranking users' tastes stand still"):
        simulated_users(LoadTestSpec(max_requests=4, drift_rate=0.1, data_dir=str(small_data_dir)), fields)
    with pytest.raises(ValueError, match="shared-shape without slates"):
        simulated_users(LoadTestSpec(max_requests=4), {**fields, "slate_size": 0})
