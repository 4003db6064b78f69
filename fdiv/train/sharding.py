"""Device mesh and data placement for data-parallel training.

One `jax.sharding.Mesh` over all devices (of all processes) with a single ``'data'`` axis
(DESIGN.md, "Sharding"): batches are split along their leading (batch) axis, parameters and
optimiser states are replicated. Under `jax.jit` the compiler inserts the cross-device
reductions, so a mean over the batch inside a jitted step is the *global* mean over all
devices, and a training step gives the same numbers on 1 or N devices (up to float
reassociation; `tests/test_train.py` checks this with 8 simulated CPU devices).

Typical use::

    from fdiv.train import sharding
    sharding.maybe_initialize_distributed()     # no-op on one host
    mesh = sharding.make_mesh()
    state = sharding.replicate(state, mesh)     # params, optimiser states, rng
    batch = sharding.shard_batch(host_batch, mesh)

Multi-host: `maybe_initialize_distributed` calls `jax.distributed.initialize()` only when the
environment describes a multi-process job (see its docstring); each process then passes its
*own* slice of the global batch to `shard_batch` (`fdiv.data.ArrayBatcher` does this), and
`replicate` turns each process's copy of the (identical) initial state into global arrays.
`tests/test_multihost.py` runs two processes on one machine this way.

References:
  JAX documentation, "Distributed arrays and automatic parallelization" and "Multi-process
  environments" (`jax.distributed.initialize`, `jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from fdiv.data.batchers import shard_batch as _data_shard_batch

DATA_AXIS = "data"

# Environment variables whose presence means "this process is one of several"; each maps to
# a predicate on its value. Kept as data so the decision is easy to audit and test.
_MULTI_PROCESS_ENV = {
    # Explicit JAX coordinator, with JAX_NUM_PROCESSES / JAX_PROCESS_ID on plain hosts.
    "JAX_COORDINATOR_ADDRESS": lambda v: bool(v),
    "JAX_NUM_PROCESSES": lambda v: v.isdigit() and int(v) > 1,
    # SLURM launches one task per process; a single task is an ordinary local run.
    "SLURM_NTASKS": lambda v: v.isdigit() and int(v) > 1,
    # Open MPI / mpirun.
    "OMPI_COMM_WORLD_SIZE": lambda v: v.isdigit() and int(v) > 1,
    # Cloud TPU pod slices list every worker host, comma separated.
    "TPU_WORKER_HOSTNAMES": lambda v: "," in v,
    "MEGASCALE_COORDINATOR_ADDRESS": lambda v: bool(v),
}


def is_multi_process_env(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment describes a multi-process (multi-host) JAX job.

    Args:
      environ: mapping to inspect; defaults to `os.environ`.

    Returns:
      True when any of ``JAX_COORDINATOR_ADDRESS``, ``MEGASCALE_COORDINATOR_ADDRESS`` is set,
      ``SLURM_NTASKS`` or ``OMPI_COMM_WORLD_SIZE`` is greater than one, or
      ``TPU_WORKER_HOSTNAMES`` lists more than one host.
    """
    environ = os.environ if environ is None else environ
    return any(pred(environ[k]) for k, pred in _MULTI_PROCESS_ENV.items() if k in environ)


def maybe_initialize_distributed(environ: dict[str, str] | None = None) -> bool:
    """Calls `jax.distributed.initialize()` when, and only when, the job is multi-process.

    Safe to call more than once (a second call is a no-op). Must run before anything touches
    the devices (before `jax.devices()`, before creating arrays).

    Args:
      environ: mapping to inspect; defaults to `os.environ`.

    Returns:
      True when the distributed runtime is initialised after the call.
    """
    if jax.distributed.is_initialized():
        return True
    environ = os.environ if environ is None else environ
    if not is_multi_process_env(environ):
        return False
    try:
        jax.distributed.initialize(**distributed_arguments(environ))
    except RuntimeError as e:
        raise RuntimeError(
            "the environment describes a multi-process job, but jax.distributed.initialize "
            f"failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}); call "
            "fdiv.train.sharding.maybe_initialize_distributed() before anything uses the "
            "devices."
        ) from e
    return True


def distributed_arguments(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for `jax.distributed.initialize` read from ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (hosts without a cluster manager); what is
    unset is left to JAX's own detection (SLURM, Open MPI, Cloud TPU)."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        out["coordinator_address"] = environ["JAX_COORDINATOR_ADDRESS"]
    for key, name in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        value = environ.get(key, "")
        if value:
            if not value.isdigit():
                raise ValueError(
                    f"environment variable {key}={value!r} must be a non-negative integer."
                )
            out[name] = int(value)
    return out


def make_mesh(devices: Any = None) -> Mesh:
    """A one-dimensional mesh with axis ``'data'`` over `devices`, built by `jax.make_mesh`
    (device order suited to the interconnect).

    With ``devices=None`` the mesh spans all devices of all processes; when the environment
    describes a multi-process job, `maybe_initialize_distributed` is called first (a no-op
    otherwise, and when the job is already initialised), so an experiment started on every
    host of a job forms one mesh.
    """
    if devices is None:
        maybe_initialize_distributed()
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), (AxisType.Auto,), devices=devices)


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy of an array on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits an array's leading axis over the ``'data'`` axis of `mesh`."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def _global_replicated(x: Any, sharding: NamedSharding) -> jax.Array:
    """A global array of this process's value `x` on every device of a multi-process mesh."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x if x.sharding == sharding else jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _global_replicated(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every array leaf of `tree` replicated on all devices of `mesh`.

    Typed PRNG keys and integer/float leaves alike; non-array static parts of the pytree
    (graph definitions, optimiser functions) are untouched. In a multi-process run each
    process passes its own copy of the same values (e.g. created from the same seed); the
    result is a global array whose shards on this process's devices hold that copy.
    """
    sharding = replicated_sharding(mesh)
    if all(d.process_index == jax.process_index() for d in mesh.devices.flat):
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: _global_replicated(x, sharding), tree)


# Batches are placed by the data pipeline's own function (fdiv.data must not import fdiv.train);
# it is re-exported here so training code finds every placement helper in one module.
shard_batch = _data_shard_batch
