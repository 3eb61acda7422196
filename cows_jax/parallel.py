"""Data parallelism over a 1-D device mesh with a 'data' axis (design.md).

Params are replicated, batches sharded on their leading axis; XLA all-reduces gradients
inside the jitted step. The same code runs on 1 device, N devices or several hosts.
"""

import itertools
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cows_jax import coordination, preemption

BARRIER_POLL_SECONDS = 0.05
_BARRIERS = itertools.count()


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
  """Replicated global arrays from host-local values that every process holds alike (the same
  weights file, checkpoint or seed): each process puts its copy on its own devices, so no
  array crosses hosts (backends without cross-host transfers refuse `jax.device_put` of a
  one-device array onto another host's devices)."""
  sharding = replicated(mesh)

  def put(x):
    local = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(local.shape, sharding, lambda index: local[index])

  return jax.tree.map(put, tree)


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
  """Wait until every process gets here (one process: nothing to wait for). Waiting in the
  coordination service's store, not in a device collective: a stop request seen meanwhile
  raises preemption.Preempted, so no process waits for one that stopped."""
  if jax.process_count() == 1:
    return
  key = f'cows_jax/barrier/{next(_BARRIERS)}'  # every process passes its barriers in one order.
  coordination.set_value(f'{key}/{jax.process_index()}', name)
  while True:
    arrived = coordination.values_under(key)
    if len(arrived) == jax.process_count():
      if len(set(arrived.values())) > 1:
        raise RuntimeError(f'processes met at different barriers: {sorted(set(arrived.values()))}')
      return
    preemption.check(name)
    time.sleep(BARRIER_POLL_SECONDS)


def sum_over_processes(x: np.ndarray) -> np.ndarray:
  """The sum of each process's `x` (e.g. confusion matrices), on every process."""
  if jax.process_count() == 1:
    return x
  barrier('sum over processes')  # all here: none stops between this and the collective.
  return np.asarray(multihost_utils.process_allgather(x)).sum(0).astype(x.dtype)


def local_mesh() -> Mesh:
  """A 1-D 'data' mesh over this process's devices, for work that needs no other process."""
  return data_mesh(jax.local_devices())


def to_local_devices(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """A batch sharded over the local mesh when it divides, else replicated on it."""
  spec = P('data') if x.shape[0] % mesh.devices.size == 0 else P()
  return jax.device_put(x, NamedSharding(mesh, spec))
