"""Overload: what the service answers when more rank requests arrive than it can serve.

    .venv/bin/python benchmarks/serve_overload.py --data-dir ../shared/data/ml-100k --sustainable 500 --factors 2,5

Starts `recbandits serve` (defaults: admission control with max_ongoing_requests=128, max_queued_requests=128),
then per factor offers open-loop rank requests of simulated MovieLens users to the replica's fast-path port:
``--base`` per second for ``--phase`` seconds, ``factor x --sustainable`` per second for ``--phase`` seconds (the
burst), and ``--base`` again. Prints per phase the offered and accepted rate, the share refused (503), other
errors, p50/p99 of the accepted requests (and the p99 of those sent from 1 s into the phase, once the in-flight
limit has adapted) and of the refusals, and the recovery time: from the end of the burst
to the last request sent at the base rate that was refused or took over 50 ms. ``--pin`` puts the service on one
CPU and the generator on the other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recbandits.loadgen.http_client import REQUEST_ERRORS, KeepAliveClient
from recbandits.loadgen.loadtest import LoadTestSpec, open_loop, simulated_users
from recbandits.loadgen.service_process import ServiceProcess, free_port_block

SLOW_S = 0.050
SETTLE_S = 1.0  # the in-flight limit adapts to an overload within about this (serve/limits.py)


async def offer_phases(url: str, bodies: list[bytes], phases: list[tuple[str, float, float]],
                       connections: int) -> list[tuple]:
    """Open-loop phases (name, rate, seconds) back to back over at most ``connections`` keep-alive connections
    (a client's pool: a request waits for a free one); (phase, send, latency, status) per request."""
    client = KeepAliveClient(url, timeout_s=30.0, max_connections=connections)
    results: list[tuple] = []
    in_flight = asyncio.Semaphore(4096)
    running: list[set[asyncio.Task]] = []
    lags: dict[str, float] = {}
    try:
        start = time.perf_counter()
        for name, rate, seconds in phases:
            async def fire(index: int, name=name) -> None:
                sent = time.perf_counter()
                try:
                    status, _ = await client.request("POST", "/v1/rank", bodies[index % len(bodies)])
                except REQUEST_ERRORS:
                    status = -1
                results.append((name, sent - start, time.perf_counter() - sent, status))

            phase_start = time.perf_counter()
            _, lag, tasks = await open_loop(fire, rate, 10**9, phase_start + seconds, in_flight, phase_start)
            lags[name] = lag
            running.append(tasks)  # still in flight: they finish while the next phase runs
        await asyncio.gather(*(task for tasks in running for task in list(tasks)))
    finally:
        await client.close()
    return results, lags


def summarize(results: list[tuple], lags: dict[str, float], phases: list[tuple[str, float, float]]) -> list[dict]:
    rows = []
    phase_start = 0.0
    for name, rate, seconds in phases:
        mine = [row for row in results if row[0] == name]
        accepted = np.array([latency for _, _, latency, status in mine if status == 200])
        settled = np.array([latency for _, sent, latency, status in mine
                            if status == 200 and sent >= phase_start + SETTLE_S])
        refused = np.array([latency for _, _, latency, status in mine if status == 503])
        other = sum(1 for row in mine if row[3] not in (200, 503))
        rows.append({
            "phase": name, "offered_per_s": rate, "sent": len(mine),
            "accepted_per_s": round(len(accepted) / seconds, 1),
            "refused_share": round(len(refused) / max(len(mine), 1), 4), "other_errors": other,
            "accepted_p50_ms": round(float(np.percentile(accepted, 50)) * 1e3, 1) if len(accepted) else None,
            "accepted_p99_ms": round(float(np.percentile(accepted, 99)) * 1e3, 1) if len(accepted) else None,
            "settled_p99_ms": round(float(np.percentile(settled, 99)) * 1e3, 1) if len(settled) else None,
            "refusal_p99_ms": round(float(np.percentile(refused, 99)) * 1e3, 1) if len(refused) else None,
            "generator_lag_ms": round(lags[name] * 1e3, 1),  # how far the generator fell behind its schedule
        })
        phase_start += seconds
    burst_end = sum(seconds for _, _, seconds in phases[:2])
    after = [row for row in results if row[0] == phases[2][0] and (row[3] != 200 or row[2] > SLOW_S)]
    rows[2]["recovery_s"] = round(max(row[1] for row in after) - burst_end, 2) if after else 0.0
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="MovieLens directory of the simulated users")
    parser.add_argument("--sustainable", type=float, default=500.0, help="rank requests/s the replica sustains")
    parser.add_argument("--factors", default="2,5", help="burst rates as multiples of --sustainable")
    parser.add_argument("--base", type=float, default=300.0, help="rate before and after the burst")
    parser.add_argument("--phase", type=float, default=10.0, help="seconds of each phase")
    parser.add_argument("--connections", type=int, default=256, help="the client's connection pool")
    parser.add_argument("--service-args", default="", help="extra `recbandits serve` options")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    parser.add_argument("--pin", action="store_true",
                        help="the service (every Ray process) on CPU 0, this generator on CPU 1: the server's share "
                             "apart from the generator's on a 2-core machine")
    args = parser.parse_args(argv)

    bodies = simulated_users(LoadTestSpec(data_dir=args.data_dir), 20, [str(arm) for arm in range(20)]).bodies
    rows = []
    with tempfile.TemporaryDirectory() as state:
        port = free_port_block(12)
        service_args = ["--state-dir", Path(state) / "state", "--port", port, "--replica-port", port + 1,
                        "--context-dim", 20, "--num-arms", 20, *args.service_args.split()]
        service = ServiceProcess(service_args, log_path=Path(state) / "service.log")
        if args.pin:
            os.sched_setaffinity(0, {0})  # inherited by the service and every process Ray starts
        ready = service.start()
        if args.pin:
            os.sched_setaffinity(0, {1})
        try:
            url = ready["replica_urls"][0]
            asyncio.run(offer_phases(url, bodies, [("warmup", args.base, 5.0)], args.connections))
            for factor in (float(value) for value in args.factors.split(",")):
                phases = [(f"{factor:g}x before", args.base, args.phase),
                          (f"{factor:g}x burst", factor * args.sustainable, args.phase),
                          (f"{factor:g}x after", args.base, args.phase)]
                results, lags = asyncio.run(offer_phases(url, bodies, phases, args.connections))
                for row in summarize(results, lags, phases):
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                time.sleep(3.0)
        finally:
            service.stop()
    header = f"{'phase':<12} {'offered/s':>9} {'accepted/s':>10} {'refused':>8} {'other':>6} {'p50 ms':>7} " \
             f"{'p99 ms':>7} {'p99 >1s':>7} {'503 p99':>8} {'recovery':>9} {'gen lag':>8}"
    print(header, file=sys.stderr)
    for row in rows:
        recovery = f"{row['recovery_s']:.2f} s" if "recovery_s" in row else ""
        print(f"{row['phase']:<12} {row['offered_per_s']:>9.0f} {row['accepted_per_s']:>10.1f} "
              f"{row['refused_share']:>8.1%} {row['other_errors']:>6} {row['accepted_p50_ms'] or 0:>7.1f} "
              f"{row['accepted_p99_ms'] or 0:>7.1f} {row['settled_p99_ms'] or 0:>7.1f} "
              f"{row['refusal_p99_ms'] or 0:>8.1f} {recovery:>9} "
              f"{row['generator_lag_ms']:>6.0f}ms", file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
