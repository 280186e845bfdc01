"""Env steps/s of a linear bandit against the number of env runners, its synchronization cost, a projection.

    .venv/bin/python benchmarks/scaling.py [--runners 1,2] [--iterations 20] [--address auto] [--data-dir DIR]

Weak scaling: every runner samples ``--num-envs`` sub-envs x ``--fragment`` vector steps per iteration, so an
iteration with n runners makes n times the env steps. All algorithms (one per runner count) are built first,
then their ``train()`` calls alternate, so every runner count sees the same machine load. Throughput is the
median over the timed iterations, the speed-up the median ratio of adjacent iterations; the time split is the
mean over the middle half of them by wall time (so its parts add up). Each iteration is split
(``benchmarks/scaling_model.py``'s ``TimedAlgorithm``) into the slowest runner's own sampling time and the
synchronization cost: gather (dispatch and results of the runners' calls beyond the slowest runner), the Learner
adding the deltas, ``sync_weights``, and the rest of ``train()``. The projection for ``--nodes`` (default 10 and
100 nodes of ``--runners-per-node`` runners) uses the model of ``scaling_model``:
T(n) = t_s + c0 + c1 n + (n B_delta + m B_state) / W, with t_s, c0 and c1 measured here and W = ``--bandwidth-gbit``.

On a laptop or a small machine every runner count shares the same cores: the measured efficiency there is a
floor. ``--address auto`` runs on a real cluster (pass ``--runners`` up to the cluster's CPUs). Default data:
$RECBANDITS_ML100K, else ../shared/data/ml-100k, else the embedded synthetic data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
from benchmark_data import ml100k_or_none


def _default_data() -> Path | None:
    return ml100k_or_none()


def build(args, runners: int, num_envs: int, fragment: int):
    from scaling_model import TimedAlgorithm

    from recbandits.jobs.simulate import SimulationSpec, build_config

    spec = SimulationSpec(
        env=args.env,
        algo=args.algo,
        num_env_runners=runners,
        num_envs_per_env_runner=num_envs,
        rollout_fragment_length=fragment,
        data_dir=str(args.data_dir) if args.data_dir else None,
        seed=0,
    )
    config = build_config(spec)
    if args.algo == "linucb":
        config.training(alpha=10.0, lambda_=0.001)
    return TimedAlgorithm(config.build_algo())


def measure(algos: dict, iterations: int, warmup: int) -> dict:
    """Per algorithm: the timings of every timed iteration, alternating the algorithms."""
    for algo in algos.values():
        for _ in range(warmup):
            algo.train()
    timings: dict = {key: [] for key in algos}
    for _ in range(iterations):
        for key, algo in algos.items():
            timings[key].append(algo.train()[1])
    return timings


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def _counts(text: str) -> list[int]:
    return [int(value) for value in text.split(",") if value.strip()]


def _timing_table(counts, typical, rates, speedups, nodes_used) -> None:
    print(
        "| env runners | nodes | env steps/s | speed-up | parallel efficiency | iteration ms | "
        "slowest runner sampling ms | runner sampling CPU ms | sync cost ms | gather ms | learner ms | "
        "sync_weights ms | other ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for count in counts:
        m = typical[count]
        print(
            f"| {count} | {nodes_used[count]} | {rates[count]:,.0f} | "
            f"{speedups[count]:.2f}x | "
            f"{speedups[count] * min(counts) / count:.0%} | {_ms(m.total_s)} | {_ms(m.sample_max_s)} | "
            f"{_ms(m.sample_cpu_mean_s)} | {_ms(m.sync_cost_s)} | {_ms(m.gather_s)} | {_ms(m.learn_s)} | "
            f"{_ms(m.sync_s)} | {_ms(m.other_s)} |"
        )


def _fits(parts: dict) -> str:
    return ", ".join(f"{name[:-2]} {_ms(c0)} + {_ms(c1)} n" for name, (c0, c1) in parts.items())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runners", default="1,2", help="comma-separated numbers of env runners")
    parser.add_argument(
        "--probe-runners", default="1,2,4", help="runner counts of the synchronization probe ('' to skip)"
    )
    parser.add_argument("--env", default="movielens")
    parser.add_argument("--algo", default="linucb")
    parser.add_argument("--data-dir", type=Path, default=_default_data())
    parser.add_argument("--num-envs", type=int, default=1024, help="sub-envs per env runner")
    parser.add_argument("--fragment", type=int, default=256, help="vector steps per runner per iteration")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per runner count")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per runner count first")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    parser.add_argument("--nodes", default="10,100", help="cluster sizes of the projection")
    parser.add_argument("--runners-per-node", type=int, default=16, help="runners per node in the projection")
    parser.add_argument("--bandwidth-gbit", type=float, default=10.0, help="network link in the projection")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    from scaling_model import ScalingModel, fit_model, statistics_bytes, typical_timing

    from recbandits.cluster import connect

    counts, probes = _counts(args.runners), _counts(args.probe_runners)
    # All algorithms' runners exist at once (they take turns): enough logical CPUs to place them all.
    connect(
        args.address, num_cpus=None if args.address else max(os.cpu_count() or 1, sum(counts) + sum(probes))
    )
    algos = {("run", n): build(args, n, args.num_envs, args.fragment) for n in counts}
    # The probe: 1 sub-env x 1 step per runner, so sampling is ~0 and the iteration is all synchronization,
    # and its runners hardly compete for cores: the per-runner cost a cluster (a core per runner) sees.
    algos.update({("probe", n): build(args, n, 1, 1) for n in probes})
    try:
        timings = measure(algos, args.iterations, args.warmup)
        delta_bytes = statistics_bytes(next(iter(algos.values())).algo.module)
        import ray

        nodes_used = {key: len(algo.algo.runner_node_ids) for key, algo in algos.items()}
        cluster_nodes = len([node for node in ray.nodes() if node["Alive"]])
    finally:
        for algo in algos.values():
            algo.stop()

    typical = {key: typical_timing(values) for key, values in timings.items()}
    per_iteration = {key: np.array([t.env_steps / t.total_s for t in values]) for key, values in timings.items()}
    rates = {key: float(np.median(values)) for key, values in per_iteration.items()}
    # Speed-up: the median ratio of iterations run moments apart (this kind of VM drifts in CPU speed).
    speedups = {
        (kind, n): float(np.median(per_iteration[kind, n] / per_iteration[kind, min(group)]))
        for kind, group in (("run", counts), ("probe", probes))
        for n in group
    }
    print(
        f"machine: {platform.node()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the "
        f"end; Ray nodes: {cluster_nodes}; data: {args.data_dir or 'embedded synthetic'}"
    )
    print(
        f"{args.algo} on {args.env}: {args.num_envs} sub-envs x {args.fragment} vector steps per runner per "
        f"iteration; {args.iterations} interleaved iterations per count after {args.warmup} warm-up "
        "(env steps/s: median; speed-up: median ratio of adjacent iterations; times: mean of the middle half "
        "by wall time)\n"
    )

    def table(kind, runner_counts):
        _timing_table(
            runner_counts,
            {n: typical[kind, n] for n in runner_counts},
            {n: rates[kind, n] for n in runner_counts},
            {n: speedups[kind, n] for n in runner_counts},
            {n: nodes_used[kind, n] for n in runner_counts},
        )

    table("run", counts)
    measured, parts = fit_model({n: typical["run", n] for n in counts}, delta_bytes)
    print(f"\nsync cost fit (ms): {_fits(parts)}")
    model = measured
    if probes:
        print("\nsynchronization probe: 1 sub-env x 1 vector step per runner\n")
        table("probe", probes)
        probe, probe_parts = fit_model({n: typical["probe", n] for n in probes}, delta_bytes)
        print(f"\nsync cost fit (ms): {_fits(probe_parts)}")
        model = ScalingModel(
            sample_s=measured.sample_s,
            steps_per_runner=measured.steps_per_runner,
            fixed_s=probe.fixed_s,
            per_runner_s=probe.per_runner_s,
            delta_bytes=delta_bytes,
        )

    bandwidth = args.bandwidth_gbit * 1e9 / 8
    print(
        f"\nmodel: T(n) = t_s + c0 + c1 n + (n B_delta + m B_state) / W with t_s = {_ms(model.sample_s)} ms "
        f"(one runner's {model.steps_per_runner:,} env steps: {model.steps_per_runner / model.sample_s:,.0f} "
        f"env steps/s per runner), c0 = {_ms(model.fixed_s)} ms, "
        f"c1 = {_ms(model.per_runner_s)} ms per runner "
        f"(from the {'probe' if probes else 'runs'}"
        f"{'' if len(probes or counts) > 1 else '; one runner count: c1 is an upper bound'}), "
        f"B_delta = B_state = {delta_bytes / 1024:,.1f} KiB, W = {args.bandwidth_gbit:g} Gbit/s\n"
    )
    print(
        "| nodes | env runners | projected env steps/s | parallel efficiency | iteration ms | sync cost ms "
        "(c0 + c1 n) | network ms |"
    )
    print("|---|---|---|---|---|---|---|")
    projection = []
    for nodes in _counts(args.nodes):
        runners = nodes * args.runners_per_node
        total = model.iteration_s(runners, nodes, bandwidth)
        local = model.fixed_s + model.per_runner_s * runners
        row = {
            "nodes": nodes,
            "runners": runners,
            "steps_per_s": model.steps_per_s(runners, nodes, bandwidth),
            "efficiency": model.efficiency(runners, nodes, bandwidth),
            "iteration_s": total,
            "sync_s": local,
            "network_s": total - model.sample_s - local,
        }
        projection.append(row)
        print(
            f"| {nodes} | {runners} | {row['steps_per_s']:,.0f} | {row['efficiency']:.0%} | {_ms(total)} | "
            f"{_ms(local)} | {_ms(row['network_s'])} |"
        )
    limit = model.sample_s / model.per_runner_s if model.per_runner_s > 0 else float("inf")
    print(
        f"\nSynchronization costs as much as sampling at n = t_s / c1 = {limit:,.0f} runners; a larger "
        "fragment (--fragment, --num-envs) pushes that out: t_s grows with it, c0 and c1 do not."
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {key: str(value) for key, value in vars(args).items()},
                    "measured": {
                        f"{kind}-{n}": {
                            "steps_per_s": rates[kind, n],
                            "speedup": speedups[kind, n],
                            "typical": vars(typical[kind, n]),
                            "iterations": [vars(t) for t in timings[kind, n]],
                        }
                        for kind, n in timings
                    },
                    "model": vars(model),
                    "projection": projection,
                },
                indent=2,
                default=float,
            )
        )


if __name__ == "__main__":
    main()
