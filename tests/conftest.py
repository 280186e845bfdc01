"""Shared pytest fixtures."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from recbandits.worker_env import set_worker_env

# Before anything imports ray.rllib: RLlib would otherwise import TensorFlow in graph mode with Keras 3,
# after which TF-Agents cannot run in this process (recbandits.worker_env).
set_worker_env()

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The real MovieLens 100K files: $RECBANDITS_ML100K, else <repo root>/../shared/data/ml-100k.

    MovieLens may not be redistributed, so the files are never in the repository; tests needing them skip
    when they are absent.
    """
    configured = os.environ.get("RECBANDITS_ML100K")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "ml-100k"
    if not (path / "u.data").is_file():
        pytest.skip(f"real MovieLens 100K not found at {path} (set RECBANDITS_ML100K to its directory)")
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, as on CI); shut down at the end."""
    import ray

    from recbandits.cluster import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory) -> Path:
    """A small synthetic ml-100k-format data set: fast to factorize, same code paths as the real one."""
    from recbandits.data import write_synthetic_movielens

    return write_synthetic_movielens(
        tmp_path_factory.mktemp("small-movielens"), num_users=300, num_items=200, num_ratings=9000, rank=6, seed=1
    )


# What a library's log line looks like (tests/test_output.py, tests/test_serve_api.py).
LIBRARY_LINE = re.compile("|".join([
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING|ERROR)",  # Ray's Python loggers
    r"^(DEBUG|INFO|WARNING|ERROR) \d{4}-\d\d-\d\d",  # Ray Serve's
    r"^\[\d{4}-\d\d-\d\d [\d:,]+ [IWEF] \d+ \d+\]",  # Ray's C++ (core worker, raylet)
    r"^[IWEF]\d{4} \d\d:\d\d:\d\d",  # absl / glog
    r"absl::InitializeLog|cudart_stub|oneDNN|Install gputil|new API stack|Not importing TensorFlow",
    r"\((raylet|\w+ pid=\d+)\)",  # lines of Ray workers forwarded to the driver
    r"\b\w*(Deprecation|User|Runtime|Future)Warning\b",
    r"^Traceback|^\*\*\* SIGTERM",
]))

def library_lines(text: str) -> list[str]:
    """The lines of a command's output that are a library's log lines, not recbandits' own."""
    return [line for line in text.splitlines() if LIBRARY_LINE.search(line)]


_session_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _session_exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Exit with the session's status once pytest has reported it, skipping the interpreter's teardown.

    With TensorFlow, torch and Ray's core worker loaded in one process, the native libraries' teardown at
    interpreter exit segfaulted once on CI after every test had passed (make reported exit 2); nothing of the
    session is left to run or write at this point.
    """
    import sys

    if not _session_exit_status or "tensorflow" not in sys.modules:
        return
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(_session_exit_status[0])


def linear_world_rewards(contexts, arms, rng, theta):
    """A linear world's rewards: x . theta[arm] + N(0, 0.1^2)."""
    import numpy as np

    return np.einsum("nd,nd->n", contexts, theta[arms]) + rng.normal(scale=0.1, size=len(arms))


def train_linear_checkpoint(out: Path, arm_ids, theta, sign: float = 1.0, rows: int = 3_000, seed: int = 0) -> Path:
    """A linucb checkpoint (``recbandits train``, in-process) at ``out``, trained on ``rows`` uniformly logged rows of
    the linear world ``theta`` ([arms, context dim]) with its rewards times ``sign``."""
    import numpy as np

    from recbandits.jobs.train import train
    from recbandits.logs.dataset import DatasetSpec, table_from_arrays, write_dataset

    rng = np.random.default_rng(seed)
    contexts = rng.normal(size=(rows, theta.shape[1]))
    arms = rng.integers(len(arm_ids), size=rows)
    table = table_from_arrays({
        "event_id": np.array([f"{out.name}{index}" for index in range(rows)]), "context": contexts,
        "candidates": np.array([list(arm_ids)] * rows), "action": np.array(arm_ids)[arms],
        "propensity": np.full(rows, 1.0 / len(arm_ids)),
        "reward": sign * linear_world_rewards(contexts, arms, rng, theta), "policy": "uniform"})
    data = out.parent / f"{out.name}-data"
    write_dataset(data, DatasetSpec(shape="disjoint", context_dim=theta.shape[1], arm_ids=list(arm_ids)), [table])
    train(data, "linucb", out, {"lambda_": 1.0}, use_ray=False)
    return out
