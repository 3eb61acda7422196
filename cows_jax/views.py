"""Self-pair views of a batch of images (horizontal flip or a scale factor), and their class
maps brought back into the original frame. Used by training (self-pairs) and localization."""

import jax


def make_view(images, view):
  """`images` [B,H,W,3] flipped ('flip') or resized by a factor (bilinear)."""
  if view == 'flip':
    return images[:, :, ::-1]
  b, h, w, c = images.shape
  size = (int(round(h * float(view))), int(round(w * float(view))))
  return jax.image.resize(images, (b, size[0], size[1], c), 'bilinear')


def map_back(maps, view, size: tuple[int, int]):
  """A view's class maps [B,h,w,C] in the frame of the original map size (bicubic)."""
  if view == 'flip':
    return maps[:, :, ::-1]
  b, _, _, c = maps.shape
  return jax.image.resize(maps, (b, size[0], size[1], c), 'cubic', antialias=False)


def view_key(view) -> str:
  """A name for a view usable as a dict key in pytrees: 'flip', 'x0.75', 'x2.0'."""
  return 'flip' if view == 'flip' else f'x{float(view)}'


def same_size(view) -> bool:
  return view == 'flip'

