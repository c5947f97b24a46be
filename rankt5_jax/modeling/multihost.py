"""Multi-process JAX: joining the processes of one job, and moving results between them.

JAX's multi-controller SPMD runs one process per host (TPU VM workers, GPU nodes) or per GPU;
every process runs the same program over a global mesh of all processes' devices and feeds its
own devices. `initialize` joins the processes (`jax.distributed.initialize`) and must run before
anything touches a JAX device. Given no arguments, JAX finds the job's processes itself (Cloud
TPU VMs, SLURM, Open MPI); elsewhere `coordinator_address` (process 0's `host:port`),
`num_processes` and `process_id` name them. On CPU the processes' collectives go over gloo
(TCP), JAX's default CPU collectives, so several processes on one machine form one job.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import jax
import numpy as np

from rankt5_jax.errors import ConfigError

FLAGS_HELP = (
    "--coordinator_address HOST:PORT (process 0's address), --num_processes N and "
    "--process_id I name the processes; leave all three out where JAX detects them "
    "(Cloud TPU VMs, SLURM, Open MPI)"
)


def check_flags(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """One-line errors for process flags that cannot work: all three or none."""
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ConfigError(f"multi-process flags go together: {FLAGS_HELP}")
    if not any(given):
        return
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--coordinator_address {coordinator_address!r}: expected HOST:PORT, e.g. 10.0.0.1:8476"
        )
    if num_processes < 1:
        raise ConfigError(f"--num_processes {num_processes}: must be at least 1")
    if not 0 <= process_id < num_processes:
        raise ConfigError(
            f"--process_id {process_id}: must be in 0..{num_processes - 1} (--num_processes "
            f"{num_processes})"
        )


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
) -> None:
    """Joins this process to the job (`jax.distributed.initialize`), before any JAX device use.

    A second call with the same processes is a no-op (a library call inside a process that
    already joined). A coordinator on a loopback address (one machine) listens on loopback only.
    """
    check_flags(coordinator_address, num_processes, process_id)
    if jax.distributed.is_initialized():
        if num_processes is not None and (
            jax.process_count() != num_processes or jax.process_index() != process_id
        ):
            raise ConfigError(
                f"this process already joined a job as process {jax.process_index()} of "
                f"{jax.process_count()}, not {process_id} of {num_processes}"
            )
        return
    kwargs: dict[str, Any] = {"initialization_timeout": int(timeout_s)}
    if coordinator_address is not None:
        kwargs.update(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
        if _is_loopback(coordinator_address.rpartition(":")[0]):
            kwargs["coordinator_bind_address"] = coordinator_address
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as err:
        where = (
            f"process {process_id} of {num_processes} at {coordinator_address}"
            if coordinator_address is not None
            else "auto-detected processes"
        )
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        hint = "" if coordinator_address is not None else f" ({FLAGS_HELP})"
        raise ConfigError(f"jax.distributed.initialize ({where}) failed: {first}{hint}") from err


def to_host(tree: Any) -> Any:
    """A pytree of arrays as numpy on every process, whether or not the arrays span processes
    (gathering needs every process to call it, as any collective)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if all(getattr(leaf, "is_fully_addressable", True) for leaf in leaves):
        return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils

    return jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def allgather_rows(values: np.ndarray) -> np.ndarray:
    """Every process's 1-D `values` (lengths may differ) -> their concatenation in process
    order, on every process. They travel as JAX arrays: float64 arrives as float32 (JAX's
    default precision), so gather float32 values (scores are)."""
    values = np.asarray(values)
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    lengths = multihost_utils.process_allgather(np.asarray([values.shape[0]], np.int64))
    lengths = np.asarray(lengths).reshape(-1)
    padded = np.zeros((int(lengths.max()),) + values.shape[1:], values.dtype)
    padded[: values.shape[0]] = values
    stacked = np.asarray(multihost_utils.process_allgather(padded))
    return np.concatenate([stacked[i, :n] for i, n in enumerate(lengths)])


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (no-op in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
