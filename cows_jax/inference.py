"""Test-time inference of the segmenter (paper.md, Stage 3): the image at several scales and
mirrored, each scaled image cut into overlapping windows, softmax probabilities averaged.

As in the reference's sliding-window test (PSPNet's `scale_process`): a scaled image smaller
than the window is padded with the mean colour (0 after normalization), centred; windows step
by ceil(stride x window), the last one flush with the border; overlapping probabilities are
averaged, the padding cropped, and the result resized bilinearly to the image size.
`window=0` runs each scaled image whole instead.

All windows of an image, at every scale, with their mirror images, go to the device in one
call (padded to a few batch sizes, so few compilations); stitching is numpy on the host.
`load_predictor` gives a run directory's trained segmenter as such a function.
"""

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cows_jax import checkpoints, crf, losses, run_dir
from cows_jax.data import transforms
from cows_jax.models import from_config


@dataclasses.dataclass(frozen=True)
class Settings:
  scales: tuple = (1.0,)
  flip: bool = False
  window: int = 0  # 0: whole scaled images, no windows.
  stride: float = 2 / 3  # window step as a fraction of the window.

  @classmethod
  def from_config(cls, cfg) -> 'Settings':
    i = cfg.inference
    if not i.scales or min(i.scales) <= 0:
      raise ValueError(f'inference.scales={tuple(i.scales)}: expected positive scales')
    if i.window < 0 or not 0 < i.window_stride <= 1:
      raise ValueError(
        f'inference.window={i.window}, inference.window_stride='
        f'{i.window_stride}: expected window >= 0 and 0 < stride <= 1'
      )
    return cls(
      tuple(float(s) for s in i.scales), bool(i.flip), int(i.window), float(i.window_stride)
    )


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


def window_probabilities(model, flip: bool) -> Callable:
  """jit: (variables, windows [N,h,w,3]) -> softmax [N,h,w,C] at window resolution, averaged
  with the mirrored window's (mirrored back) when `flip`."""

  @jax.jit
  def probs(variables, x):
    if flip:
      x = jnp.concatenate([x, x[:, :, ::-1]])
    p = jax.nn.softmax(losses.upsample_logits(model.apply(variables, x), x.shape[1:3]), -1)
    if flip:
      n = p.shape[0] // 2
      p = (p[:n] + p[n:, :, ::-1]) / 2
    return p

  return probs


def _run(probs_fn, windows: np.ndarray) -> np.ndarray:
  n = len(windows)
  padded = np.concatenate([windows, np.repeat(windows[:1], bucket(n) - n, 0)])
  return np.asarray(probs_fn(padded))[:n]


def predict(image: np.ndarray, probs_fn: Callable, settings: Settings, mean, std) -> np.ndarray:
  """float32 [H, W, C] class probabilities of a uint8 [H, W, 3] image.

  `probs_fn(windows)` -> softmax per window (e.g. `window_probabilities` with its variables).
  """
  h, w = image.shape[:2]
  scaled = [
    transforms.normalize(
      transforms.resize_image(image, (max(1, round(h * s)), max(1, round(w * s)))), mean, std
    )
    for s in settings.scales
  ]
  if settings.window:
    tiles = [tile(x, settings.window, settings.stride) for x in scaled]
    probs = _run(probs_fn, np.concatenate([t[0] for t in tiles]))
    splits = np.cumsum([len(t[0]) for t in tiles])[:-1]
    per_scale = [
      stitch(p, boxes, shape, pad, x.shape[:2])
      for p, (_, boxes, shape, pad), x in zip(np.split(probs, splits), tiles, scaled)
    ]
  else:
    per_scale = [_run(probs_fn, x[None])[0] for x in scaled]
  return np.mean([resize_bilinear(p, (h, w)) for p in per_scale], axis=0)


def load_predictor(cfg, workdir: str, supervision: str = 'pseudo') -> Callable:
  """A trained segmenter of the run directory as a function uint8 image [H,W,3] -> float32
  class probabilities [H,W,C], by the test-time procedure of `cfg.inference`."""
  settings = Settings.from_config(cfg)
  model = from_config.segmenter(cfg)
  like = from_config.abstract_variables(model, cfg)
  variables, _ = checkpoints.restore_variables(
    run_dir.RunDir(workdir).segmenter(supervision), None, like, 'segment'
  )
  probs_fn = functools.partial(window_probabilities(model, settings.flip), variables)
  return lambda image: predict(image, probs_fn, settings, cfg.segment.mean, cfg.segment.std)


def label_maps(image: np.ndarray, probabilities: Callable, crf_params=None):
  """(argmax label map, argmax after the dense CRF or None), uint8 [H, W]."""
  p = probabilities(image)
  plain = np.argmax(p, -1).astype(np.uint8)
  if crf_params is None:
    return plain, None
  return plain, np.argmax(crf.refine(image, p, crf_params), -1).astype(np.uint8)


def predict_source(source, probabilities: Callable, crf_params=None):
  """([label map per record], [after the CRF per record] or None)."""
  pairs = [label_maps(source[i]['image'], probabilities, crf_params) for i in range(len(source))]
  plain = [p for p, _ in pairs]
  return plain, (None if crf_params is None else [r for _, r in pairs])
