"""Gymnasium simulators of recommendation on MovieLens.

Ids (id: class, what it simulates; vectorized class):

- ``recbandits/MovieLens-v0``: ``MovieLensEnv``, matrix factorization, arm-index actions (TF-Agents parity);
  ``MovieLensVectorEnv``
- ``recbandits/MovieLensPerArm-v0``: ``MovieLensPerArmEnv``, candidates with per-arm features;
  ``MovieLensPerArmVectorEnv``
- ``recbandits/MovieLensRanking-v0``: ``MovieLensRankingEnv``, slates under a cascade or position-based click model;
  ``MovieLensRankingVectorEnv``

Importing this package registers the ids: ``gym.make("recbandits/MovieLens-v0", data_dir=...)`` and
``gym.make_vec("recbandits/MovieLens-v0", num_envs=1024, vectorization_mode="vector_entry_point")``.
"""

import gymnasium as gym

from recbandits.envs.core import BanditEnv, BanditVectorEnv, PreferenceDrift, RewardModel
from recbandits.envs.factorization import RatingFactorization, factorize_movielens
from recbandits.envs.movielens import MovieLensEnv, MovieLensVectorEnv
from recbandits.envs.per_arm import MovieLensPerArmEnv, MovieLensPerArmVectorEnv
from recbandits.envs.ranking import MovieLensRankingEnv, MovieLensRankingVectorEnv

ENV_IDS = {
    "movielens": "recbandits/MovieLens-v0",
    "movielens-per-arm": "recbandits/MovieLensPerArm-v0",
    "movielens-ranking": "recbandits/MovieLensRanking-v0",
}


def register_envs() -> None:
    """Register the recbandits env ids with Gymnasium (idempotent)."""
    for env_id, name in (
        (ENV_IDS["movielens"], "MovieLens"),
        (ENV_IDS["movielens-per-arm"], "MovieLensPerArm"),
        (ENV_IDS["movielens-ranking"], "MovieLensRanking"),
    ):
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point=f"recbandits.envs:{name}Env",
                vector_entry_point=f"recbandits.envs:{name}VectorEnv",
            )


register_envs()

__all__ = [
    "ENV_IDS",
    "BanditEnv",
    "BanditVectorEnv",
    "MovieLensEnv",
    "MovieLensPerArmEnv",
    "MovieLensPerArmVectorEnv",
    "MovieLensRankingEnv",
    "MovieLensRankingVectorEnv",
    "MovieLensVectorEnv",
    "PreferenceDrift",
    "RatingFactorization",
    "RewardModel",
    "factorize_movielens",
    "register_envs",
]
