"""Shared-model LinUCB on the per-arm env (simulate's settings, ml-100k), one in-process env runner, one thread:
the dense UCB widths against the structured ones (``kernel.Posterior.candidate_variance``), alternated in one run
(issue #23). ``python benchmarks/shared_widths.py [DATA_DIR]``."""

import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from recbandits.algos import LinUCBConfig, kernel  # noqa: E402
from recbandits.algos.env_runner import BanditEnvRunner  # noqa: E402


def dense_variance(posterior, features):
    return ((features @ posterior.covariance[0]) * features).sum(-1)


def main() -> None:
    data_dir = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/ml-100k"
    structured = kernel.Posterior.candidate_variance
    for name, width in [("dense", dense_variance), ("structured", structured)] * 2:
        kernel.Posterior.candidate_variance = width
        config = (LinUCBConfig()
                  .environment("recbandits/MovieLensPerArm-v0", env_config={
                      "data_dir": data_dir, "rank": 20, "user_demographics": False, "movie_genres": False})
                  .env_runners(num_env_runners=0, num_envs_per_env_runner=1024, rollout_fragment_length=16)
                  .debugging(seed=0, log_level="ERROR"))
        runner = BanditEnvRunner(config=config)
        runner.sample_statistics()
        started = time.perf_counter()
        for _ in range(3):
            runner.sample_statistics()
        print(f"{name:10s} {3 * 1024 * 16 / (time.perf_counter() - started):10,.0f} env steps/s", flush=True)


if __name__ == "__main__":
    main()
