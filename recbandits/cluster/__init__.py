"""Running recbandits jobs on Ray: a local Ray by default, or an existing cluster given by ``--address``.

``connect(address)`` accepts what ``ray.init`` accepts: ``None`` (start a local Ray), ``"auto"`` (the cluster
this machine belongs to), ``"host:port"`` (a cluster's GCS) or ``"ray://host:port"`` (Ray Client).
"""

from __future__ import annotations

import ray

from recbandits.verbosity import ray_init_options
from recbandits.worker_env import WORKER_ENV_VARS, set_worker_env


def bind_local_ray_to_loopback() -> None:
    """Make a local Ray listen on 127.0.0.1 only (call before ``ray.init`` starts one).

    A local Ray takes the node's address from the default route and its servers (GCS, raylet, object manager,
    workers, agents, metrics export) listen on every interface. Ray's single-machine mode
    (``ray_constants.ENABLE_RAY_CLUSTER`` false, what ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` sets) uses
    127.0.0.1 as the node address instead, so they bind the loopback. A machine that should serve other hosts
    runs ``ray start`` and passes ``--address``. Ray Serve's replicas still open their gRPC port on every
    interface (hard-coded in Ray 2.60; protected by Ray's token authentication): docs/serve.md.
    """
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def connect(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = True,
            env_vars: dict[str, str] | None = None, namespace: str | None = None,
            metrics_export_port: int | None = None, object_store_memory: int | None = None) -> dict:
    """Connect to (or start) Ray once per process; return ``ray.init``'s context as a dict.

    Every worker gets ``WORKER_ENV_VARS`` and ``env_vars``; ``quiet`` keeps the workers' output from the driver;
    ``metrics_export_port`` is a local Ray's Prometheus port (the service's ``--metrics-port``);
    ``object_store_memory`` (bytes) caps a local Ray's object store.
    """
    set_worker_env()
    if ray.is_initialized():
        return {"address": ray.get_runtime_context().gcs_address}
    kwargs: dict = {"runtime_env": {"env_vars": {**WORKER_ENV_VARS, **(env_vars or {})}}, "log_to_driver": not quiet,
                    **ray_init_options()}
    if namespace:
        kwargs["namespace"] = namespace
    if address:
        kwargs["address"] = address
    else:
        # "local": always a new Ray of our own, even when a `ray start` cluster runs on this machine.
        kwargs.update(address="local", num_cpus=num_cpus, include_dashboard=False)
        if metrics_export_port:
            kwargs["_metrics_export_port"] = metrics_export_port
        if object_store_memory:
            kwargs["object_store_memory"] = object_store_memory
        bind_local_ray_to_loopback()
    try:
        context = ray.init(**kwargs)
    except ConnectionError as error:
        raise ConnectionError(
            f"cannot reach a Ray cluster at --address {address!r}: {error}. Start one with `ray start --head` "
            "or leave out --address to run on a local Ray"
        ) from None
    return {"address": context.address_info.get("gcs_address") if hasattr(context, "address_info") else address}
