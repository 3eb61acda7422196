"""The segmenter's test-time procedure around a probabilities function, in numpy and PIL only.

The image at several scales, each scaled image cut into overlapping windows (or whole), the
softmax of every window from `probs_fn`, overlaps averaged, every scale resized back and
averaged. As in the reference's sliding-window test (PSPNet's `scale_process`): a scaled image
smaller than the window is padded with the mean colour (0 after normalization), centred;
windows step by ceil(stride x window), the last one flush with the border; the result is
resized bilinearly to the image size.

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


def tile(image: np.ndarray, window: int, stride: float):
  """[n, window, window, 3] crops of the image padded to at least the window, their (y, x)
  offsets, the padded shape and the (top, left) padding."""
  h, w = image.shape[:2]
  ph, pw = max(window - h, 0), max(window - w, 0)
  top, left = ph // 2, pw // 2
  padded = np.pad(image, ((top, ph - top), (left, pw - left), (0, 0)))
  step = math.ceil(window * stride)
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


def predict(
  image: np.ndarray, probs_fn: Callable, scales, window: int, stride: float, mean, std
) -> np.ndarray:
  """float32 [H, W, C] class probabilities of a uint8 [H, W, 3] image.

  `probs_fn(windows [N,h,w,3] normalized)` -> softmax per window, mirrored images included
  (the exported function, or inference.window_probabilities with its variables).
  """
  h, w = image.shape[:2]
  scaled = [
    normalize(resize_image(image, (max(1, round(h * s)), max(1, round(w * s)))), mean, std)
    for s in scales
  ]
  if window:
    tiles = [tile(x, window, stride) for x in scaled]
    probs = _run(probs_fn, np.concatenate([t[0] for t in tiles]))
    splits = np.cumsum([len(t[0]) for t in tiles])[:-1]
    per_scale = [
      stitch(p, boxes, shape, pad, x.shape[:2])
      for p, (_, boxes, shape, pad), x in zip(np.split(probs, splits), tiles, scaled)
    ]
  else:
    per_scale = [_run(probs_fn, x[None])[0] for x in scaled]
  return np.mean([resize_bilinear(p, (h, w)) for p in per_scale], axis=0)
