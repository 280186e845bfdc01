"""LinUCB env steps/s through ``Algorithm.train()`` against TF-Agents LinUCB, side by side in one run.

    .venv/bin/python benchmarks/linucb_throughput.py [--data-dir PATH] [--runners 1,2] [--iterations 10]

Both learn on the MovieLens MF env in TF-Agents parity (rank 20, the first 20 movies) with TF-Agents'
example hyperparameters (alpha 10, tikhonov/lambda 0.001). TF-Agents runs the way its users run it (driver,
replay buffer, ``common.function``; batch 8, 2 steps per loop); recbandits runs ``train()`` with each number
of env runners: all algorithms are built first, then their ``train()`` calls alternate, so every runner
count sees the same machine load; the median over iterations is reported, and the runner-count speed-up is
the median of the ratios of adjacent iterations (this VM's CPU speed drifts by tens of percent within minutes,
so only rates measured moments apart compare). Wall time of ``train()`` only:
actor start-up is excluded, as TF-Agents' environment construction is. Default data: $RECBANDITS_ML100K, else ../shared/data/ml-100k.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _default_data() -> Path:
    return Path(os.environ.get("RECBANDITS_ML100K", REPO.parent / "shared" / "data" / "ml-100k"))


def tf_agents_samples_per_s(data_dir: Path, samples: int) -> float:
    from recbandits.algos.tf_agents_baseline import TFAgentsBaselineConfig, run_tf_agents_baseline

    config = TFAgentsBaselineConfig(algo="tfa-linucb", ratings_file=data_dir / "u.data", tikhonov_weight=0.001)
    return run_tf_agents_baseline(config, samples).samples_per_s


def build_linucb(data_dir: Path, runners: int, num_envs: int, fragment: int):
    from recbandits.algos import LinUCBConfig

    config = (
        LinUCBConfig()
        .environment("recbandits/MovieLens-v0", env_config={"data_dir": str(data_dir), "rank": 20, "num_movies": 20})
        .env_runners(num_env_runners=runners, num_envs_per_env_runner=num_envs, rollout_fragment_length=fragment)
        .training(alpha=10.0, lambda_=0.001)
        .debugging(seed=0, log_level="ERROR")
    )
    return config.build_algo()


def interleaved_steps_per_s(algos: dict, iterations: int) -> dict:
    """Median env steps/s of ``train()`` per algorithm, alternating them so all see the same machine load."""
    for algo in algos.values():
        for _ in range(2):  # warm-up
            algo.train()
    rates: dict = {count: [] for count in algos}
    regrets: dict = {}
    for _ in range(iterations):
        for count, algo in algos.items():
            before = algo.metrics.peek(("env_runners", "num_env_steps_sampled_lifetime"))
            started = time.perf_counter()
            result = algo.train()
            elapsed = time.perf_counter() - started
            rates[count].append((result["env_runners"]["num_env_steps_sampled_lifetime"] - before) / elapsed)
            regrets[count] = result["env_runners"]["per_step_regret"]
    return {count: {"steps_per_s": float(np.median(rates[count])), "per_step_regret": regrets[count],
                    "rates": np.asarray(rates[count])} for count in algos}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=_default_data())
    parser.add_argument("--runners", default="1,2", help="comma-separated numbers of env runners")
    parser.add_argument("--num-envs", type=int, default=1024, help="sub-envs per env runner")
    parser.add_argument("--fragment", type=int, default=256, help="vector steps per runner per iteration")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per runner count")
    parser.add_argument("--tf-agents-samples", type=int, default=3200)
    parser.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    args = parser.parse_args()
    if not (args.data_dir / "u.data").is_file():
        raise SystemExit(f"MovieLens 100K not found at {args.data_dir}; pass --data-dir")

    tf_agents = tf_agents_samples_per_s(args.data_dir, args.tf_agents_samples)

    from recbandits.cluster import connect

    counts = [int(value) for value in args.runners.split(",")]
    # All algorithms' runners exist at once (they take turns): enough logical CPUs to place them all.
    connect(args.address, num_cpus=None if args.address else max(os.cpu_count() or 1, sum(counts)))
    algos = {count: build_linucb(args.data_dir, count, args.num_envs, args.fragment) for count in counts}
    try:
        results = interleaved_steps_per_s(algos, args.iterations)
    finally:
        for algo in algos.values():
            algo.stop()
    print(f"data: {args.data_dir}; MF env rank 20, 20 movies; alpha 10, lambda 0.001; "
          f"{args.num_envs} sub-envs x {args.fragment} steps per runner per iteration")
    print("| policy | env runners | env steps/s | vs TF-Agents | per-step regret (last iteration) |")
    print("|---|---|---|---|---|")
    print(f"| TF-Agents LinUCB (batch 8, 2 steps/loop) | - | {tf_agents:,.0f} | 1x | - |")
    for count, result in results.items():
        print(f"| recbandits LinUCB, Algorithm.train() | {count} | {result['steps_per_s']:,.0f} | "
              f"{result['steps_per_s'] / tf_agents:,.0f}x | {result['per_step_regret']:.4f} |")
    best = max(result["steps_per_s"] for result in results.values())
    print(f"\nbest recbandits / TF-Agents: {best / tf_agents:,.0f}x (target >= 1000x); "
          f"target >= 200,000 env steps/s: {'met' if best >= 200_000 else 'MISSED'} ({best:,.0f})")
    if 1 in results and len(results) > 1:
        for count, result in results.items():
            if count > 1:
                speedup = float(np.median(result["rates"] / results[1]["rates"]))
                quartiles = np.percentile(result["rates"] / results[1]["rates"], [25, 75])
                print(f"{count} runners / 1 runner: {speedup:.2f}x, median of {len(result['rates'])} adjacent pairs "
                      f"(interquartile {quartiles[0]:.2f}-{quartiles[1]:.2f}x; parallel efficiency {speedup / count:.0%})"
                      f"; target >= 1.8x for 2: {'met' if count != 2 or speedup >= 1.8 else 'MISSED'}")


if __name__ == "__main__":
    main()
