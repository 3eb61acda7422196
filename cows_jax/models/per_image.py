"""`on_cpu`: run a batched network one image per device at a time on the CPU, for large images.

XLA's CPU backend runs each layer over the whole batch before the next, so at a batch of
several 256 px images every activation leaves the cache between layers. Scanning over the
batch keeps one image's activations in cache from layer to layer. Small images fit in the
cache as a batch, and there the scan's per-step cost loses. `cows-jax bench features --batch
16 --size S [--width W]` (the classifier's backbone), whole batch / one at a time:

  S = 512: 1.40x (batch 8) | 256: 1.33x, 1.42x at width 0.25 | 192: 0.97x | 160: 0.84x
  128: 0.99x, 0.94x at width 0.5, 0.93x at width 0.125 | 64: 0.35x, 0.85x at width 0.125

hence the scan from MIN_PIXELS up. GPUs and TPUs are built for the batch and keep it
(lax.platform_dependent). The math is the network's own, per image.
"""

from jax import export as jax_export
from jax import lax

MIN_PIXELS = 256 * 256  # images per step from this size up (the table above).


def scans(height, width) -> bool:
  """Whether images of this size are scanned on the CPU. A symbolic size (an export's
  windows, 401 px in the paper's test time) is."""
  if jax_export.is_symbolic_dim(height) or jax_export.is_symbolic_dim(width):
    return True
  return height * width >= MIN_PIXELS


def on_cpu(fn, x, devices: int = 1):
  """fn(x) for a batch x [B, H, W, C] whose images fn treats independently (inference: no
  batch statistics). On the CPU and for images of MIN_PIXELS or more, `devices` images at a
  time (one per device of a batch sharded over `devices`, in the order of the shards; one at a
  time where B does not divide)."""
  if not scans(*x.shape[1:3]):
    return fn(x)

  def scanned(x):
    b = x.shape[0]  # may be symbolic (an export's batch): then devices is 1.
    groups = devices if devices > 1 and b % devices == 0 else 1
    # [B] -> [groups, B/groups] keeps each device's shard in its row; scan over the columns.
    steps = x.reshape(groups, b // groups, *x.shape[1:]).swapaxes(0, 1)
    out = lax.map(fn, steps)
    return out.swapaxes(0, 1).reshape(b, *out.shape[2:])

  return lax.platform_dependent(x, cpu=scanned, default=fn)
