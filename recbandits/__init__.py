"""recbandits: contextual-bandit recommendation on Ray.

Subpackages: ``data`` (MovieLens files), ``envs`` (Gymnasium simulators), ``algos`` (RLlib algorithms),
``serve`` (Ray Serve online learning) and ``cluster`` (running on a Ray cluster).

``recbandits.load_policy(RUN_DIR).recommend(user_id=42, k=5)``: a trained policy's recommendations by
MovieLens ids and titles (``recbandits.algos.recommend``).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_policy":  # imports RLlib: only when used
        from recbandits.algos.recommend import load_policy

        return load_policy
    raise AttributeError(f"module 'recbandits' has no attribute {name!r}")
