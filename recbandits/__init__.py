"""recbandits: contextual-bandit recommendation on Ray.

Subpackages, in the direction data flows (docs/ARCHITECTURE.md): ``data`` (MovieLens files), ``envs``
(Gymnasium simulators), ``algos`` (policies, RLlib algorithms, the TF-Agents bridge), ``jobs`` (simulate,
compare, tune), ``serve`` (Ray Serve online learning) and ``loadgen`` (load tests); ``cluster`` connects to Ray.

``recbandits.load_policy(RUN_DIR).recommend(user_id=42, k=5)``: a trained policy's recommendations by
MovieLens ids and titles (``recbandits.jobs.recommend``).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_policy":  # imports RLlib: only when used
        from recbandits.jobs.recommend import load_policy

        return load_policy
    raise AttributeError(f"module 'recbandits' has no attribute {name!r}")
