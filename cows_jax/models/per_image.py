"""`on_cpu`: run a batched network one image per device at a time on the CPU.

XLA's CPU backend runs each layer over the whole batch before the next, so at a batch of
several 256 px images every activation leaves the cache between layers. Scanning over the
batch keeps one image's activations in cache from layer to layer: the classifier's backbone
runs 1.2x (16 images at 256 px) to 1.4x (8 images at 512 px) faster per image, and no slower
at the synthetic config's 64 px (`cows-jax bench features`). GPUs and TPUs are built for the
batch and keep it (lax.platform_dependent). The math is the network's own, per image.
"""

from jax import lax


def on_cpu(fn, x, devices: int = 1):
  """fn(x) for a batch x [B, ...] whose images fn treats independently (inference: no batch
  statistics). On the CPU, `devices` images at a time (one per device of a batch sharded over
  `devices`, in the order of the shards; one at a time where B does not divide)."""

  def scanned(x):
    b = x.shape[0]  # may be symbolic (an export's batch): then devices is 1.
    groups = devices if devices > 1 and b % devices == 0 else 1
    # [B] -> [groups, B/groups] keeps each device's shard in its row; scan over the columns.
    steps = x.reshape(groups, b // groups, *x.shape[1:]).swapaxes(0, 1)
    out = lax.map(fn, steps)
    return out.swapaxes(0, 1).reshape(b, *out.shape[2:])

  return lax.platform_dependent(x, cpu=scanned, default=fn)
