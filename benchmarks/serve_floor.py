"""Ray Serve's own floor on this machine: a constant-answer deployment and the recbandits service, same load.

    .venv/bin/python benchmarks/serve_floor.py --data-dir ../shared/data/ml-100k [--rates 300,400,450]
                                               [--rounds 2] [--duration 30] [--out runs/floor.json]
    .venv/bin/python benchmarks/serve_floor.py --apps recbandits --service-args "--batch-wait-ms 8" --rates 400

Both apps run one replica under the settings ``recbandits serve`` uses (``start_ray_serve``: Ray Serve's
throughput-optimized mode, direct ingress on the replica's port, the same FastAPI ingress and ``serve.batch``
settings). The constant app answers every ``/v1/rank`` with a fixed body of the service's shape and does nothing
else: what any application pays for Ray Serve's request path here. The recbandits service (in-process LinUCB,
cold start, every decision fsynced to the event log) answers the same requests for real. One open-loop generator
(the load test's arrival process and its MovieLens users' request bodies; rank requests only, no rewards) offers
each rate to one app, then the other, alternating, for ``--rounds``; it prints p50/p99 of each and the replica
process's CPU per request (from /proc over the steady window). If the constant app misses p99 <= 50 ms at a
rate, no application served by Ray Serve on this machine meets it there.
"""

# No ``from __future__ import annotations``: Ray pickles the constant app by value, without the module globals a
# string annotation would name, and FastAPI must see ``Request`` itself to pass the request to the endpoint.
import argparse
import asyncio
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from recbandits.loadgen.service_process import ServiceProcess, free_port_block, session_pids

TARGET_P99_MS = 50.0


def serve_constant(port: int) -> None:
    """Run the constant-answer app (``--serve-constant PORT``) and print the ready line ServiceProcess reads."""
    from ray import serve

    from recbandits.serve.app import LOGGING, MAX_ONGOING_REQUESTS
    from recbandits.serve.config import ServeConfig
    from recbandits.serve.runner import replica_urls, start_ray_serve

    config = ServeConfig(state_dir=tempfile.mkdtemp(prefix="recbandits-floor-"), port=port, context_dim=20,
                         num_arms=20)
    start_ray_serve(config)
    api = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})
    answer = json.dumps({
        "event_id": "0" * 32, "action": "0", "policy_version": 1, "policy_watermark": 0, "exploration": "ucb",
        "ranking": [{"id": str(index), "score": 0.5, "probability": None} for index in range(5)],
    }).encode()

    @serve.deployment(name="Constant", max_ongoing_requests=MAX_ONGOING_REQUESTS)
    @serve.ingress(api)
    class Constant:
        @serve.batch(max_batch_size=config.max_batch_size, batch_wait_timeout_s=config.batch_wait_timeout_s,
                     max_concurrent_batches=4)
        async def _answers(self, requests: list[bytes]) -> list[bytes]:
            return [answer for _ in requests]

        @api.post("/v1/rank")
        async def rank(self, http: Request) -> Response:
            return Response(await self._answers(await http.body()), media_type="application/json")

        @api.get("/healthz")
        async def healthz(self) -> Response:
            replica = serve.get_replica_context().replica_id.unique_id
            return Response(json.dumps({"status": "ready", "replica": replica}), media_type="application/json")

    serve.run(Constant.options(logging_config=LOGGING).bind(), name="constant", route_prefix="/", blocking=False)
    print(json.dumps({"ready": True, "url": f"http://{config.host}:{port}", "replica_urls": replica_urls(config)}),
          flush=True)
    while True:
        time.sleep(3600)


def replica_cpu_seconds(service: ServiceProcess) -> float:
    """CPU time (user + system) of the service's Ray Serve replica processes so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in session_pids(service.process.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if not handle.read().startswith(b"ray::ServeReplica"):
                    continue
            with open(f"/proc/{pid}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)
    return total


async def offer(url: str, bodies: list[bytes], rate: float, duration_s: float, warmup_s: float,
                service: ServiceProcess) -> dict:
    """Rank requests at ``rate``/s for ``duration_s``: latency percentiles and replica CPU after the warm-up."""
    from recbandits.loadgen.http_client import REQUEST_ERRORS, KeepAliveClient
    from recbandits.loadgen.loadtest import open_loop

    latencies: list[float] = []
    errors = 0
    rng = np.random.default_rng(0)
    client = KeepAliveClient(url, timeout_s=10.0, max_connections=256)
    try:
        gc.collect()
        gc.freeze()  # as the load test does: no full collections of start-up objects while requests are timed
        started = time.perf_counter()
        steady_from = started + warmup_s

        async def fire(index: int) -> None:
            nonlocal errors
            sent = time.perf_counter()
            try:
                status, _ = await client.request("POST", "/v1/rank", bodies[int(rng.integers(len(bodies)))])
                ok = status == 200
            except REQUEST_ERRORS:
                ok = False
            if not ok:
                errors += 1
            elif sent >= steady_from:
                latencies.append(time.perf_counter() - sent)

        async def cpu_at(moment: float) -> tuple[float, float]:
            await asyncio.sleep(max(moment - time.perf_counter(), 0.0))
            return time.perf_counter(), replica_cpu_seconds(service)

        window = asyncio.get_running_loop().create_task(cpu_at(steady_from))
        issued, lag, tasks = await open_loop(fire, rate, 10**9, started + duration_s, asyncio.Semaphore(2048),
                                             started)
        stopped, cpu_end = time.perf_counter(), replica_cpu_seconds(service)
        await asyncio.gather(*tasks)
        begun, cpu_begin = await window
    finally:
        await client.close()
    gc.unfreeze()
    steady_requests = len(latencies)
    latency_ms = np.asarray(latencies) * 1e3
    return {
        "rate": rate, "issued": issued, "errors": errors, "max_schedule_lag_ms": lag * 1e3,
        "p50_ms": float(np.percentile(latency_ms, 50)), "p99_ms": float(np.percentile(latency_ms, 99)),
        "max_ms": float(latency_ms.max()),
        "replica_cpu_share": (cpu_end - cpu_begin) / (stopped - begun),
        "replica_cpu_ms_per_request": (cpu_end - cpu_begin) / max(steady_requests, 1) * 1e3,
    }


def run_app(kind: str, rate: float, args, bodies: list[bytes]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"recbandits-floor-{kind}-") as state:
        port = free_port_block(12)
        if kind == "constant":
            service = ServiceProcess([port], command=[__file__, "--serve-constant"],
                                     log_path=Path(state) / "service.log")
        else:
            service = ServiceProcess([
                "--state-dir", state, "--port", port, "--replica-port", port + 1, "--context-dim", 20,
                "--num-arms", 20, "--snapshot-interval", 10, "--join-window", 30, *args.service_args.split(),
            ], log_path=Path(state) / "service.log")  # fmt: skip
        ready = service.start()
        try:
            result = asyncio.run(offer(ready["replica_urls"][0], bodies, rate, args.duration, args.warmup, service))
        finally:
            service.kill()
    return {"app": kind, **result}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-constant", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rates", default="300,400,450", help="Rank requests/s offered, comma-separated.")
    parser.add_argument("--apps", default="constant,recbandits", help="Which apps, comma-separated.")
    parser.add_argument("--service-args", default="", help="Extra `recbandits serve` options for the service.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--data-dir", default=None, help="MovieLens directory of the users (default: synthetic)")
    parser.add_argument("--out", type=Path, default=None, help="Write the results (JSON) here.")
    args = parser.parse_args(argv)
    if args.serve_constant is not None:
        serve_constant(args.serve_constant)
        return []

    from recbandits.loadgen.loadtest import LoadTestSpec, simulated_users

    bodies = simulated_users(LoadTestSpec(data_dir=args.data_dir), 20, [str(arm) for arm in range(20)]).bodies
    rates = [float(rate) for rate in args.rates.split(",")]
    apps = args.apps.split(",")
    if not set(apps) <= {"constant", "recbandits"} or not apps:
        parser.error(f"--apps {args.apps!r}: constant and/or recbandits")
    results = []
    for round_index in range(args.rounds):
        for rate in rates:
            for kind in apps if round_index % 2 == 0 else apps[::-1]:
                result = {"round": round_index, **run_app(kind, rate, args, bodies)}
                results.append(result)
                print(f"round {round_index}  {kind:<10} {rate:5.0f}/s  p50 {result['p50_ms']:6.1f} ms  "
                      f"p99 {result['p99_ms']:6.1f} ms  max {result['max_ms']:6.1f} ms  errors {result['errors']}  "
                      f"replica {result['replica_cpu_share'] * 100:4.0f}% of a core = "
                      f"{result['replica_cpu_ms_per_request']:.2f} ms CPU/request", flush=True)

    if len(apps) < 2:
        return results
    print(f"\nmedian over {args.rounds} round(s); target p99 <= {TARGET_P99_MS:.0f} ms")
    print(f"{'rate/s':>7} | {'constant p99':>12} | {'recbandits p99':>14} | {'constant CPU/req':>16} | "
          f"{'recbandits CPU/req':>18} | ratio")
    def median(kind: str, key: str, rate: float) -> float:
        return float(np.median([row[key] for row in results if row["app"] == kind and row["rate"] == rate]))

    for rate in rates:
        constant_cpu = median("constant", "replica_cpu_ms_per_request", rate)
        own_cpu = median("recbandits", "replica_cpu_ms_per_request", rate)
        print(f"{rate:7.0f} | {median('constant', 'p99_ms', rate):9.1f} ms | "
              f"{median('recbandits', 'p99_ms', rate):11.1f} ms | {constant_cpu:13.2f} ms | {own_cpu:15.2f} ms | "
              f"{own_cpu / constant_cpu:.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
