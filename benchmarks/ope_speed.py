"""Doubly robust evaluation with cross-fitting on a million logged rows: in memory against Ray Data, side by side.

    .venv/bin/python benchmarks/ope_speed.py [--rows 1000000] [--files 10] [--data-dir PATH]

The rows are ``logs collect`` on the MovieLens per-arm simulator (rank 10, 10 candidates, softmax logging; written
once into ``--out`` and reused), the target a LinUCB model trained offline on 5,000 uniform-logged decisions and
served greedy. Each run evaluates DR (5-fold cross-fitted ridge reward model, normal interval): ``evaluate`` on
the dataset read into memory (reading included), and ``evaluate_files`` over Ray Data with 1 and 2 workers.
Prints wall time, rows/s and the peak RSS of the process tree, and checks that the three estimates agree.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmark_data import ml100k_or_none
from logged_data import PeakMemory

SETTINGS = {"rank": 10, "num_actions": 10, "reward_noise_std": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--data-dir", type=Path, default=ml100k_or_none())
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ope-speed"))
    args = parser.parse_args()
    from recbandits.algos.candidates import LinearCandidatePolicy, module_policy_fields
    from recbandits.algos.checkpoints import load_module
    from recbandits.cluster import connect
    from recbandits.jobs.collect import collect
    from recbandits.jobs.train import train
    from recbandits.logs import read_dataset
    from recbandits.ope.evaluation import evaluate, evaluate_files

    print(f"DR on {args.rows:,} rows, {time.strftime('%Y-%m-%d %H:%M')}")
    connect(num_cpus=2)
    log = args.out / f"log-{args.rows}"
    if not (log / "dataset.json").is_file():
        started = time.perf_counter()
        collect("movielens-per-arm", "softmax", args.rows, log, data_dir=args.data_dir, env_config=SETTINGS,
                workers=2, seed=11, rows_per_file=args.rows // args.files)
        print(f"  collect: {time.perf_counter() - started:.1f} s")
    if not (args.out / "model").exists():
        collect("movielens-per-arm", "uniform", 5_000, args.out / "train", data_dir=args.data_dir,
                env_config=SETTINGS, seed=99)
        train(args.out / "train", "linucb", args.out / "model", use_ray=False)
    module = load_module(args.out / "model")
    fields = module_policy_fields(module)
    fields["model_config"] = {**fields["model_config"], "exploration": "greedy"}
    values = {}
    for name, run in (
            ("in memory (read + evaluate)", lambda: evaluate(read_dataset(log), LinearCandidatePolicy(
                fields, module.get_state()), ("dr",), bootstrap=0)),
            ("Ray Data, 1 worker", lambda: evaluate_files(log, fields, module.get_state(), ("dr",), workers=1)),
            ("Ray Data, 2 workers", lambda: evaluate_files(log, fields, module.get_state(), ("dr",), workers=2))):
        with PeakMemory() as memory:
            started = time.perf_counter()
            result = run()
            elapsed = time.perf_counter() - started
        estimate = result["estimates"]["dr"]
        values[name] = estimate.value
        print(f"  {name:28s} {elapsed:7.1f} s {result['rows'] / elapsed:10,.0f} rows/s  DR {estimate.value:.5f} "
              f"[{estimate.normal_interval[0]:.5f}, {estimate.normal_interval[1]:.5f}]  true "
              f"{result['true_value']:.5f}  peak RSS {memory.peak / 2**20:,.0f} MiB")
    spread = max(values.values()) - min(values.values())
    print(f"  the three DR values agree to {spread:.2e}")


if __name__ == "__main__":
    main()
