"""The localization-map arithmetic shared by `localize` and `export`: the paper's aggregation
rule, the resize of a map to the image's size, and one query image's maps with cross-image
context as a single JAX function (what an exported classifier computes).

`localize` runs it on the device for a whole batch: `aggregate_batch` over images and classes,
`resize_to_images` for the resize to every image's size (one call, one transfer per batch)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cows_jax import tta, views


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


def select_classes(class_maps: jax.Array, class_ids: jax.Array) -> jax.Array:
  """[B, h, w, C] class maps -> [B, J, h, w], row (b, j) the map of class class_ids[b, j]."""
  picked = jnp.take_along_axis(class_maps, class_ids[:, None, None, :], axis=3)
  return jnp.moveaxis(picked, 3, 1)


def aggregate_batch(stack: jax.Array, gate: float) -> jax.Array:
  """`aggregate` of every (image, class) at once: [V, B, J, h, w] -> [B, J, h, w]."""
  per_class = jax.vmap(lambda m: aggregate(m, gate), in_axes=1)  # over J of [V, J, h, w]
  return jax.vmap(per_class, in_axes=1)(stack)  # over B of [V, B, J, h, w]


def size_bucket(n: int, step: int = 32) -> int:
  """Sizes a batch of resizes is padded to (few shapes, few compiles)."""
  return -(-n // step) * step


def resize_taps(small: tuple[int, int], sizes, bucket: tuple[int, int]):
  """`tta.cubic_taps` from a map of size `small` to each image's (H, W), padded with zero
  weights past H and W up to the bucket: row indices and weights [B, Hb, 4], columns
  [B, Wb, 4]."""
  taps = []
  for axis in range(2):
    idx = np.zeros((len(sizes), bucket[axis], 4), np.int32)
    w = np.zeros((len(sizes), bucket[axis], 4), np.float32)
    for i, size in enumerate(sizes):
      if size[axis] == small[axis]:  # the identity, as tta.resize_cubic.
        idx[i, : size[axis], 1], w[i, : size[axis], 1] = np.arange(size[axis]), 1.0
      else:
        idx[i, : size[axis]], w[i, : size[axis]] = tta.cubic_taps(small[axis], size[axis])
    taps += [idx, w]
  return taps


@functools.partial(jax.jit, static_argnames=('quantize',))
def _resize(small, row_idx, row_w, col_idx, col_w, quantize: bool):
  """Columns, then rows; each output the sum of its 4 taps in order, so a pixel's value does
  not depend on the batch or the bucket."""
  if quantize:  # the reference's uint8 cast: clip, then truncate.
    small = jnp.floor(jnp.clip(small, 0, 255))

  def one(x, row_idx, row_w, col_idx, col_w):  # x [K, h, w]
    cols = jnp.take(x, col_idx, axis=2)  # [K, h, Wb, 4]
    x = sum(cols[..., k] * col_w[:, k] for k in range(4))
    rows = jnp.take(x, row_idx, axis=1)  # [K, Hb, 4, Wb]
    return sum(rows[:, :, k] * row_w[:, k, None] for k in range(4))

  out = jax.vmap(one)(small, row_idx, row_w, col_idx, col_w)
  return jnp.clip(jnp.round(out), 0, 255) if quantize else out


def resize_to_images(small, sizes, quantize: bool) -> np.ndarray:
  """Aggregated maps [B, K, h, w] (0..255; on the device or not) at each image's size, in one
  device call and one transfer: float32 [B, K, Hb, Wb], image b's maps in [b, :, :H_b, :W_b].

  quantize (the reference): truncate to uint8 at map size, then OpenCV's INTER_CUBIC, rounded
  and saturated to 0..255 (within one level of cv2's result; tested). Otherwise the same cubic
  on the float maps, in float32."""
  bucket = (size_bucket(max(h for h, _ in sizes)), size_bucket(max(w for _, w in sizes)))
  taps = resize_taps(small.shape[2:], sizes, bucket)
  return np.asarray(_resize(jnp.asarray(small, jnp.float32), *taps, quantize))


def to_image_size(small: np.ndarray, size: tuple[int, int], quantize: bool) -> np.ndarray:
  """Aggregated maps [K, h, w] (0..255) at the image's size [K, H, W], float32 (one image of
  `resize_to_images`)."""
  if len(small) == 0:
    return np.zeros((0, *size), np.float32)
  return resize_to_images(np.asarray(small)[None], [tuple(size)], quantize)[
    0, :, : size[0], : size[1]
  ]
