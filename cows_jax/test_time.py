"""The segmenter's test-time procedure around a probabilities function, in numpy and PIL only.

The image (and its mirror image) at several scales, each scaled image cut into overlapping
windows (or whole), the softmax of every window from `probs_fn`, overlaps averaged, every
scale resized back and averaged. By default as in the authors' Caffe test: each scaled image
is a cubic resize (OpenCV's INTER_CUBIC), padded bottom/right with the mean colour (0 after
normalization) up to the window; windows step by int(stride x window), the last one flush
with the border; the whole image is mirrored (not each window); probabilities are resized
back with the same cubic. The options name today's alternatives (centred padding, bilinear
resizes, a mirror per window inside `probs_fn`).

This module imports nothing of cows_jax, flax or jax: `cows-jax export` copies it next to the
exported network, so the whole procedure runs from an export with numpy, PIL and jax alone.
`inference.py` uses it for the in-process segmenter, so both run the same code.
"""

import math
from typing import Callable

import numpy as np
from PIL import Image


def window_starts(size: int, window: int, step: int) -> list[int]:
  """Window offsets along one axis of a (padded) length `size` >= `window`."""
  n = math.ceil(max(size - window, 0) / step) + 1
  return [min(i * step, size - window) for i in range(n)]


def tile(image: np.ndarray, window: int, stride: float, pad: str = 'bottom_right'):
  """[n, window, window, 3] crops of the image padded to at least the window (bottom/right,
  or centred), their (y, x) offsets, the padded shape and the (top, left) padding."""
  h, w = image.shape[:2]
  ph, pw = max(window - h, 0), max(window - w, 0)
  if pad not in PADDINGS:
    raise ValueError(f'pad={pad!r}: expected one of {PADDINGS}')
  top, left = (0, 0) if pad == 'bottom_right' else (ph // 2, pw // 2)
  padded = np.pad(image, ((top, ph - top), (left, pw - left), (0, 0)))
  step = max(int(window * stride), 1)
  boxes = [
    (y, x)
    for y in window_starts(padded.shape[0], window, step)
    for x in window_starts(padded.shape[1], window, step)
  ]
  crops = np.stack([padded[y : y + window, x : x + window] for y, x in boxes])
  return crops, boxes, padded.shape[:2], (top, left)


def stitch(probs: np.ndarray, boxes, padded_shape, pad, size) -> np.ndarray:
  """Average of overlapping window probabilities [n, win, win, C] -> [h, w, C] (unpadded)."""
  win, c = probs.shape[1], probs.shape[-1]
  acc = np.zeros((*padded_shape, c), np.float32)
  count = np.zeros((*padded_shape, 1), np.float32)
  for p, (y, x) in zip(probs, boxes):
    acc[y : y + win, x : x + win] += p
    count[y : y + win, x : x + win] += 1
  return (acc / count)[pad[0] : pad[0] + size[0], pad[1] : pad[1] + size[1]]


def resize_bilinear(x: np.ndarray, size) -> np.ndarray:
  """[h, w, C] -> [H, W, C], half-pixel centres, no antialiasing (OpenCV's INTER_LINEAR)."""
  for axis, n in enumerate(size):
    m = x.shape[axis]
    if m == n:
      continue
    pos = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, m - 1)
    t = (pos - lo).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    x = np.take(x, lo, axis) * (1 - t) + np.take(x, hi, axis) * t
  return x


def cubic_taps(in_size: int, out_size: int, a: float = -0.75):
  """The 4 source indices [out, 4] and weights [out, 4] (float64) of OpenCV's INTER_CUBIC and
  PyTorch's bicubic (align_corners False, no antialiasing): Keys kernel with a = -0.75 at
  src = (dst + 0.5) * in/out - 0.5, border pixels repeated. (jax.image.resize's cubic uses
  a = -0.5 and other borders.)"""
  src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  base = np.floor(src).astype(int)
  x = np.abs(src[:, None] - (base[:, None] + np.arange(-1, 3)))
  w = np.where(
    x <= 1,
    ((a + 2) * x - (a + 3)) * x * x + 1,
    np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0),
  )
  return np.clip(base[:, None] + np.arange(-1, 3), 0, in_size - 1), w


def cubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """`cubic_taps` as an [out, in] float64 matrix."""
  index, w = cubic_taps(in_size, out_size)
  out = np.zeros((out_size, in_size), np.float64)
  np.add.at(out, (np.repeat(np.arange(out_size), 4), index.ravel()), w.ravel())
  return out


def resize_cubic(x: np.ndarray, size) -> np.ndarray:
  """[h, w, ...] -> [H, W, ...] with OpenCV's INTER_CUBIC; a uint8 image is rounded and
  saturated to 0..255 as OpenCV does, floats are left as they come (may overshoot). Four
  taps per axis, gathered (no BLAS: small matrix products pay its threads' overhead)."""
  if x.shape[:2] == tuple(size):
    return x
  out = x.astype(np.float64)
  for axis, n in enumerate(size):
    index, w = cubic_taps(out.shape[axis], n)
    shape = [-1 if a == axis else 1 for a in range(out.ndim)]
    out = sum(np.take(out, index[:, k], axis) * w[:, k].reshape(shape) for k in range(4))
  if x.dtype == np.uint8:
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
  return out.astype(x.dtype)


def bucket(n: int) -> int:
  """Batch size a call of n windows is padded to: powers of two up to 8, then multiples of 8."""
  return 1 << max(n - 1, 0).bit_length() if n <= 8 else -(-n // 8) * 8


def _run(probs_fn, windows: np.ndarray) -> np.ndarray:
  n = len(windows)
  padded = np.concatenate([windows, np.repeat(windows[:1], bucket(n) - n, 0)])
  return np.asarray(probs_fn(padded))[:n]


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
  """uint8 RGB -> float32 (x/255 - mean) / std."""
  x = image.astype(np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of a uint8 HxWx3 image to (H, W) (PIL, as in training)."""
  if image.shape[:2] == tuple(size):
    return image
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


PADDINGS = ('bottom_right', 'centre')
INTERPOLATIONS = ('cubic', 'bilinear')


def predict(
  image: np.ndarray,
  probs_fn: Callable,
  scales,
  window: int,
  stride: float,
  mean,
  std,
  flip_image: bool = False,
  pad: str = 'bottom_right',
  interpolation: str = 'cubic',
) -> np.ndarray:
  """float32 [H, W, C] class probabilities of a uint8 [H, W, 3] image.

  `probs_fn(windows [N,h,w,3] normalized)` -> softmax per window (the exported function, or
  inference.window_probabilities with its variables; a mirror per window is folded in there).
  `flip_image`: average with the prediction of the mirrored image. `interpolation` of the
  scaled images and of the probabilities resized back: 'cubic' or 'bilinear' (the image by
  PIL as in training, the probabilities as OpenCV's INTER_LINEAR).
  """
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f'interpolation={interpolation!r}: expected one of {INTERPOLATIONS}')
  cubic = interpolation == 'cubic'
  h, w = image.shape[:2]
  sizes = [(max(1, round(h * s)), max(1, round(w * s))) for s in scales]
  mirrors = (False, True) if flip_image else (False,)
  scaled = [
    normalize(
      (resize_cubic if cubic else resize_image)(image[:, ::-1] if m else image, size), mean, std
    )
    for m in mirrors
    for size in sizes
  ]
  if window:
    tiles = [tile(x, window, stride, pad) for x in scaled]
    probs = _run(probs_fn, np.concatenate([t[0] for t in tiles]))
    splits = np.cumsum([len(t[0]) for t in tiles])[:-1]
    per_scale = [
      stitch(p, boxes, shape, offset, x.shape[:2])
      for p, (_, boxes, shape, offset), x in zip(np.split(probs, splits), tiles, scaled)
    ]
  else:
    per_scale = [_run(probs_fn, x[None])[0] for x in scaled]
  back = [(resize_cubic if cubic else resize_bilinear)(p, (h, w)) for p in per_scale]
  if flip_image:
    n = len(sizes)
    back = back[:n] + [p[:, ::-1] for p in back[n:]]
  return np.mean(back, axis=0)
