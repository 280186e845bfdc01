"""``recbandits loadtest``: simulated MovieLens users against a running service, over HTTP.

Each simulated arrival (``recbandits.loadgen.users``: the MF env's users for a disjoint service, the ranking
env's users and click model for a ranking service) calls ``POST /v1/rank``, and after a random delay (uniform in
``reward_delay``) sends its feedback on what it was shown to ``POST /v1/reward``: the env's reward of the chosen
movie (its approximated rating, plus optional noise), or the clicks on the slate. Arrivals are open-loop at
``rate`` per second (or closed-loop with ``concurrency`` users when ``rate`` is 0), bounded by ``max_requests``
and ``duration_s``.

Reported: rank and reward requests/s, latency percentiles, errors by status, the click-to-policy latency (from
a reward's 2xx to the first rank answer whose ``policy_watermark`` reaches the reward's ``seq``: the first
decision by a version that learned from it) and the cumulative regret of the served decisions (slates: in
expected clicks) against a frozen copy of the starting policy (fetched from ``/v1/policy/versions/{v}/state``)
on the same users: with a service started from a ``simulate`` run, a policy trained on earlier data and then
frozen. ``drift_rate`` > 0 turns the users' tastes (``PreferenceDrift``: one world, a step of about
``drift_rate`` radians per arrival, shared by every user) while contexts keep showing the users' profiles,
the case online learning exists for; both policies' regret is measured against the world at each arrival. After
the load stops, a decision is probed every 10 ms until a served version covers every acknowledged reward, so the
rewards that arrive after the last arrival are timed as closely as the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson

from recbandits.loadgen.http_client import REQUEST_ERRORS, KeepAliveClient, parse_base_url
from recbandits.loadgen.users import LoadTestUsers, simulated_users

PROBE_INTERVAL_S = 0.01  # decisions probed after the load, to time the last rewards' click-to-policy
PROBE_TIMEOUT_S = 5.0  # give up on covering the last rewards this long after the last one was acknowledged


@dataclass
class LoadTestSpec:
    urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:8001"])
    rate: float = 450.0
    concurrency: int = 64
    max_requests: int = 20_000
    duration_s: float = 40.0
    reward_delay: tuple[float, float] = (0.05, 0.5)
    data_dir: str | None = None
    rank: int | None = None
    reward_noise: float = 0.0
    seed: int = 0
    warmup_s: float = 2.0
    timeout_s: float = 10.0
    top_k: int | None = 5
    drift_rate: float = 0.0  # radians per arrival that the users' shared taste rotation turns (0: stationary)
    reward_batch_s: float = 0.0  # > 0: rewards due are collected and posted to /v1/rewards every this many seconds
    admin_token: str | None = None  # the service's admin token (GET /v1/policy and the starting policy's state)
    num_candidates: int = 20  # ranking service: candidates per arrival
    choice_model: str = "cascade"  # ranking service: how users click a slate ("cascade" or "position_based")

    def __post_init__(self):
        if not self.urls:
            raise ValueError("give at least one --url")
        self.urls = [url.rstrip("/") for url in self.urls]
        for url in self.urls:
            parse_base_url(url)
        if self.rate < 0 or self.concurrency < 1 or self.max_requests < 1 or self.duration_s <= 0:
            raise ValueError("rate >= 0, concurrency >= 1, requests >= 1 and duration > 0 are required")
        low, high = self.reward_delay
        if not 0 <= low <= high:
            raise ValueError(f"reward delay {self.reward_delay} must satisfy 0 <= MIN <= MAX")
        if not (np.isfinite(self.drift_rate) and self.drift_rate >= 0):
            raise ValueError(f"--drift-rate {self.drift_rate} must be a finite number >= 0 (radians per arrival)")


async def _get_json(client: KeepAliveClient, path: str, token: str | None) -> dict[str, Any]:
    headers = b"Authorization: Bearer %s\r\n" % token.encode() if token else b""
    status, payload = await client.request("GET", path, headers=headers)
    if status == 401:
        raise ConnectionError(f"GET {client.host}:{client.port}{path}: the admin API needs the service's token: "
                              "--admin-token-file (default STATE_DIR/admin.token)")
    if status != 200:
        raise ConnectionError(f"GET {client.host}:{client.port}{path}: {status} {payload[:500]!r}")
    return orjson.loads(payload)


def _percentiles(values: list[float] | np.ndarray, scale: float = 1.0) -> dict[str, float | None]:
    if len(values) == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    array = np.asarray(values, dtype=np.float64) * scale
    return {"p50": float(np.percentile(array, 50)), "p90": float(np.percentile(array, 90)),
            "p99": float(np.percentile(array, 99)), "max": float(array.max()), "mean": float(array.mean())}


async def open_loop(fire: Callable[[int], Awaitable[None]], rate: float, max_requests: int, deadline: float,
                    in_flight: asyncio.Semaphore, started: float) -> tuple[int, float, set[asyncio.Task]]:
    """Open-loop arrivals: start ``fire(i)`` at ``started + i / rate`` (at most ``in_flight`` at once) until
    ``max_requests`` or ``deadline`` (perf_counter); return (requests issued, largest lag behind schedule in
    seconds, the tasks still running)."""
    loop = asyncio.get_running_loop()
    issued, lag = 0, 0.0
    tasks: set[asyncio.Task] = set()

    async def limited(index: int) -> None:
        try:
            await fire(index)
        finally:
            in_flight.release()

    interval = 1.0 / rate
    while issued < max_requests:
        due = started + issued * interval
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        if time.perf_counter() >= deadline:
            break
        await in_flight.acquire()
        lag = max(lag, time.perf_counter() - due)
        task = loop.create_task(limited(issued))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        issued += 1
    return issued, lag, tasks


async def _run(spec: LoadTestSpec) -> dict[str, Any]:
    from recbandits.algos.candidates import LinearCandidatePolicy

    clients = {url: KeepAliveClient(url, spec.timeout_s, max_connections=max(spec.concurrency * 2, 64))
               for url in spec.urls}
    first = clients[spec.urls[0]]
    try:
        info = await _get_json(first, "/v1/policy", spec.admin_token)
        fields = info["policy"]
        users = simulated_users(spec, fields)
        start_version = int(info["policy_version"])
        start_state = await _get_json(first, f"/v1/policy/versions/{start_version}/state", spec.admin_token)
        frozen = LinearCandidatePolicy(fields, {key: np.asarray(value) for key, value in start_state["state"].items()},
                               seed=spec.seed + 1)
        # Building the users blocks the event loop for longer than the server's keep-alive timeout may last: a
        # connection it closed meanwhile would look reusable. The load starts on fresh connections.
        await first.close()
        rng = np.random.default_rng(spec.seed)
        # A full garbage collection would walk everything made at start-up (the env, torch, Ray: ~300k objects,
        # 150-300 ms per pass, with the event loop stopped and requests in flight timed): only what the run makes.
        gc.collect()
        gc.freeze()

        # send, recv, status, arrival, what was shown (users.shown), version, watermark
        ranks: list[tuple[float, float, int, int, Any, int, int]] = []
        rewards: list[tuple[float, float, int, int]] = []  # send, ack, status, seq
        errors: dict[str, int] = {}
        pending_rewards: set[asyncio.Task] = set()
        in_flight = asyncio.Semaphore(spec.concurrency)
        low, high = spec.reward_delay

        def error(kind: str) -> None:
            errors[kind] = errors.get(kind, 0) + 1

        collected: dict[str, list[tuple[str, dict[str, Any]]]] = {url: [] for url in spec.urls}

        async def post(kind: str, url: str, path: str, body: bytes) -> tuple[float, float, int, bytes] | None:
            """(sent, received, status, payload) of one POST; None (counted as an error) if it never answered."""
            sent = time.perf_counter()
            try:
                status, payload = await clients[url].request("POST", path, body)
            except REQUEST_ERRORS as exc:  # refused, reset, timed out, malformed
                error(f"{kind}:{type(exc).__name__}")
                return None
            received = time.perf_counter()
            if status != 200:
                error(f"{kind}:{status}")
            return sent, received, status, payload

        async def post_batch(url: str, items: list[tuple[str, dict[str, Any]]]) -> None:
            body = orjson.dumps({"rewards": [{"event_id": event_id, **fields} for event_id, fields in items]})
            answer = await post("reward", url, "/v1/rewards", body)
            if answer is None or answer[2] != 200:
                return
            sent, acked, _, payload = answer
            for result in orjson.loads(payload)["results"]:
                if result["status"] == "rejected":
                    error(f"reward:{result['error']['status']}")
                    rewards.append((sent, acked, result["error"]["status"], -1))
                else:
                    rewards.append((sent, acked, 200, int(result["seq"])))

        flushing_stopped = asyncio.Event()

        async def flush_rewards() -> None:
            """Reward batching (``reward_batch_s``): post what each URL collected, every period, until stopped.
            A post in flight is awaited, never cancelled: its rewards are already out of ``collected``."""
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(flushing_stopped.wait(), spec.reward_batch_s)
                final = flushing_stopped.is_set()  # nothing is collected after the stop: this pass takes the rest
                posts = []
                for url, items in collected.items():
                    while items:
                        chunk, items[:] = items[:1000], items[1000:]
                        posts.append(post_batch(url, chunk))
                if posts:
                    await asyncio.gather(*posts)
                if final:
                    return

        async def send_reward(url: str, event_id: str, feedback: dict[str, Any], delay: float) -> None:
            await asyncio.sleep(delay)
            if spec.reward_batch_s > 0:
                collected[url].append((event_id, feedback))
                return
            answer = await post("reward", url, "/v1/reward", orjson.dumps({"event_id": event_id, **feedback}))
            if answer is None:
                return
            sent, acked, status, payload = answer
            rewards.append((sent, acked, status, int(orjson.loads(payload)["seq"]) if status == 200 else -1))

        async def one(index: int) -> None:
            url = spec.urls[index % len(spec.urls)]
            answer = await post("rank", url, "/v1/rank", users.body(index))
            if answer is None:
                return
            sent, received, status, payload = answer
            if status != 200:
                ranks.append((sent, received, status, index, -1, -1, -1))
                return
            answer = orjson.loads(payload)
            shown = users.shown(index, answer)
            ranks.append((sent, received, status, index, shown, int(answer["policy_version"]),
                          int(answer["policy_watermark"])))
            task = asyncio.get_running_loop().create_task(
                send_reward(url, answer["event_id"], users.feedback(index, shown, rng), float(rng.uniform(low, high))))
            pending_rewards.add(task)
            task.add_done_callback(pending_rewards.discard)

        flusher = asyncio.get_running_loop().create_task(flush_rewards()) if spec.reward_batch_s > 0 else None
        started = time.perf_counter()
        cpu_at_start = time.process_time()
        deadline = started + spec.duration_s
        issued = 0
        lag = 0.0
        tasks: set[asyncio.Task] = set()
        if spec.rate > 0:
            issued, lag, tasks = await open_loop(one, spec.rate, spec.max_requests, deadline, in_flight, started)
        else:
            counter = iter(range(spec.max_requests))

            async def closed_loop_user() -> None:
                nonlocal issued
                for index in counter:
                    if time.perf_counter() >= deadline:
                        return
                    issued += 1
                    await one(index)

            await asyncio.gather(*(closed_loop_user() for _ in range(spec.concurrency)))
        stopped = time.perf_counter()
        generator_cpu_s = time.process_time() - cpu_at_start  # this process's CPU (all threads) while offering load
        # From here no load is offered, yet rewards still arrive (up to the largest delay): probe decisions every
        # 10 ms until a served version covers every acknowledged reward, so that the late rewards' click-to-policy
        # is measured as the others' are (these decisions count in neither throughput nor regret).
        tail: list[tuple[float, int]] = []
        rewards_done = asyncio.Event()
        covered = -1  # the highest policy watermark a probe has seen

        async def probe_after_load() -> None:
            nonlocal covered
            for index in itertools.count():
                url = spec.urls[index % len(spec.urls)]
                status, payload = await clients[url].request("POST", "/v1/rank", probe)
                if status == 200:
                    tail.append((time.perf_counter(), int(orjson.loads(payload)["policy_watermark"])))
                    covered = max(covered, tail[-1][1])
                if rewards_done.is_set() and (
                    covered >= last_seq or time.perf_counter() > rewards_done_at + PROBE_TIMEOUT_S
                ):
                    return
                await asyncio.sleep(PROBE_INTERVAL_S)

        probe = users.body(0)
        prober = asyncio.get_running_loop().create_task(probe_after_load())
        if tasks:
            await asyncio.gather(*tasks)
        rank_done = time.perf_counter()
        if pending_rewards:
            await asyncio.gather(*list(pending_rewards))
        if flusher is not None:
            flushing_stopped.set()
            await flusher
        last_seq = max((row[3] for row in rewards if row[2] == 200), default=-1)
        rewards_done_at = time.perf_counter()
        rewards_done.set()
        await prober
        end_info = await _get_json(first, "/v1/policy", spec.admin_token)
    finally:
        for client in clients.values():
            await client.close()

    return _report(spec, users, frozen, ranks, rewards, tail, errors, started, stopped, rank_done, issued, lag,
                   start_version, end_info, generator_cpu_s)


def _report(spec, users: LoadTestUsers, frozen, ranks, rewards, tail, errors, started, stopped, rank_done, issued,
            lag, start_version, end_info, generator_cpu_s) -> dict[str, Any]:
    ok = [row for row in ranks if row[2] == 200]
    window_start = started + spec.warmup_s
    steady = [row for row in ok if row[0] >= window_start]
    steady_span = max(stopped - window_start, 1e-9)
    rank_latency = [row[1] - row[0] for row in steady]
    reward_ok = [row for row in rewards if row[2] == 200]
    reward_latency = [row[1] - row[0] for row in reward_ok if row[0] >= window_start]

    # Click-to-policy: first answer (by arrival) whose policy watermark covers the reward's seq.
    answers = sorted([(row[1], row[6]) for row in ok] + tail)
    times = np.array([answer[0] for answer in answers])
    coverage = np.maximum.accumulate(np.array([answer[1] for answer in answers])) if answers else np.array([])
    delays, unseen = [], 0
    for _, acked, _, seq in reward_ok:
        index = int(np.searchsorted(coverage, seq, side="left")) if len(coverage) else 0
        if index >= len(coverage):
            unseen += 1
            continue
        delays.append(max(times[index] - acked, 0.0))

    # Regret of the served decisions against a frozen copy of the starting policy on the same arrivals, in the
    # world of each arrival.
    arrivals = np.array([row[3] for row in ok], dtype=np.int64)
    online_regret = users.regret(arrivals, [row[4] for row in ok])
    frozen_regret = users.frozen_regret(frozen, arrivals)
    half = len(online_regret) // 2

    return {
        "spec": {**asdict(spec), "reward_delay": list(spec.reward_delay)},
        "slow_seconds": _slow_seconds(steady, window_start),
        "duration_s": stopped - started,
        "issued": issued,
        "max_schedule_lag_ms": lag * 1e3,
        # On one machine the generator shares the CPUs with the service: what it took is not the service's.
        "generator_cpu": {"cpu_s": generator_cpu_s, "cores": generator_cpu_s / max(stopped - started, 1e-9),
                          "per_rank_request_ms": generator_cpu_s / max(issued, 1) * 1e3},
        "rank": {
            "ok": len(ok), "steady_ok": len(steady), "requests_per_s": len(steady) / steady_span,
            "latency_ms": _percentiles(rank_latency, 1e3), "drain_s": rank_done - stopped,
        },
        "reward": {"ok": len(reward_ok), "sent": len(rewards),
                   "requests_per_s": len(reward_latency) / steady_span,
                   "latency_ms": _percentiles(reward_latency, 1e3)},
        "errors": errors,
        "click_to_policy_s": {**_percentiles(delays), "observed": len(delays), "not_observed": unseen},
        "regret": {
            "decisions": int(len(online_regret)),
            "online_cumulative": float(online_regret.sum()),
            "frozen_cumulative": float(frozen_regret.sum()),
            "online_per_decision": float(online_regret.mean()) if half else None,
            "frozen_per_decision": float(frozen_regret.mean()) if half else None,
            "online_second_half_per_decision": float(online_regret[half:].mean()) if half else None,
            "frozen_second_half_per_decision": float(frozen_regret[half:].mean()) if half else None,
        },
        "policy_version": {"start": start_version, "end": end_info["policy_version"],
                           "observations_end": end_info["statistics"]["observations"]},
    }


SLOW_MS = 50.0  # the latency target: the report says in which seconds of the run the requests above it were sent


def _slow_seconds(steady: list[tuple], window_start: float) -> dict[str, Any]:
    """Where the tail is: how many rank requests took over SLOW_MS, and the seconds (from the end of the warm-up)
    in which most of them were sent. A few bad seconds point at stalls; slow requests spread over every second
    point at a saturated server."""
    sent = np.array([row[0] - window_start for row in steady])
    slow = np.array([(row[1] - row[0]) * 1e3 > SLOW_MS for row in steady], dtype=bool)
    if not len(sent):
        return {"threshold_ms": SLOW_MS, "slow": 0, "seconds_with_slow": 0, "seconds": 0, "worst": []}
    second = sent.astype(np.int64)
    per_second = np.bincount(second[slow], minlength=int(second.max()) + 1)
    worst = np.argsort(-per_second, kind="stable")[:5]
    return {"threshold_ms": SLOW_MS, "slow": int(slow.sum()), "seconds_with_slow": int((per_second > 0).sum()),
            "seconds": len(per_second),
            "worst": [{"second": int(index), "slow": int(per_second[index])} for index in worst if per_second[index]]}


def run_loadtest(spec: LoadTestSpec) -> dict[str, Any]:
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        return run(_run(spec))
    finally:
        gc.unfreeze()


def format_report(report: dict[str, Any]) -> str:
    rank, reward, click, regret = report["rank"], report["reward"], report["click_to_policy_s"], report["regret"]

    def ms(value):
        return "n/a" if value is None else f"{value:.1f} ms"

    def s(value):
        return "n/a" if value is None else f"{value:.3f} s"

    errors = ", ".join(f"{key}: {value}" for key, value in sorted(report["errors"].items())) or "none"
    slow = report["slow_seconds"]
    drift_rate = report["spec"]["drift_rate"]
    drift = f", tastes turning {drift_rate:g} rad per arrival" if drift_rate else ""
    worst = ", ".join(f"{item['second']} s ({item['slow']})" for item in slow["worst"])
    lines = [
        f"rank     {rank['requests_per_s']:8.1f} req/s  p50 {ms(rank['latency_ms']['p50'])}  "
        f"p99 {ms(rank['latency_ms']['p99'])}  max {ms(rank['latency_ms']['max'])}  ({rank['ok']} ok)",
        f"reward   {reward['requests_per_s']:8.1f} /s     p50 {ms(reward['latency_ms']['p50'])}  "
        f"p99 {ms(reward['latency_ms']['p99'])}  ({reward['ok']} ok of {reward['sent']})",
        f"errors   {errors}",
        f"tail     {slow['slow']} rank requests over {slow['threshold_ms']:.0f} ms, sent in "
        f"{slow['seconds_with_slow']} of {slow['seconds']} s" + (f"; worst seconds {worst}" if worst else ""),
        f"click-to-policy  median {s(click['p50'])}  p90 {s(click['p90'])}  p99 {s(click['p99'])}  "
        f"({click['observed']} observed, {click['not_observed']} not)",
        f"regret   online {regret['online_cumulative']:.1f}  frozen {regret['frozen_cumulative']:.1f}  "
        f"over {regret['decisions']} decisions{drift} (per decision, second half: online "
        f"{regret['online_second_half_per_decision'] or 0:.4f}, "
        f"frozen {regret['frozen_second_half_per_decision'] or 0:.4f})",
        f"policy   version {report['policy_version']['start']} -> {report['policy_version']['end']}  "
        f"({report['policy_version']['observations_end']:.0f} observations)  duration {report['duration_s']:.1f} s, "
        f"max schedule lag {report['max_schedule_lag_ms']:.1f} ms",
        f"generator {report['generator_cpu']['cores']:.2f} of a core  "
        f"({report['generator_cpu']['per_rank_request_ms']:.2f} ms per rank request, its rewards included)",
    ]
    return "\n".join(lines)

