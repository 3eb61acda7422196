"""Data parallelism over a 1-D device mesh with a 'data' axis (design.md).

Params are replicated, batches sharded on their leading axis; XLA all-reduces gradients
inside the jitted step. The same code runs on 1 device, N devices or several hosts.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def shard_batch(batch, mesh: Mesh):
  """Global arrays from this process's slice of the batch (one slice per host)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
  )


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def process_zero_first(fn, name: str):
  """fn() on process 0, then, after a barrier, on every other process: for work on storage
  the hosts may share, such as a dataset build, which fn then finds complete and reuses
  (hosts with their own disks each build after process 0). One process: just fn()."""
  out = fn() if is_writer() else None
  barrier(name)
  return out if is_writer() else fn()


# --- stages that map images to files: each process takes its share -------------------------


def process_share(n: int) -> list[int]:
  """The items of range(n) this process handles: every process_count()-th, from its index."""
  return list(range(jax.process_index(), n, jax.process_count()))


def is_writer() -> bool:
  """Whether this process writes the files every process would write alike (markers,
  reports): process 0."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Wait until every process gets here (one process: nothing to wait for)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'cows_jax: {name}')


def sum_over_processes(x: np.ndarray) -> np.ndarray:
  """The sum of each process's `x` (e.g. confusion matrices), on every process."""
  if jax.process_count() == 1:
    return x
  return np.asarray(multihost_utils.process_allgather(x)).sum(0).astype(x.dtype)


def local_mesh() -> Mesh:
  """A 1-D 'data' mesh over this process's devices, for work that needs no other process."""
  return data_mesh(jax.local_devices())


def to_local_devices(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """A batch sharded over the local mesh when it divides, else replicated on it."""
  spec = P('data') if x.shape[0] % mesh.devices.size == 0 else P()
  return jax.device_put(x, NamedSharding(mesh, spec))
