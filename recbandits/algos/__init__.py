"""Bandit algorithms on RLlib's new API stack.

| name | config / algorithm | what it does |
|---|---|---|
| ``linucb`` | ``LinUCBConfig`` / ``LinUCB`` | upper confidence bound on a ridge regression |
| ``lints`` | ``LinTSConfig`` / ``LinTS`` | Thompson sampling from the Bayesian linear regression posterior |
| ``eps-greedy`` | ``LinEpsGreedyConfig`` / ``LinEpsGreedy`` | greedy on the ridge estimate, random with probability epsilon |
| ``random`` | ``RandomPolicyConfig`` / ``RandomPolicy`` | uniformly random arms (regret floor) |
| ``oracle`` | ``OraclePolicyConfig`` / ``OraclePolicy`` | the env's optimal action (zero regret) |
"""

import logging
import os

from recbandits.cluster import WORKER_ENV_VARS

for _name, _value in WORKER_ENV_VARS.items():  # before RLlib is imported (see recbandits.cluster)
    os.environ.setdefault(_name, _value)
# RLlib warns at every import that it skips TensorFlow: intended here (see recbandits.cluster).
logging.getLogger("ray.rllib.utils.framework").setLevel(logging.ERROR)

from recbandits.algos.linear import (  # noqa: E402
    ALGORITHM_CONFIGS,
    LinearBandit,
    LinearBanditConfig,
    LinEpsGreedy,
    LinEpsGreedyConfig,
    LinTS,
    LinTSConfig,
    LinUCB,
    LinUCBConfig,
    OraclePolicy,
    OraclePolicyConfig,
    RandomPolicy,
    RandomPolicyConfig,
)
from recbandits.algos.module import LinearBanditModule  # noqa: E402

__all__ = [
    "ALGORITHM_CONFIGS",
    "LinEpsGreedy",
    "LinEpsGreedyConfig",
    "LinTS",
    "LinTSConfig",
    "LinUCB",
    "LinUCBConfig",
    "LinearBandit",
    "LinearBanditConfig",
    "LinearBanditModule",
    "OraclePolicy",
    "OraclePolicyConfig",
    "RandomPolicy",
    "RandomPolicyConfig",
]
