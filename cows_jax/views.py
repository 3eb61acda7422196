"""Self-pair views of a batch of images (horizontal flip or a scale factor), and their class
maps brought back into the original frame. Used by training (self-pairs) and localization."""

import jax
import jax.numpy as jnp
import numpy as np


def make_view(images, view):
  """`images` [B,H,W,3] flipped ('flip') or resized by a factor (bilinear)."""
  if view == 'flip':
    return images[:, :, ::-1]
  b, h, w, c = images.shape
  size = (int(round(h * float(view))), int(round(w * float(view))))
  return jax.image.resize(images, (b, size[0], size[1], c), 'bilinear')


def bicubic_matrix(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
  """[out, in] weights of PyTorch's bicubic resize (align_corners=False, no antialias):
  Keys kernel with a = -0.75 at src = (dst + 0.5) * in/out - 0.5, border pixels repeated.
  jax.image.resize's cubic uses a = -0.5 and other borders; the reference maps use this."""
  src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  base = np.floor(src).astype(int)
  out = np.zeros((out_size, in_size), np.float64)
  for k in range(-1, 3):
    x = np.abs(src - (base + k))
    w = np.where(
      x <= 1,
      ((a + 2) * x - (a + 3)) * x * x + 1,
      np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0),
    )
    np.add.at(out, (np.arange(out_size), np.clip(base + k, 0, in_size - 1)), w)
  return out.astype(np.float32)


def map_back(maps, view, size: tuple[int, int]):
  """A view's class maps [B,h,w,C] in the frame of the original map size (bicubic, as the
  reference's F.upsample(mode='bicubic'))."""
  if view == 'flip':
    return maps[:, :, ::-1]
  _, h, w, _ = maps.shape
  rows, cols = bicubic_matrix(h, size[0]), bicubic_matrix(w, size[1])
  return jnp.einsum('oh,bhwc,pw->bopc', rows, maps, cols)


def view_key(view) -> str:
  """A name for a view usable as a dict key in pytrees: 'flip', 'x0.75', 'x2.0'."""
  return 'flip' if view == 'flip' else f'x{float(view)}'


def same_size(view) -> bool:
  return view == 'flip'
