"""Self-pair views of a batch of images (horizontal flip or a scale factor), and their class
maps brought back into the original frame. Used by training (self-pairs) and localization.

The reference makes each scaled view from the original-resolution image (a square PIL resize,
input.views_from_original): the input pipeline and `localize` do that on the host and pass the
views in by `input_key`. `make_view` resamples the input tensor instead (the cheaper switch, and
always the flip, which is the same either way)."""

import jax
import jax.numpy as jnp
import numpy as np

from cows_jax import tta


def make_view(images, view):
  """`images` [B,H,W,3] flipped ('flip') or resized by a factor (bilinear)."""
  if view == 'flip':
    return images[:, :, ::-1]
  b, h, w, c = images.shape
  size = (int(round(h * float(view))), int(round(w * float(view))))
  return jax.image.resize(images, (b, size[0], size[1], c), 'bilinear')


def map_back(maps, view, size: tuple[int, int]):
  """A view's class maps [B,h,w,C] in the frame of the original map size (bicubic, as the
  reference's F.upsample(mode='bicubic'))."""
  if view == 'flip':
    return maps[:, :, ::-1]
  _, h, w, _ = maps.shape
  rows = tta.cubic_matrix(h, size[0]).astype(np.float32)
  cols = tta.cubic_matrix(w, size[1]).astype(np.float32)
  return jnp.einsum('oh,bhwc,pw->bopc', rows, maps, cols, precision='highest')


def view_key(view) -> str:
  """A name for a view usable as a dict key in pytrees: 'flip', 'x0.75', 'x2.0'."""
  return 'flip' if view == 'flip' else f'x{float(view)}'


def same_size(view) -> bool:
  return view == 'flip'


def view_size(size: int, view) -> int:
  """The square side of a view of a `size` px input: 256 -> 192 (x0.75) and 512 (x2)."""
  return size if same_size(view) else int(round(size * float(view)))


def input_key(view) -> str:
  """The batch key of a view made on the host from the original image ('view_x0.75')."""
  return 'view_' + view_key(view)


def from_original(views, cfg) -> tuple:
  """The views the host makes from the original image: the scaled ones, when
  input.views_from_original (a flip of the input is the flip of the original's resize)."""
  if not cfg.input.views_from_original:
    return ()
  return tuple(v for v in views if not same_size(v))


def given_views(batch: dict) -> dict:
  """{view_key: images} of the host-made views in a batch (`input_key`)."""
  return {k[len('view_') :]: v for k, v in batch.items() if k.startswith('view_')}
