"""A trained policy with the MovieLens catalogue it learned on: recommendations by MovieLens ids and titles.

    import recbandits

    policy = recbandits.load_policy("runs/simulate")     # a `recbandits simulate --out` directory
    policy.recommend(user_id=42, k=5)                     # DataFrame: movie_id, title, score (best first)

The run's ``config.json`` names the env and data; the env is rebuilt from them (a cached load), so the policy
scores the same features it was trained on: the user's factor vector as the context of the MF env (arms are
the env's movies), and, for the per-arm and ranking envs, the user's global features against every movie of
the catalogue. Scores are the greedy policy's predicted mean reward (rating, or click probability).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recbandits.algos.checkpoints import load_module


@dataclass
class Catalogue:
    """What a simulate run learned on: its env's users (ids, the context each is shown as) and movies."""

    env: str
    user_ids: np.ndarray
    contexts: np.ndarray  # [users, context dim]: the MF env's user factors, the per-arm envs' global features
    movie_ids: np.ndarray
    titles: np.ndarray
    arm_features: np.ndarray | None  # [movies, arm dim] of the per-arm envs; None for the MF env


def run_directory(path: str | Path) -> Path | None:
    """The ``simulate --out`` directory a path is (or is inside: its checkpoint, the module in it), or None."""
    path = Path(path).expanduser().resolve()
    for candidate in (path, *path.parents[:6]):
        if (candidate / "config.json").is_file() and (candidate / "metrics.csv").is_file():
            return candidate
    return None


def run_catalogue(run_dir: str | Path) -> Catalogue:
    """The users and movies of a simulate run's env, rebuilt from its ``config.json`` (a cached load)."""
    import gymnasium as gym

    from recbandits.envs import ENV_IDS
    from recbandits.envs.factorization import load_cached
    from recbandits.jobs.simulate import env_settings, recorded_spec

    spec = recorded_spec(run_dir)
    env = gym.make(ENV_IDS[spec.env], **env_settings(spec), episode_length=None)
    try:
        simulator = env.unwrapped.simulator
        factorization = simulator.factorization
        movie_ids = np.asarray(factorization.item_ids)
        if spec.env == "movielens":
            contexts, arm_features = np.asarray(factorization.user_factors, dtype=np.float32), None
        else:
            contexts = np.asarray(simulator.features.global_features, dtype=np.float32)
            arm_features = np.asarray(simulator.features.arm_features, dtype=np.float32)
    finally:
        env.close()
    titles = load_cached(spec.data_dir).items.set_index("item_id")["title"].reindex(movie_ids).fillna("")
    return Catalogue(spec.env, np.asarray(factorization.user_ids), contexts, movie_ids, titles.to_numpy(),
                     arm_features)


class MovieLensPolicy:
    """The greedy policy of a ``simulate`` run on a MovieLens env, addressed by MovieLens user and movie ids."""

    def __init__(self, run_dir: str | Path):
        catalogue = run_catalogue(run_dir)
        self.env = catalogue.env
        self.module = load_module(run_dir)
        self.user_ids, self.movie_ids, self.titles = catalogue.user_ids, catalogue.movie_ids, catalogue.titles
        self._contexts, self._arm_features = catalogue.contexts, catalogue.arm_features
        self._user_rows = pd.Index(self.user_ids)

    def _row(self, user_id: int) -> int:
        row = self._user_rows.get_indexer([user_id])[0]
        if row < 0:
            raise ValueError(f"user_id {user_id} is not a user of this run's data ({len(self.user_ids)} users, "
                             f"ids {self.user_ids.min()}..{self.user_ids.max()})")
        return int(row)

    def scores(self, user_id: int) -> np.ndarray:
        """The predicted mean reward of every movie (in ``movie_ids`` order) for the user."""
        context = self._contexts[self._row(user_id)][None, :]
        if self._arm_features is None:
            return self._score({"obs": torch.from_numpy(context)})[0]
        # Shared models score each candidate on its own: the catalogue in chunks of the module's candidates.
        width, movies = int(self.module.observation_space["per_arm"].shape[0]), len(self._arm_features)
        padded = np.concatenate([self._arm_features, np.repeat(self._arm_features[:1], -movies % width, axis=0)])
        chunks = padded.reshape(-1, width, padded.shape[1])
        observation = {"global": torch.from_numpy(np.repeat(context, len(chunks), axis=0)),
                       "per_arm": torch.from_numpy(chunks)}
        return self._score({"obs": observation}).reshape(-1)[:movies]

    def _score(self, batch) -> np.ndarray:
        with torch.no_grad():
            scores = self.module.forward_inference(batch)["scores"]
        return np.asarray(scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else scores,
                          dtype=np.float64)

    def recommend(self, user_id: int, k: int = 5) -> pd.DataFrame:
        """The ``k`` movies of highest predicted reward for ``user_id``: movie_id, title, score (best first)."""
        if int(k) < 1:
            raise ValueError(f"k={k} must be at least 1")
        scores = self.scores(int(user_id))
        best = np.argsort(-scores, kind="stable")[: int(k)]
        return pd.DataFrame({"movie_id": self.movie_ids[best], "title": self.titles[best], "score": scores[best]})


def load_policy(run_dir: str | Path) -> MovieLensPolicy:
    """The trained policy of a ``recbandits simulate --out`` directory (see ``MovieLensPolicy``)."""
    return MovieLensPolicy(run_dir)
