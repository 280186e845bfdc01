"""recbandits.serve: online contextual-bandit recommendation with Ray Serve (docs/serve.md).

| module | what |
|---|---|
| ``app`` | the Serve application (``build_app``): FastAPI ingress ``Recommender``, ``Learner`` deployment |
| ``core`` | ``BanditCore``: event log, reward joins, online learning, policy versions, restart replay |
| ``policy`` | ``ServingPolicy``: a ``LinearBanditModule`` scored over any candidate set |
| ``eventlog`` / ``store`` | the durable JSONL event log, policy snapshots on disk |
| ``schemas`` | request/response models and validation against the feature spec |
| ``runner`` / ``cli`` | ``recbandits serve`` / ``python -m recbandits.serve`` |
| ``limits`` | admission in front of Ray Serve: in-flight and connection limits, body size, header timeout |
| ``state`` / ``config`` | the state dir's checks and preparation, the service's settings |

The load generator (``recbandits loadtest``) and the service-subprocess helpers are ``recbandits.loadgen``.
"""

import os

# Serving is torch-only: keep RLlib from importing TensorFlow (seconds) wherever a policy is loaded. The same
# variables as recbandits.cluster.WORKER_ENV_VARS (not imported: that imports ray, and `recbandits --help` would
# pay for it).
for _name, _value in {"RLLIB_TEST_NO_TF_IMPORT": "1", "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}.items():
    os.environ.setdefault(_name, _value)
