"""recbandits against the TF-Agents baselines on ml-100k, with the project's acceptance targets stated.

    .venv/bin/python benchmarks/compare_targets.py [--data-dir PATH] [--steps 20000] [--seeds 5]
                                                   [--algos linucb,lints,tfa-linucb,tfa-lints,random]
                                                   [--out runs/compare-targets]

Runs ``recbandits compare`` (same contenders, seeds and budgets; output files in ``--out``) and prints its
table followed by each target of docs/BENCHMARKS.md as met or missed (``compare.target_checks``): LinUCB
not worse than TF-Agents LinUCB at any budget, LinTS at 20k against TF-Agents LinTS, recbandits LinUCB's
samples/s against TF-Agents LinUCB's. ``recbandits compare`` itself prints measurements only.
Default data: $RECBANDITS_ML100K, else ../shared/data/ml-100k.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark_data import ml100k_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ml100k_dir())
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--algos", default="linucb,lints,tfa-linucb,tfa-lints,random")
    parser.add_argument("--out", type=Path, default=Path("runs/compare-targets"))
    options = parser.parse_args()

    from recbandits.jobs.compare import ComparisonSpec, compare, target_checks

    spec = ComparisonSpec(algos=options.algos.split(","), steps=options.steps, seeds=options.seeds,
                          data_dir=str(options.data_dir))
    table, runs = compare(spec, options.out)
    print(table.to_markdown(index=False))
    for line in target_checks(runs):
        print(f"- {line}")


if __name__ == "__main__":
    main()
