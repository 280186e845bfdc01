"""What the libraries under recbandits may print: their errors only, unless ``-v`` / ``RECBANDITS_VERBOSE=1``.

Ray, RLlib and Tune log warnings meant for their own developers at every run ("You are running LinUCB on the
new API stack", RLlib's own ``RLModuleConfig`` deprecation, "Install gputil", trial set-up times). Every
recbandits process (the CLI, and each Ray worker through ``import recbandits.algos``) calls ``quiet_libraries``;
the environment variable reaches the workers a local Ray starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

VERBOSE_ENV = "RECBANDITS_VERBOSE"
# ray._common.deprecation: RLlib's own RLModule builds log a deprecation of RLModuleConfig.
# ray._private.authentication: the notice that Ray's token authentication is on (docs/serve.md says so).
LIBRARY_LOGGERS = ("ray.rllib", "ray.tune", "ray.train", "ray.data", "ray._common", "ray.serve",
                   "ray._private.authentication", "absl", "tensorflow", "h5py")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_libraries() -> None:
    """Raise the libraries' loggers to ERROR (a no-op in verbose mode)."""
    if verbose():
        return
    import ray  # noqa: F401 - first: importing ray applies Ray's logging config, which resets these levels
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def ray_init_options() -> dict:
    """``ray.init`` arguments: Ray's own start-up lines ("Started a local Ray instance", the token notice)
    only in verbose mode, and warnings and errors only from the Python loggers of Ray's workers (Serve's
    controller announces its settings at INFO before Serve's own logging config applies)."""
    if verbose():
        return {}
    import ray

    return {"logging_level": logging.ERROR, "logging_config": ray.LoggingConfig(log_level="WARNING")}


@contextlib.contextmanager
def native_stderr_silenced():
    """Discard what native code writes to file descriptor 2 inside the block (TensorFlow's absl and CUDA
    stub lines at import ignore ``TF_CPP_MIN_LOG_LEVEL``); a no-op in verbose mode. Python exceptions raised
    inside still propagate and print after the block."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


# Ray's core worker logs this at ERROR whenever RLlib creates an env runner with restarts: RLlib passes every
# runner its config by object reference (by design, and it holds the reference for the runners' lifetime), so
# the warning of ray-project/ray#53727 never applies to recbandits' runners.
RAY_ACTOR_ARGUMENTS_NOTICE = b"has constructor arguments in the object store and max_restarts > 0"
# Ray Serve's controller logs its settings at INFO at every start, before Serve applies its own log level
# ("Throughput optimized Ray Serve enabled with the following configurations:", then a bullet per setting).
SERVE_SETTINGS_NOTICE = (b"Throughput optimized Ray Serve enabled with the following configurations", b"\xe2\x80\xa2 ")
# Every native line a job leaves out of its output (the one table: simulate, serve).
KNOWN_NOTICES = (RAY_ACTOR_ARGUMENTS_NOTICE, *SERVE_SETTINGS_NOTICE)


@contextlib.contextmanager
def native_stderr_filtered(dropped: tuple[bytes, ...] = KNOWN_NOTICES):
    """Inside the block, the lines written to file descriptor 2 (by native code too) that contain one of
    ``dropped`` are left out; every other line passes through unchanged. A no-op in verbose mode.

    Never around code that starts processes (``ray.init``): a child would inherit the pipe as its stderr."""
    if verbose():
        yield
        return
    import threading

    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        pending = b""
        while chunk := os.read(read_end, 65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = [line + b"\n" for line in lines if not any(text in line for text in dropped)]
            if kept:
                os.write(saved, b"".join(kept))
        if pending and not any(text in pending for text in dropped):
            os.write(saved, pending)
        os.close(read_end)

    forwarder = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the forwarder reads to its end and stops
        forwarder.join(timeout=5.0)
        os.close(saved)
