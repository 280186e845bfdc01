"""recbandits: contextual-bandit recommendation on Ray.

Subpackages: ``data`` (MovieLens files), ``envs`` (Gymnasium simulators), ``algos`` (RLlib algorithms),
``serve`` (Ray Serve online learning) and ``cluster`` (running on a Ray cluster).
"""

__version__ = "0.1.0"
