"""Env steps/s of the simulators on one core, natively vectorized against Gymnasium's SyncVectorEnv.

    .venv/bin/python benchmarks/env_throughput.py [--data-dir PATH] [--batch 1024] [--seconds 5]

Random actions (sampled from the action space every step) at the given batch size; everything runs in one process
pinned to one core. The SyncVectorEnv row steps the same single env once per sub-env in a Python loop: the
side-by-side ratio is what native vectorization buys. Default data: $RECBANDITS_ML100K, else
../shared/data/ml-100k, else the embedded default.
"""

from __future__ import annotations

import os

# One core: pin before numpy starts any thread pool.
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

import argparse  # noqa: E402
import time  # noqa: E402

import gymnasium as gym  # noqa: E402
from benchmark_data import ml100k_or_none  # noqa: E402

from recbandits.envs import (  # noqa: E402
    MovieLensEnv,
    MovieLensPerArmVectorEnv,
    MovieLensRankingVectorEnv,
    MovieLensVectorEnv,
)


def default_data_dir() -> str | None:
    path = ml100k_or_none()
    return None if path is None else str(path)


def steps_per_second(env, seconds: float) -> float:
    """Env steps per second (sub-env steps) of random actions, sampled from the action space every step."""
    env.reset(seed=0)
    env.action_space.seed(0)
    num_envs = getattr(env, "num_envs", 1)
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(64):
            env.step(env.action_space.sample())
        steps += 64
    return steps * num_envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    data = args.data_dir
    print(f"data: {data or 'embedded default (synthetic)'}; batch {args.batch}; one core; random actions")
    mf = dict(data_dir=data, rank=20, num_movies=20)
    rows = [
        ("MovieLens MF, native vector", MovieLensVectorEnv(num_envs=args.batch, **mf)),
        ("MovieLens MF, Gymnasium SyncVectorEnv", gym.vector.SyncVectorEnv([lambda: MovieLensEnv(**mf)] * args.batch)),
        ("MovieLens MF, single env", MovieLensEnv(**mf)),
        ("Per-arm (20 of all movies), native vector",
         MovieLensPerArmVectorEnv(num_envs=args.batch, data_dir=data, rank=20)),
        ("Ranking (5 of 20, cascade), native vector",
         MovieLensRankingVectorEnv(num_envs=args.batch, data_dir=data, rank=20)),
    ]
    results = {}
    print(f"| {'env':45} | {'env steps/s':>14} |")
    print(f"|{'-' * 47}|{'-' * 16}|")
    for name, env in rows:
        results[name] = steps_per_second(env, args.seconds)
        print(f"| {name:45} | {results[name]:>14,.0f} |")
    native, sync = results["MovieLens MF, native vector"], results["MovieLens MF, Gymnasium SyncVectorEnv"]
    print(f"\nnative vector / SyncVectorEnv (MF, batch {args.batch}): {native / sync:.0f}x")
    print(f"MF target >= 1,000,000 env steps/s: {'met' if native >= 1_000_000 else 'MISSED'} ({native:,.0f})")


if __name__ == "__main__":
    main()
