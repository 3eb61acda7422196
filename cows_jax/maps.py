"""The localization-map arithmetic shared by `localize` and `export`: the paper's aggregation
rule, the resize of a map to the image's size, and one query image's maps with cross-image context as a single JAX function (what an
exported classifier computes)."""

import jax
import jax.numpy as jnp
import numpy as np

from cows_jax import test_time, views


def aggregate(maps: jax.Array, gate: float) -> jax.Array:
  """The reference rule over a list of raw maps [V, h, w] of one class: ReLU, scale each map
  to 0..255 by its max, add maps after the first only if sigmoid(mean(raw)) > gate, and
  divide by the number of maps."""
  relu = jax.nn.relu(maps)
  peak = jnp.max(relu, axis=(1, 2), keepdims=True)
  scaled = jnp.where(peak > 0, relu / jnp.where(peak > 0, peak, 1.0) * 255.0, 0.0)
  keep = jax.nn.sigmoid(jnp.mean(maps, axis=(1, 2))) > gate
  keep = keep.at[0].set(True)
  return jnp.sum(jnp.where(keep[:, None, None], scaled, 0.0), axis=0) / maps.shape[0]


def query_maps(
  model, variables, query, related, self_views, gate: float, view_images=None
) -> jax.Array:
  """Aggregated maps [C, h, w] (0..255, feature resolution) of one normalized query image
  [1, S, S, 3] for every class: m's map in the pair with the first self view, each view's map
  mapped back, then the mean over the related images [K, S, S, 3] of m's map paired with each
  (the order of localize.image_maps). Row c is the paper's map of class c when every related
  image contains c. `view_images` {view_key: [1, s, s, 3]}: views made from the original
  image (views.from_original); the others are resampled from the query."""
  apply = lambda *a, method: model.apply(variables, *a, method=method)
  f_m = apply(query, method=model.features)
  f_r = apply(related, method=model.features)
  maps_m, _ = apply(
    jnp.broadcast_to(f_m, f_r.shape[:1] + f_m.shape[1:]), f_r, method=model.pair_maps
  )
  h, w = f_m.shape[1:3]
  stack = []
  given = view_images or {}
  for j, view in enumerate(self_views):
    image = given.get(views.view_key(view))
    f_v = apply(views.make_view(query, view) if image is None else image, method=model.features)
    m_self, m_view = apply(f_m, f_v, method=model.pair_maps)
    if j == 0:
      stack.append(m_self[0])
    stack.append(views.map_back(m_view, view, (h, w))[0])
  stack.append(jnp.mean(maps_m, axis=0))
  return jax.vmap(lambda m: aggregate(m, gate), in_axes=3)(jnp.stack(stack))


def to_image_size(small: np.ndarray, size: tuple[int, int], quantize: bool) -> np.ndarray:
  """Aggregated maps [K, h, w] (0..255) at the image's size [K, H, W], float32.

  quantize (the reference): truncate to uint8 at map size, then OpenCV's INTER_CUBIC, rounded
  and saturated to 0..255 (within one level of cv2's result; tested). Otherwise the same cubic
  on the float maps."""
  x = np.moveaxis(np.asarray(small, np.float32), 0, -1)
  x = np.clip(x, 0, 255).astype(np.uint8) if quantize else x  # the cast truncates.
  return np.moveaxis(test_time.resize_cubic(x, size), -1, 0).astype(np.float32)
