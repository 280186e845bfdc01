"""Start a service: Ray (local, or a cluster), Ray Serve's HTTP proxy, the application; then wait.

``python -m recbandits.serve --state-dir DIR --port 8000 ...`` (or ``recbandits serve``) runs ``run_service``:
it prepares the state dir (first start: ``service.json`` and the initial policy), starts Ray Serve with the
fast path switched on through Ray Serve's environment variables (they must be set before Ray starts), deploys
``service_app(config)``, prints one JSON line ``{"ready": true, "url": ..., "replica_urls": [...], ...}`` on
stdout, and serves until SIGINT/SIGTERM (then shuts Serve down gracefully: a final snapshot is written).
A SIGKILL loses nothing acknowledged: the next start on the same state dir restores and replays.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from recbandits.serve.config import ServeConfig

APP_NAME = "recbandits"


def serve_environment(config: ServeConfig) -> dict[str, str]:
    """Environment of the Ray processes: quiet RLlib imports, and Ray Serve's throughput-optimized fast path."""
    from recbandits.serve import limits
    from recbandits.worker_env import WORKER_ENV_VARS

    env = dict(WORKER_ENV_VARS)
    # Ray starts workers at niceness 15 (background work); a serving replica must not yield to everything else.
    env["RAY_worker_niceness"] = "0"
    # Scoring and updates are small matrix products: one thread each (thread pools spin and contend on few cores).
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    # Ray's dashboard agent samples every worker's CPU and memory every 5 s, a burst of CPU that showed up as
    # 100-250 ms bursts of rank latency on 2 cores; once a minute is enough for those node graphs. Ray Serve's
    # request metrics are not affected. An explicit setting wins.
    env["REPORTER_UPDATE_INTERVAL_MS"] = os.environ.get("REPORTER_UPDATE_INTERVAL_MS", "60000")
    # Every Ray process exports its metrics to the dashboard agent each metrics_report_interval_ms (Ray: 10 s).
    # The agent's work per export grows with the requests since the last one (idle_ray_agent below), and each
    # export put ~150-250 rank requests over 50 ms on 2 cores: every 10 s with Ray's default, once a minute
    # with ours. Ray Serve's metrics stay, exported every metrics_interval_s.
    env["RAY_metrics_report_interval_ms"] = str(int(config.metrics_interval_s * 1000))
    # The HTTP limits (in-flight, connections, body size, header timeout: serve/limits.py) in every process that
    # serves HTTP; the proxy's in-flight limit covers every replica behind it.
    env.update({
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "recbandits.serve.limits.http_middlewares",
        limits.MAX_BODY_ENV: str(config.effective_max_body_bytes),
        limits.HEADER_TIMEOUT_ENV: str(config.header_timeout_s),
        limits.MAX_CONNECTIONS_ENV: str(config.max_connections),
        limits.RETRY_AFTER_ENV: str(config.retry_after_s),
        limits.LATENCY_TARGET_ENV: str(config.latency_target_s),
        limits.MAX_IN_FLIGHT_ENV: str(config.max_ongoing_requests + config.max_queued_requests),
        limits.MAX_IN_FLIGHT_PROXY_ENV: str((config.max_ongoing_requests + config.max_queued_requests)
                                            * config.num_replicas),
    })
    if config.fast_path:
        first = config.effective_replica_port
        env.update({
            # Ray Serve's throughput-optimized mode: each ingress replica serves HTTP on its own port (direct
            # ingress), handles use gRPC, user code and router share the replica's event loop.
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(first),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(first + config.num_replicas + 8),
            "RAY_SERVE_PORT_QUARANTINE_S": "0",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
        })
    else:
        env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"
    return env


def _get(url: str, timeout: float = 1.0, token: str | None = None) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            return json.loads(response.read())
    except Exception:  # noqa: BLE001
        return None


def replica_urls(config: ServeConfig, timeout_s: float = 30.0) -> list[str]:
    """The fast-path URLs of the ingress replicas (probed in the replica port range)."""
    if not config.fast_path:
        return []
    first = config.effective_replica_port
    deadline = time.monotonic() + timeout_s
    found: dict[str, str] = {}
    while time.monotonic() < deadline:
        for port in range(first, first + config.num_replicas + 8):
            url = f"http://{config.host}:{port}"
            health = _get(f"{url}/healthz", timeout=0.5)
            if health and health.get("status") in ("ready", "degraded"):
                found[health["replica"]] = url
        if len(found) >= config.num_replicas:
            break
        time.sleep(0.5)
    return sorted(found.values())




def start_ray_serve(config: ServeConfig, address: str | None = None,
                    output: contextlib.ExitStack | None = None) -> None:
    """Ray (local, or the cluster at ``address``) and Ray Serve's HTTP options, with ``serve_environment``.

    ``output``: where the filter of Ray Serve's settings notice is entered once Ray runs (its processes must
    not inherit the filter's pipe); closing it ends the filter."""
    import ray
    from ray import serve

    from recbandits.cluster import connect
    from recbandits.verbosity import quiet_libraries

    quiet_libraries()  # after Ray Serve's import, which sets up its driver-side logger
    env = serve_environment(config)
    os.environ.update(env)  # a local Ray inherits them (Ray Serve reads its flags at import, in each process)
    if not ray.is_initialized():
        stop_handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        connect(address, quiet=False, env_vars=env, namespace="recbandits", metrics_export_port=config.metrics_port)
        # ray.init installs Ray's C++ failure handler for SIGTERM (a stack dump, then death): a stop signal
        # during the rest of the start-up must reach the service's own handler.
        if threading.current_thread() is threading.main_thread():
            for signum, handler in stop_handlers.items():
                signal.signal(signum, handler)
    if output is not None:
        from recbandits.verbosity import native_stderr_filtered

        output.enter_context(native_stderr_filtered())
    serve.start(
        http_options={"host": config.host, "port": config.port, "keep_alive_timeout_s": config.keep_alive_timeout_s},
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )


def process_argv(pid: int) -> list[str]:
    """A process's command line as argv ([] once it has ended)."""
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds no ports; its parent reaps it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(root: int) -> dict[int, list[str]]:
    """{pid: argv} of every process below ``root``."""
    found = {}
    for child in psutil.Process(root).children(recursive=True):
        if argv := process_argv(child.pid):  # [] if it ended meanwhile
            found[child.pid] = argv
    return found


def _is_dashboard_agent(argv: list[str]) -> bool:
    """The agent renames itself ``ray::DashboardAgent``; before that it is ``python -u .../dashboard/agent.py``.
    (The raylet's own command line names agent.py too, as an argument: argv[0] decides.)"""
    if argv[0].startswith("ray::DashboardAgent"):
        return True
    return Path(argv[0]).name.startswith("python") and any(arg.endswith("dashboard/agent.py") for arg in argv[1:3])


def idle_ray_agent() -> dict[str, Any] | None:
    """Put every thread of the local Ray's dashboard agent in SCHED_IDLE; return its pid and thread count.

    Ray 2.60's agent rebuilds each exported histogram by replaying every observation in Python (one record()
    per request and histogram): at 400 requests/s a burst of 2-3 s of a full core once per metric export,
    which on 2 cores put hundreds of rank requests over 50 ms. SCHED_IDLE gives it only the CPU nothing else
    wants (new threads inherit the policy); measured, it cuts those slow requests but does not remove them
    (docs/BENCHMARKS.md). The agent is a child of the raylet this process started.
    """
    if not hasattr(os, "sched_setscheduler"):
        return None
    agents = [pid for pid, argv in _descendants(os.getpid()).items() if _is_dashboard_agent(argv)]
    if not agents:
        return None
    threads = 0
    for pid in agents:
        try:
            tasks = [thread.id for thread in psutil.Process(pid).threads()]
        except psutil.Error:  # the agent ended meanwhile
            continue
        for task in tasks:
            try:
                os.sched_setscheduler(task, os.SCHED_IDLE, os.sched_param(0))
                threads += 1
            except OSError:  # a thread that ended meanwhile
                continue
    return {"pids": agents, "threads": threads}


def deployment_failure(app_name: str = APP_NAME) -> str | None:
    """The last line of the error that stopped an application's deployments (Ray Serve keeps the replica's
    traceback in the deployment's status message), or None."""
    from ray import serve

    try:
        application = serve.status().applications.get(app_name)
    except Exception:  # noqa: BLE001 - the controller itself is gone: nothing more to say
        return None
    if application is None:
        return None
    for name, deployment in application.deployments.items():
        lines = [line.strip() for line in (deployment.message or "").splitlines() if line.strip()]
        if lines and str(deployment.status).endswith(("UNHEALTHY", "DEPLOY_FAILED")):
            return f"{name}: {lines[-1]}"
    return None


def start_service(config: ServeConfig, address: str | None = None, explicit: set[str] | None = None,
                  repair_log: bool = False, output: contextlib.ExitStack | None = None) -> dict[str, Any]:
    """Check and prepare the state dir, start Ray and Serve, deploy; return what ``run_service`` prints.

    The state dir is checked here, before Ray starts (``state.check_state_dir``: one line naming the file);
    should a replica still fail to start, the error names the replica's own exception.
    """
    from ray import serve

    from recbandits.serve.app import service_app
    from recbandits.serve.state import admin_token_path, check_state_dir, prepare_state_dir, read_admin_token

    started = time.perf_counter()
    for note in check_state_dir(config, repair_log=repair_log):
        print(note, file=sys.stderr, flush=True)
    config = prepare_state_dir(config, explicit)
    start_ray_serve(config, address, output)
    try:
        serve.run(service_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    except RuntimeError as error:
        cause = deployment_failure()
        raise RuntimeError(f"the service did not start: {cause}" if cause else str(error).splitlines()[0]) from None
    idle_agent = idle_ray_agent() if config.idle_ray_agent and not address else None
    url = f"http://{config.host}:{config.port}"
    urls = replica_urls(config)
    health = _get(f"{(urls or [url])[0]}/v1/policy", timeout=10.0, token=read_admin_token(config)) or {}
    return {
        "ready": True,
        "url": url,
        "replica_urls": urls,
        "metrics_port": config.metrics_port,
        "idle_ray_agent": idle_agent,
        "state_dir": str(config.state_path.resolve()),
        "admin_token_file": str(admin_token_path(config)),
        "learning": config.learning,
        "policy_version": health.get("policy_version"),
        "restore": health.get("restore"),
        "startup_s": round(time.perf_counter() - started, 2),
    }


def run_service(config: ServeConfig, address: str | None = None, explicit: set[str] | None = None,
                repair_log: bool = False) -> None:
    """Start the service, print the ready line, serve until SIGINT/SIGTERM."""
    import ray
    from ray import serve

    stop = threading.Event()

    def handle_stop_signals() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())

    handle_stop_signals()
    output = contextlib.ExitStack()  # the stderr filter, from Ray's start to the end of the stop
    try:
        ready = start_service(config, address, explicit, repair_log=repair_log, output=output)
    except BaseException:
        if ray.is_initialized():
            ray.shutdown()
        output.close()
        raise
    # ray.init installs Ray's C++ failure signal handler for SIGTERM, which dumps stack traces and makes the
    # graceful shutdown below end in SIGABRT (no final snapshot): a stop signal is ours to handle.
    handle_stop_signals()
    print(json.dumps(ready), flush=True)
    endpoints = EndpointsFile(config, ready)
    try:
        while not stop.wait(ENDPOINTS_INTERVAL_S):
            endpoints.refresh()
    finally:
        print(json.dumps({"stopping": True}), file=sys.stderr, flush=True)
        ray_processes = list(_descendants(os.getpid())) if not address else []
        try:
            serve.delete(APP_NAME)  # graceful: replicas close the core (final snapshot)
            if address:  # a cluster's Serve controller outlives us unless shut down; a local Ray goes with us
                serve.shutdown()
        finally:
            ray.shutdown()
            _end_processes(ray_processes)
            output.close()


ENDPOINTS_FILE = "endpoints.json"
ENDPOINTS_INTERVAL_S = 5.0


class EndpointsFile:
    """``<state_dir>/endpoints.json``: the proxy's URL and the replicas' current fast-path URLs, rewritten when a
    replica is replaced (it may come back on another port of the range)."""

    def __init__(self, config: ServeConfig, ready: dict[str, Any]):
        self.config = config
        self.path = Path(ready["state_dir"]) / ENDPOINTS_FILE
        self.url = ready["url"]
        self.current: list[str] | None = None
        self.write(ready["replica_urls"])

    def write(self, urls: list[str]) -> None:
        from recbandits.serve.store import write_json_atomic

        write_json_atomic(self.path, {"url": self.url, "replica_urls": urls, "updated_at": time.time()})
        self.current = urls

    def refresh(self) -> None:
        if not self.config.fast_path:
            return
        urls = replica_urls(self.config, timeout_s=2.0)
        if urls != self.current:
            print(json.dumps({"replica_urls": urls}), file=sys.stderr, flush=True)
            try:
                self.write(urls)
            except OSError as error:  # a full disk must not end the service: the next refresh tries again
                print(f"{self.path} not rewritten: {error}", file=sys.stderr, flush=True)


def _end_processes(pids: list[int], wait_s: float = 3.0) -> None:
    """Wait for processes to end, then SIGKILL the rest: Ray's raylet starts its dashboard and runtime-env agents
    itself, and after a shutdown they wait ~60 s on the stopped GCS before exiting, holding their ports."""
    deadline = time.monotonic() + wait_s
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if running(pid)]
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
