"""Random weights in a model's shapes, drawn with numpy, for tests and benchmarks (compiling
model.init takes longer than a step at full width on a CPU)."""

import jax
import jax.numpy as jnp
import numpy as np


def classifier_params(model, size: int, seed: int):
  """He-scaled normal weights and small non-zero biases of a two-input classifier (the
  co-attention classifier's `params`), for inputs of `size` px."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, x)['params']
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == 'bias':
      return 0.1 * rng.normal(size=leaf.shape).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def segmenter_variables(model, size: int, seed: int) -> dict:
  """Random variables of every collection of a one-input segmenter (frozen BN: positive
  variances and scales)."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key in ('var', 'scale'):
      return (1.0 + 0.1 * np.abs(rng.normal(size=leaf.shape))).astype(np.float32)
    fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
    return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, dict(shapes))
