"""Bandit algorithms on RLlib's new API stack.

| name | config / algorithm | what it does |
|---|---|---|
| ``linucb`` | ``LinUCBConfig`` / ``LinUCB`` | upper confidence bound on a ridge regression |
| ``lints`` | ``LinTSConfig`` / ``LinTS`` | Thompson sampling from the Bayesian linear regression posterior |
| ``eps-greedy`` | ``LinEpsGreedyConfig`` / ``LinEpsGreedy`` | greedy on the ridge estimate, random with prob. epsilon |
| ``random`` | ``RandomPolicyConfig`` / ``RandomPolicy`` | uniformly random arms (regret floor) |
| ``oracle`` | ``OraclePolicyConfig`` / ``OraclePolicy`` | the env's optimal action (zero regret) |
"""

import logging

from recbandits.verbosity import quiet_libraries
from recbandits.worker_env import set_worker_env

set_worker_env()  # before RLlib is imported
# RLlib warns at every import that it skips TensorFlow: intended here (recbandits.worker_env).
logging.getLogger("ray.rllib.utils.framework").setLevel(logging.ERROR)
quiet_libraries()

# The algorithms import RLlib (seconds): loaded on first use, so option and data checks fail fast.
_EXPORTS = {name: "recbandits.algos.linear" for name in (
    "ALGORITHM_CONFIGS", "LinEpsGreedy", "LinEpsGreedyConfig", "LinTS", "LinTSConfig", "LinUCB", "LinUCBConfig",
    "LinearBandit", "LinearBanditConfig", "OraclePolicy", "OraclePolicyConfig", "RandomPolicy", "RandomPolicyConfig",
)}
_EXPORTS["LinearBanditModule"] = "recbandits.algos.module"


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'recbandits.algos' has no attribute {name!r}")


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
