"""Run a service as a subprocess with its own local Ray, and kill all of it: for tests and the benchmark.

    service = ServiceProcess(["--state-dir", str(tmp), "--port", str(port), ...])
    ready = service.start()           # the ready line: url, replica_urls, policy_version, ...
    service.kill()                    # SIGKILL every process of its session (driver, Ray, replicas)

The service runs ``python -m recbandits.serve`` in a new session (``start_new_session``): Ray's GCS, raylet
and workers inherit that session, so ``kill`` finds all of them by session id and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from recbandits.serve.runner import running


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port_block(count: int, low: int = 20000, high: int = 29000, seed: int | None = None) -> int:
    """The first of ``count`` consecutive free TCP ports (random start in [low, high))."""
    import random

    generator = random.Random(seed if seed is not None else os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        base = generator.randrange(low, high - count)
        if all(_port_free(base + offset) for offset in range(count)):
            return base
    raise RuntimeError(f"no block of {count} free ports in [{low}, {high})")


def session_pids(session: int) -> list[int]:
    """The processes of a session."""
    pids = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == session:
                pids.append(pid)
        except OSError:  # a process that ended while we looked
            continue
    return pids


class ServiceProcess:
    """``python -m recbandits.serve ARGS`` (or ``python COMMAND... ARGS``: any program that prints the same ready
    line) in its own session; its stdout/stderr go to ``log_path``."""

    def __init__(self, args: Sequence[str], log_path: str | Path | None = None, env: dict[str, str] | None = None,
                 command: Sequence[str] = ("-m", "recbandits.serve")):
        self.command = [str(part) for part in command]
        self.args = [str(arg) for arg in args]
        self.log_path = Path(log_path) if log_path else None
        self.env = {**os.environ, **(env or {})}
        self.env.pop("RAY_ADDRESS", None)  # always a local Ray of its own
        self.process: subprocess.Popen | None = None
        self.ready: dict[str, Any] | None = None
        self.admin_token: str | None = None
        self._stdout_lines: list[str] = []

    def start(self, timeout_s: float = 180.0) -> dict[str, Any]:
        stderr = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, *self.command, *self.args], stdout=subprocess.PIPE, stderr=stderr,
            env=self.env, start_new_session=True, text=True,
        )
        found = threading.Event()

        def read() -> None:
            for line in self.process.stdout:
                self._stdout_lines.append(line)
                if line.startswith("{") and '"ready"' in line and self.ready is None:
                    self.ready = json.loads(line)
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not found.wait(0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                tail = self.log_tail()
                raise RuntimeError(f"the service did not start (exit {self.process.returncode}):\n{tail}")
        self.admin_token = Path(self.ready["admin_token_file"]).read_text().strip()
        return self.ready

    @property
    def stdout(self) -> str:
        """Everything the service printed on stdout so far."""
        return "".join(self._stdout_lines)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path and self.log_path.exists():
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "".join(self._stdout_lines[-lines:])

    def kill(self, timeout_s: float = 20.0) -> None:
        """SIGKILL the whole service (every process of its session) and wait until they are gone."""
        if self.process is None:
            return
        session = self.process.pid
        deadline = time.monotonic() + timeout_s
        while True:
            pids = session_pids(session)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.poll()
            if not pids or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def terminate(self, timeout_s: float = 30.0) -> list[int]:
        """SIGTERM (graceful: final snapshot); wait for the service to exit; return its processes still running."""
        if self.process is None:
            return []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        return [pid for pid in session_pids(self.process.pid) if running(pid)]

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (graceful: final snapshot), then kill whatever is left."""
        self.terminate(timeout_s)
        self.kill()


def http_json(method: str, url: str, body: Any = None, raw: str | None = None, timeout: float = 30.0,
              token: str | None = None, headers: dict[str, str] | None = None):
    """(status, parsed JSON body) of an HTTP request; HTTP errors are returned, not raised.

    ``token``: the admin API's bearer token; ``headers`` replace the default ones (JSON content type)."""
    import urllib.error
    import urllib.request

    data = raw.encode() if raw is not None else (None if body is None else json.dumps(body).encode())
    if headers is None:
        headers = {"content-type": "application/json"} if data is not None else {}
    if token is not None:
        headers = {**headers, "authorization": f"Bearer {token}"}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            payload, status = response.read(), response.status
    except urllib.error.HTTPError as error:
        payload, status = error.read(), error.code
    try:
        return status, json.loads(payload) if payload else None
    except json.JSONDecodeError:
        return status, payload.decode(errors="replace")


def wait_for_log_rows(state_dir: str | Path, kind: str, event_ids, timeout_s: float = 10.0):
    """The event log once it has a ``kind`` row for each of ``event_ids`` (rows are written asynchronously)."""
    from recbandits.serve.eventlog import read_event_log

    wanted = set(event_ids)
    deadline = time.monotonic() + timeout_s
    while True:
        frame = read_event_log(state_dir)
        rows = frame[frame["kind"] == kind] if len(frame) else frame
        if wanted <= set(rows.get("event_id", [])) or time.monotonic() > deadline:
            return frame
        time.sleep(0.1)
