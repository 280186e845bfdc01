"""Serving benchmark: start a service on a fresh state dir, load-test it with simulated MovieLens users, stop it.

    .venv/bin/python benchmarks/serve_loadtest.py                        # in-process learning, cold start
    .venv/bin/python benchmarks/serve_loadtest.py --learning learner --num-replicas 2
    .venv/bin/python benchmarks/serve_loadtest.py --checkpoint runs/simulate   # start from a trained policy
    .venv/bin/python benchmarks/serve_loadtest.py --checkpoint runs/simulate --drift-rate 0.01  # tastes turn

The service is ``python -m recbandits.serve`` with its own local Ray (MovieLens spec: 20-dim user vectors, 20
movies, LinUCB), on free ports of 127.0.0.1; the load test (``recbandits.loadgen.loadtest``) offers ``--rate``
rank requests per second to the replicas' fast-path URLs, each followed by its reward after a uniform random
delay, and compares the online policy's regret with a frozen copy of the starting one (trained, when it starts
from a checkpoint; on drifting users with ``--drift-rate``). Targets (2 cores):
>= 400 rank requests/s with p99 <= 50 ms and no errors, click-to-policy median <= 1 s, online regret below
the frozen policy's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from recbandits.loadgen.loadtest import LoadTestSpec, format_report, run_loadtest
from recbandits.loadgen.service_process import ServiceProcess, free_port_block


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learning", default="in_process", choices=["in_process", "learner"])
    parser.add_argument("--num-replicas", type=int, default=1)
    parser.add_argument("--checkpoint", default=None, help="recbandits simulate --out DIR (default: cold start)")
    parser.add_argument("--exploration", default="ucb")
    parser.add_argument("--rate", type=float, default=450.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--requests", type=int, default=None,
                        help="Stop after this many rank requests (default: as many as --rate x --duration)")
    parser.add_argument("--reward-delay", default="0.05,0.5")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--drift-rate", type=float, default=0.0, help="Radians per arrival the users' tastes turn")
    parser.add_argument("--reward-batch-ms", type=float, default=0.0,
                        help="0: one /v1/reward per reward; > 0: rewards posted to /v1/rewards every this many ms")
    parser.add_argument("--sync-wait-ms", type=float, default=None, help="learner mode: see recbandits serve")
    parser.add_argument("--through-proxy", action="store_true", help="Load Ray Serve's proxy port, not the replicas'")
    parser.add_argument("--service-args", default="",
                        help="Extra `recbandits serve` options, e.g. \"--batch-wait-ms 8\".")
    parser.add_argument("--out", type=Path, default=None, help="Write the report (JSON) here.")
    args = parser.parse_args(argv)
    if args.learning == "in_process" and args.num_replicas != 1:
        parser.error("in_process learning serves from one replica")

    with tempfile.TemporaryDirectory(prefix="recbandits-serve-bench-") as state:
        port = free_port_block(args.num_replicas + 12)
        service_args = [
            "--state-dir", state, "--port", port, "--replica-port", port + 1, "--learning", args.learning,
            "--num-replicas", args.num_replicas, "--exploration", args.exploration,
            "--snapshot-interval", 10, "--join-window", 30,
        ]  # fmt: skip
        if args.sync_wait_ms is not None:
            service_args += ["--sync-wait-ms", args.sync_wait_ms]
        if args.checkpoint:
            service_args += ["--checkpoint", args.checkpoint]
        else:
            service_args += ["--context-dim", 20, "--num-arms", 20]
        service_args += args.service_args.split()
        service = ServiceProcess(service_args, log_path=Path(state) / "service.log")
        started = time.perf_counter()
        ready = service.start()
        print(f"service ready in {time.perf_counter() - started:.1f} s: {ready['url']} "
              f"(replicas {', '.join(ready['replica_urls'])})", file=sys.stderr)
        try:
            low, high = (float(part) for part in args.reward_delay.split(","))
            urls = [ready["url"]] if args.through_proxy or not ready["replica_urls"] else ready["replica_urls"]
            # Bounded by --duration unless --requests is given (closed loop, --rate 0: 100,000 requests at most).
            max_requests = args.requests or max(int(args.rate * args.duration) + 1, 100_000)
            spec = LoadTestSpec(urls=urls, rate=args.rate, max_requests=max_requests, duration_s=args.duration,
                                reward_delay=(low, high), data_dir=args.data_dir, warmup_s=args.warmup,
                                top_k=args.top_k or None, drift_rate=args.drift_rate,
                                reward_batch_s=args.reward_batch_ms / 1000.0, admin_token=service.admin_token)
            load_before = os.getloadavg()
            report = run_loadtest(spec)
            load_after = os.getloadavg()
        finally:
            service.stop()
    report["service"] = {"learning": args.learning, "num_replicas": args.num_replicas,
                         "checkpoint": args.checkpoint, "exploration": args.exploration}
    # Other work on the machine skews every figure: keep the load averages (1, 5, 15 min) with them.
    report["machine"] = {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
                         "nice": os.nice(0)}
    print(format_report(report))
    print(f"machine  {os.cpu_count()} cpus, load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
