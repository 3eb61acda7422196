"""Test-time inference of the segmenter (paper.md, Stage 3): the image at several scales and
mirrored, each scaled image cut into overlapping windows, softmax probabilities averaged.

The network part lives here: `window_probabilities` (softmax of a batch of windows, averaged
with their mirror images when the mirror is per window). The procedure around it (scales,
whole-image mirror, windows, stitching, resize back) is `tta.predict` in numpy, which
exports ship, and `predict_on_device`, the same procedure with the stitching, the resize of
the probabilities and the average on the device (the in-process predictor's; equal to
tta.predict within float32 rounding, tested). All windows of an image, at every scale,
go to the device in one call (padded to a few batch sizes, so few compilations).
`load_predictor` gives a run directory's trained segmenter as a function image ->
probabilities, `load_export` an export as `tta.Export`.
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cows_jax import checkpoints, crf, losses, maps, parallel, run_dir, tta
from cows_jax.configs.defaults import SCHEMA
from cows_jax.models import from_config, per_image


@dataclasses.dataclass(frozen=True)
class Settings:
  """The test-time procedure of `inference` in the config (tta.predict's arguments)."""

  scales: tuple = (1.0,)
  flip: bool = False
  flip_whole_image: bool = True  # mirror the image (the reference), else each window.
  window: int = 0  # 0: whole scaled images, no windows.
  stride: float = 2 / 3  # window step as a fraction of the window.
  pad: str = 'bottom_right'
  interpolation: str = 'cubic'

  @classmethod
  def from_config(cls, cfg) -> 'Settings':
    SCHEMA.require(cfg, 'inference.')  # the CLI validated them; a Python caller may not have.
    i = cfg.inference
    return cls(
      tuple(float(s) for s in i.scales),
      bool(i.flip),
      bool(i.flip_whole_image),
      int(i.window),
      float(i.window_stride),
      i.pad,
      i.interpolation,
    )

  @property
  def flip_windows(self) -> bool:
    """Whether the network's function averages each window with its mirror image."""
    return self.flip and not self.flip_whole_image

  def predict_kwargs(self) -> dict:
    """tta.predict's procedure arguments (an export's meta.json keeps them)."""
    return {
      'scales': list(self.scales),
      'window': self.window,
      'stride': self.stride,
      'flip_image': self.flip and self.flip_whole_image,
      'pad': self.pad,
      'interpolation': self.interpolation,
    }


def window_probabilities(
  model, flip: bool, align_corners: bool, one_at_a_time: bool = True
) -> Callable:
  """jit: (variables, windows [N,h,w,3]) -> softmax [N,h,w,C] at window resolution (the
  logits upsampled x8 as in training), averaged with the mirrored window's (mirrored back)
  when `flip`. The network runs one window at a time on the CPU for windows of 256x256 px or
  more (models/per_image.py; the paper's test time of a 500x375 image with ResNet-101
  LargeFOV: 1.5x faster, a sixth of the memory, `cows-jax bench inference`);
  `one_at_a_time=False`: the whole batch in one call everywhere (whose FLOPs XLA counts in
  full)."""

  @jax.jit
  def probs(variables, x):
    if flip:
      x = jnp.concatenate([x, x[:, :, ::-1]])
    net = lambda xs: model.apply(variables, xs)
    out = per_image.on_cpu(net, x) if one_at_a_time else net(x)
    logits = losses.upsample_logits(out, x.shape[1:3], align_corners)
    p = jax.nn.softmax(logits, -1)
    if flip:
      n = p.shape[0] // 2
      p = (p[:n] + p[n:, :, ::-1]) / 2
    return p

  return probs


def load_predictor(cfg, workdir: str, supervision: str = 'pseudo') -> Callable:
  """A trained segmenter of the run directory as a function uint8 image [H,W,3] -> float32
  class probabilities [H,W,C], by the test-time procedure of `cfg.inference`."""
  settings = Settings.from_config(cfg)
  model = from_config.segmenter(cfg)
  like = from_config.abstract_variables(model, cfg)
  variables, _ = checkpoints.restore_variables(
    run_dir.RunDir(workdir).segmenter(supervision), None, like, 'segment'
  )
  # Variables replicated on this process's devices (restore_variables), windows sharded over
  # them where they divide.
  probs = window_probabilities(model, settings.flip_windows, cfg.segment.upsample_align_corners)
  mesh = parallel.local_mesh()
  probs_fn = lambda x: probs(variables, parallel.to_local_devices(np.asarray(x), mesh))
  kwargs = settings.predict_kwargs()
  return lambda image: predict_on_device(
    image, probs_fn, mean=cfg.segment.mean, std=cfg.segment.std, **kwargs
  )


# --- the test-time procedure on the device ------------------------------------------------


def _bilinear_taps(in_size: int, out_size: int):
  """tta.resize_bilinear as (indices, weights) [out, 4] (two taps used)."""
  idx, w = np.zeros((out_size, 4), np.int64), np.zeros((out_size, 4))
  if in_size == out_size:
    idx[:, 0], w[:, 0] = np.arange(out_size), 1.0
    return idx, w
  pos = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
  lo = np.floor(pos).astype(np.int64)
  t = pos - lo
  idx[:, 0], idx[:, 1] = lo, np.minimum(lo + 1, in_size - 1)
  w[:, 0], w[:, 1] = 1 - t, t
  return idx, w


def _resize_taps(interpolation, size, out, offset, mirror, bucket):
  """Row and column taps of one scale's probabilities: from its (h, w) at `offset` in its
  canvas to the image's (H, W), columns reversed for a mirrored image, zero weights past
  (H, W) up to `bucket`: [Hb, 4] indices and weights, then [Wb, 4]."""
  taps = []
  for axis in range(2):
    if interpolation == 'cubic' and size[axis] == out[axis]:
      idx, w = np.zeros((out[axis], 4), np.int64), np.zeros((out[axis], 4))
      idx[:, 1], w[:, 1] = np.arange(out[axis]), 1.0  # resize_cubic's identity.
    elif interpolation == 'cubic':
      idx, w = tta.cubic_taps(size[axis], out[axis])
    else:
      idx, w = _bilinear_taps(size[axis], out[axis])
    if axis == 1 and mirror:
      idx, w = idx[::-1], w[::-1]
    full_idx = np.zeros((bucket[axis], 4), np.int32)
    full_w = np.zeros((bucket[axis], 4), np.float32)
    full_idx[: out[axis]], full_w[: out[axis]] = idx + offset[axis], w
    taps += [full_idx, full_w]
  return taps


def _window_bucket(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


@functools.partial(jax.jit, static_argnames=('layout',))
def _combine(chunks, slots, layout):
  """The mean over scales (and mirrors) of the stitched probabilities resized to the image.

  chunks: the probs_fn outputs [n, h, w, C]; per scale `slots` (window indices into its
  chunk, their (y, x) in the canvas, valid flags, then `_resize_taps`) and `layout` (chunk,
  canvas height, canvas width). Windows are added in order and divided by their count, as
  tta.stitch; the resize sums each output's taps in order, rows then columns."""
  total = 0.0
  for (chunk, height, width), (idx, ys, xs, valid, r_idx, r_w, c_idx, c_w) in zip(layout, slots):
    probs = chunks[chunk]
    win_h, win_w, c = probs.shape[1:]

    def add(j, carry, probs=probs, idx=idx, ys=ys, xs=xs, valid=valid):
      acc, count = carry
      at = (ys[j], xs[j], 0)
      window = probs[idx[j]].astype(jnp.float32) * valid[j]
      acc = lax.dynamic_update_slice(
        acc, lax.dynamic_slice(acc, at, (win_h, win_w, c)) + window, at
      )
      ones = lax.dynamic_slice(count, at, (win_h, win_w, 1)) + valid[j]
      return acc, lax.dynamic_update_slice(count, ones, at)

    zeros = (jnp.zeros((height, width, c), jnp.float32), jnp.zeros((height, width, 1), jnp.float32))
    acc, count = lax.fori_loop(0, idx.shape[0], add, zeros)
    x = acc / jnp.maximum(count, 1.0)
    # One gather per tap (each fuses with its multiply-add).
    x = sum(jnp.take(x, r_idx[:, k], axis=0) * r_w[:, k, None, None] for k in range(4))
    total = total + sum(jnp.take(x, c_idx[:, k], axis=1) * c_w[None, :, k, None] for k in range(4))
  return total / len(layout)


def predict_on_device(
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
  """tta.predict's procedure and arguments (the scaled images and windows are made on
  the host by the same code), with the stitching, the resize of the probabilities back to the
  image, the un-mirroring and the average in one device call and one transfer. Shapes are
  padded (canvases and the output to multiples of 32, windows per scale to a power of two), so
  images of nearby sizes share a compilation when windows are used."""
  if interpolation not in tta.INTERPOLATIONS:
    raise ValueError(f'interpolation={interpolation!r}: expected one of {tta.INTERPOLATIONS}')
  cubic = interpolation == 'cubic'
  h, w = image.shape[:2]
  sizes = [(max(1, round(h * s)), max(1, round(w * s))) for s in scales]
  mirrors = [m for m in ((False, True) if flip_image else (False,)) for _ in sizes]
  resize = tta.resize_cubic if cubic else tta.resize_image
  scaled = [
    tta.normalize(resize(image[:, ::-1] if m else image, size), mean, std)
    for m, size in zip(mirrors, sizes * len(mirrors))
  ]
  bucket = (maps.size_bucket(h), maps.size_bucket(w))
  layout, slots = [], []
  if window:
    tiles = [tta.tile(x, window, stride, pad) for x in scaled]
    crops = np.concatenate([t[0] for t in tiles])
    n = len(crops)
    chunks = (probs_fn(np.concatenate([crops, np.repeat(crops[:1], tta.bucket(n) - n, 0)])),)
    start = 0
    for (_, boxes, shape, offset), x, mirror in zip(tiles, scaled, mirrors):
      k = _window_bucket(len(boxes))
      ys, xs = np.zeros(k, np.int32), np.zeros(k, np.int32)
      ys[: len(boxes)], xs[: len(boxes)] = np.asarray(boxes, np.int32).T
      idx = np.full(k, start, np.int32)
      idx[: len(boxes)] += np.arange(len(boxes), dtype=np.int32)
      valid = (np.arange(k) < len(boxes)).astype(np.float32)
      taps = _resize_taps(interpolation, x.shape[:2], (h, w), offset, mirror, bucket)
      layout.append((0, maps.size_bucket(shape[0]), maps.size_bucket(shape[1])))
      slots.append((idx, ys, xs, valid, *taps))
      start += len(boxes)
  else:
    chunks = tuple(probs_fn(x[None]) for x in scaled)
    for j, (x, mirror) in enumerate(zip(scaled, mirrors)):
      zero = np.zeros(1, np.int32)
      taps = _resize_taps(interpolation, x.shape[:2], (h, w), (0, 0), mirror, bucket)
      layout.append((j, *x.shape[:2]))
      slots.append((zero, zero, zero, np.ones(1, np.float32), *taps))
  return np.asarray(_combine(chunks, tuple(slots), layout=tuple(layout)))[:h, :w]


def load_export(export_dir: str) -> tuple[tta.Export, dict]:
  """An export (`cows-jax export`) as `tta.Export` (the Python API exports ship: a
  predictor of one image or of a list, same-size images in one call of the network), and its
  metadata. An export of a newer format, a changed model.jax, one lowered for another platform
  (platform names as jax.export canonicalizes them: 'gpu' is 'cuda'), or one this jax cannot
  load is a one-line error naming the fix."""
  data, meta = run_dir.read_export(run_dir.ExportDir(export_dir))
  return tta.from_bytes(data, meta, str(export_dir)), meta


def label_maps_pooled(image: np.ndarray, probabilities: Callable, crf_params, pool):
  """(argmax label map, a future of the map after the dense CRF, or None), uint8 [H, W]: the
  probabilities on this thread (the device call), the CRF in a worker of `pool` (a
  host_pool.HostPool), so that the next image's device call overlaps this CRF."""
  return labels_pooled(image, probabilities(image), crf_params, pool)


def labels_pooled(image: np.ndarray, probs: np.ndarray, crf_params, pool):
  """`label_maps_pooled` of the image's probabilities [H, W, C]."""
  plain = np.argmax(probs, -1).astype(np.uint8)
  if crf_params is None:
    return plain, None
  return plain, pool.process(crf.labels, image, probs, crf.Params.from_config(crf_params))
