"""recbandits and TF-Agents, each as shipped and each tuned with the same small sweep, on ml-100k.

    .venv/bin/python benchmarks/tuned_baselines.py [--data-dir PATH] [--steps 20000] [--seeds 5]
                                                   [--tune-steps 10000] [--tune-seeds 2] [--out runs/tuned]

For each of LinUCB and LinTS, both libraries get the same sweep: one exploration scale over the same five
values (``GRIDS``), every value run on ``--tune-seeds`` tuning seeds (100, 101, ...) for ``--tune-steps``
samples, the regularisation left as shipped. The value with the lowest mean regret at ``--tune-steps`` is the
"tuned" contender. Then every contender, as shipped and tuned, runs on the judging seeds 0..``--seeds``-1 for
``--steps`` samples in one ``recbandits compare`` run, whose table this prints (and writes to ``--out``).

The exploration scales: UCB's alpha on both sides; for Thompson sampling, TF-Agents LinTS' alpha (it samples
rewards from N(mean, alpha^2 x'A^-1 x)) and recbandits LinTS' fixed v (it samples theta from N(theta_hat,
v^2 A^-1)), the same quantity; as shipped, recbandits estimates v from the residuals instead.
Default data: $RECBANDITS_ML100K, else ../shared/data/ml-100k.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmark_data import ml100k_dir

TUNING_FIRST_SEED = 100  # tuning seeds are never judging seeds
# algo -> (contender option, values): the same values for both libraries' counterparts.
GRIDS = {
    "linucb": ("alpha", (0.1, 0.3, 1.0, 3.0, 10.0)),
    "tfa-linucb": ("alpha", (0.1, 0.3, 1.0, 3.0, 10.0)),
    "lints": ("posterior_scale", (0.03, 0.1, 0.3, 1.0, 3.0)),
    "tfa-lints": ("alpha", (0.03, 0.1, 0.3, 1.0, 3.0)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ml100k_dir())
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tune-steps", type=int, default=10_000)
    parser.add_argument("--tune-seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/tuned"))
    options = parser.parse_args()

    from recbandits.jobs.compare import ComparisonSpec, compare, confidence_interval

    sweep = [f"{algo}:{name}={value:g}" for algo, (name, values) in GRIDS.items() for value in values]
    spec = ComparisonSpec(algos=sweep, steps=options.tune_steps, seeds=options.tune_seeds,
                          first_seed=TUNING_FIRST_SEED, data_dir=str(options.data_dir))
    _, runs = compare(spec, options.out / "sweep")
    column = f"regret@{options.tune_steps}"
    tuned, lines = {}, []
    for algo in GRIDS:
        means = {name: confidence_interval(runs.loc[runs["contender"] == name, column].to_numpy())[0]
                 for name in sweep if name.split(":")[0] == algo}
        tuned[algo] = min(means, key=means.get)
        lines.append(f"{algo}: " + ", ".join(f"{name.split(':')[1]} {mean:,.1f}" for name, mean in means.items())
                     + f" -> {tuned[algo]}")
    print(f"sweep (mean regret@{options.tune_steps:,} over seeds {TUNING_FIRST_SEED}.."
          f"{TUNING_FIRST_SEED + options.tune_seeds - 1}):")
    print("\n".join(f"- {line}" for line in lines))

    judged = [name for algo in GRIDS for name in (algo, tuned[algo])]
    spec = ComparisonSpec(algos=judged, steps=options.steps, seeds=options.seeds, data_dir=str(options.data_dir))
    table, _ = compare(spec, options.out / "judged")
    table.insert(1, "variant", ["as shipped" if ":" not in name else "tuned" for name in table["contender"]])
    print(table.drop(columns=["seeds", "wall time (s)"]).to_markdown(index=False))
    (options.out / "tuned.json").write_text(json.dumps({"sweep": lines, "tuned": tuned}, indent=2))


if __name__ == "__main__":
    main()
