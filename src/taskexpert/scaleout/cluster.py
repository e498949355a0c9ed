"""Connect to Ray as `--ray` says, or fail with one clear line.

Why a check before `ray.init`: given an address nobody answers, Ray retries for minutes
(measured here: over 2 minutes, then the process was killed). A TCP connect with a timeout
answers in seconds and names the address.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Iterator

from taskexpert.errors import InputError, TaskexpertError

INSTALL_HINT = "pip install 'taskexpert[ray]'"
CONNECT_TIMEOUT_S = 5.0
LOCAL, AUTO = "local", "auto"


def import_ray():
    """Ray, or a one-line error saying how to get it (it is an optional dependency)."""
    try:
        import ray
    except ImportError:
        raise TaskexpertError(f"--ray needs the optional dependency Ray: {INSTALL_HINT}") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    bare = address.split("://", 1)[-1].rstrip("/")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(
            f"{address!r} is not 'local', 'auto', host:port or ray://host:port", field="ray"
        )
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """An address that does not accept a connection within `timeout` is an InputError."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise InputError(
            f"no Ray cluster answers at {address} within {timeout:g} s ({exc})", field="ray"
        ) from None


@contextlib.contextmanager
def ray_cluster(address: str, cpus_needed: float = 0, timeout: float = CONNECT_TIMEOUT_S
                ) -> Iterator:  # fmt: skip
    """Ray connected as asked; what this call started (a local cluster, a connection) is shut
    down after, a Ray already initialised in this process (a test's cluster) is left running.

    `local` starts a cluster with enough CPU slots for every actor (they share the cores when
    that is more than the machine has); `auto` joins the running one (or RAY_ADDRESS's).
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if address == LOCAL:
            cpus = max(os.cpu_count() or 1, math.ceil(cpus_needed))
            ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False)
        elif address == AUTO:
            target = os.environ.get("RAY_ADDRESS")
            if target and target != AUTO:
                check_reachable(target, timeout)
            ray.init(address=AUTO, configure_logging=False)
        else:
            check_reachable(address, timeout)
            ray.init(address=address, configure_logging=False)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise InputError(f"cannot connect to Ray at {address!r}: {exc}", field="ray") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def gpus_per_actor(ray, requested: float | None) -> float:
    """`requested`, or 1 when the cluster has GPUs and nothing was asked, else 0."""
    if requested is not None:
        return float(requested)
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def check_resources(ray, actors: int, cpus: float, gpus: float) -> None:
    """Actors asking for more than the cluster has would wait forever; fail instead."""
    available = ray.cluster_resources()
    for kind, each in (("CPU", cpus), ("GPU", gpus)):
        if each and actors * each > available.get(kind, 0):
            raise TaskexpertError(
                f"{actors} actors x {each:g} {kind} need {actors * each:g} {kind}s but the Ray "
                f"cluster has {available.get(kind, 0):g}; use fewer --ray-actors"
            )
