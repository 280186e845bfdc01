"""Relative error of every off-policy estimator at 1k / 10k / 100k logged rows, for three target policies, against
the true value the simulator knows (Open Bandit Pipeline's estimator evaluation, on MovieLens).

    .venv/bin/python benchmarks/ope_estimators.py [--data-dir PATH] [--seeds 5] [--sizes 1000,10000,100000]

The world is the MovieLens per-arm simulator (rank 10, 10 candidates per decision, rating rewards with noise
std 1). Logging policy: softmax on the expected rewards at temperature 1 (``logs collect``). Targets: a LinUCB
model trained offline on 5,000 uniform-logged decisions, served greedy ("greedy", far from the logging policy),
eps-greedy with epsilon 0.3 ("eps-greedy 0.3"), and uniformly random ("uniform"). Each size and seed is a fresh
collect (seed 1000 * size + seed); the error is |estimate - true| / true, the true value being the target's
exact expected reward on the logged contexts. Prints mean relative error (and its standard deviation over seeds)
per estimator, target and size, and the DR and SNIPS interval coverage.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmark_data import ml100k_or_none

SETTINGS = {"rank": 10, "num_actions": 10, "reward_noise_std": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ml100k_or_none())
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()
    from recbandits.algos.candidates import LinearCandidatePolicy, module_policy_fields
    from recbandits.algos.checkpoints import load_module
    from recbandits.jobs.collect import collect
    from recbandits.jobs.train import train
    from recbandits.logs import read_dataset
    from recbandits.ope.estimators import ESTIMATORS
    from recbandits.ope.evaluation import evaluate

    sizes = [int(size) for size in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="ope-bench-"))
    print(f"off-policy estimators, {time.strftime('%Y-%m-%d %H:%M')}, data {args.data_dir or 'embedded default'}")
    collect("movielens-per-arm", "uniform", 5_000, work / "train", data_dir=args.data_dir, env_config=SETTINGS,
            seed=99)
    train(work / "train", "linucb", work / "model", use_ray=False)
    module = load_module(work / "model")
    targets = {}
    for name, config in (("greedy", {"exploration": "greedy"}),
                         ("eps-greedy 0.3", {"exploration": "eps_greedy", "epsilon": 0.3}),
                         ("uniform", {"exploration": "random"})):
        fields = module_policy_fields(module)
        fields["model_config"] = {**fields["model_config"], **config}
        targets[name] = LinearCandidatePolicy(fields, module.get_state())
    errors = {(target, size, estimator): [] for target in targets for size in sizes for estimator in ESTIMATORS}
    covered = {(target, size, estimator): 0 for target in targets for size in sizes for estimator in ("dr", "snips")}
    intervals = dict.fromkeys(covered, 0)
    for size in sizes:
        for seed in range(args.seeds):
            started = time.perf_counter()
            collect("movielens-per-arm", "softmax", size, work / "log", data_dir=args.data_dir, env_config=SETTINGS,
                    seed=1000 * size + seed, temperature=1.0)
            dataset = read_dataset(work / "log")
            for target, policy in targets.items():
                result = evaluate(dataset, policy, ESTIMATORS, bootstrap=100 if size <= 10_000 else 0, seed=seed)
                truth = result["true_value"]
                for estimator, value in result["estimates"].items():
                    errors[target, size, estimator].append(abs(value.value - truth) / abs(truth))
                for estimator in ("dr", "snips"):
                    interval = (result["estimates"][estimator].normal_interval
                                or result["estimates"][estimator].bootstrap_interval)
                    if interval is not None:  # SNIPS has only a bootstrap interval, off above 10k rows
                        intervals[target, size, estimator] += 1
                        covered[target, size, estimator] += interval[0] <= truth <= interval[1]
            print(f"  size {size:,} seed {seed}: {time.perf_counter() - started:.1f} s", flush=True)
    print("\n| target | rows | " + " | ".join(ESTIMATORS) + " |")
    print("|---|---|" + "---|" * len(ESTIMATORS))
    for target in targets:
        for size in sizes:
            cells = [f"{np.mean(errors[target, size, name]):.4f} ± {np.std(errors[target, size, name]):.4f}"
                     for name in ESTIMATORS]
            print(f"| {target} | {size:,} | " + " | ".join(cells) + " |")
    print("\ncoverage of the 95% intervals (seeds covered / seeds with an interval): " + ", ".join(
        f"{target} {size:,} {name} {count}/{intervals[target, size, name]}"
        for (target, size, name), count in covered.items()))


if __name__ == "__main__":
    main()
