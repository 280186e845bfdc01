"""The load test's simulated users: who arrives when, how the service's arms map to movies, drifting tastes."""

from __future__ import annotations

import numpy as np
import pytest

from recbandits.envs import MovieLensEnv
from recbandits.envs._random import key_from_seed
from recbandits.envs.core import PreferenceDrift
from recbandits.loadgen.loadtest import LoadTestSpec, simulated_users


def _factorization():
    return MovieLensEnv(rank=4, num_movies=6).unwrapped.simulator.factorization


def test_drifting_users_see_one_world_turning_a_step_per_arrival():
    factorization = _factorization()
    spec = LoadTestSpec(max_requests=50, rank=4, drift_rate=0.2, seed=3)
    users = simulated_users(spec, 4, [str(k) for k in range(6)])
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
    stationary = simulated_users(LoadTestSpec(max_requests=50, rank=4, seed=3), 4, [str(k) for k in range(6)])
    np.testing.assert_array_equal(stationary.arrival_users, users.arrival_users)
    np.testing.assert_array_equal(stationary.expected_at(np.arange(50)), still)


def test_the_services_arms_map_to_the_envs_movies():
    factorization = _factorization()
    movie_ids = [str(movie) for movie in factorization.item_ids]
    spec = LoadTestSpec(max_requests=5, rank=4)
    # A simulate run's service names its arms by MovieLens id, in any order.
    assert simulated_users(spec, 4, movie_ids[::-1]).movie_of_arm == {movie: k for k, movie in enumerate(movie_ids)}
    assert simulated_users(spec, 4, [str(k) for k in range(6)]).movie_of_arm == {str(k): k for k in range(6)}
    with pytest.raises(ValueError, match="arm ids must be 0..K-1 or the env's MovieLens movie ids"):
        simulated_users(spec, 4, ["a", "b", "c", "d", "e", "f"])
    with pytest.raises(ValueError, match="the env's users have 4 features, the service expects 5"):
        simulated_users(spec, 5, movie_ids)
    with pytest.raises(ValueError, match="--drift-rate -1 must be a finite number >= 0"):
        LoadTestSpec(drift_rate=-1)
