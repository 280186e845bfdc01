"""recbandits.serve: online contextual-bandit recommendation with Ray Serve (docs/serve.md).

| module | what |
|---|---|
| ``app`` | the Serve application (``build_app``): the FastAPI ingress ``Recommender`` |
| ``learner`` | the ``Learner`` deployment (``learning=learner``): one BanditCore for every replica |
| ``core`` | ``BanditCore``: event log, reward joins, online learning, restart replay |
| ``versions`` | the policy versions of a ``BanditCore``: rollback, promotion installs, snapshots, lineage |
| ``policy`` | the starting policy: a checkpoint's or a cold start's fields and statistics |
| ``eventlog`` / ``store`` | the durable JSONL event log, policy snapshots on disk |
| ``schemas`` | request/response models, validation against the feature spec, ``Rejection`` |
| ``runner`` / ``cli`` | ``recbandits serve`` / ``python -m recbandits.serve`` |
| ``limits`` | admission in front of Ray Serve: in-flight and connection limits, body size, header timeout |
| ``state`` / ``config`` | the state dir's checks and preparation; the settings (``ServeConfig``, ``ServeArgs``) |

The load generator (``recbandits loadtest``) and the service-subprocess helpers are ``recbandits.loadgen``.
"""

from recbandits.worker_env import set_worker_env

set_worker_env()  # serving is torch-only: RLlib must not import TensorFlow wherever a policy is loaded
