"""The segmenter's test-time procedure around a probabilities function, in numpy and PIL only.

The image (and its mirror image) at several scales, each scaled image cut into overlapping
windows (or whole), the softmax of every window from `probs_fn`, overlaps averaged, every
scale resized back and averaged. By default as in the authors' Caffe test: each scaled image
is a cubic resize (OpenCV's INTER_CUBIC), padded bottom/right with the mean colour (0 after
normalization) up to the window; windows step by int(stride x window), the last one flush
with the border; the whole image is mirrored (not each window); probabilities are resized
back with the same cubic. The options name today's alternatives (centred padding, bilinear
resizes, a mirror per window inside `probs_fn`).

This module imports nothing of cows_jax or flax, and jax only inside `load` and `Export`:
`cows-jax export` copies it next to the exported network as the export's Python API, under
the name exports have always shipped it, test_time.py, so an export runs with jax,
flatbuffers, numpy and PIL alone (docs/export.md):

    sys.path.insert(0, 'runs/voc12/export')
    import test_time
    segmenter = test_time.load('runs/voc12/export')  # load once
    labels = segmenter.labels([image_a, image_b])  # uint8 RGB arrays; one size: one call

`inference.py` uses the procedure for the in-process segmenter and `Export` for exports, so
all of them run the same code.
"""

import hashlib
import json
import math
import os
import re
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
  return predict_batch(
    image[None], probs_fn, scales, window, stride, mean, std, flip_image, pad, interpolation
  )[0]


def predict_batch(
  images: np.ndarray,
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
  """float32 [n, H, W, C]: `predict` of each of n uint8 images [n, H, W, 3] of one size, the
  network called as often as for one image: every window of every image at every scale in one
  call (with windows), or one call per scale and mirror (whole images)."""
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f'interpolation={interpolation!r}: expected one of {INTERPOLATIONS}')
  cubic = interpolation == 'cubic'
  n, h, w = images.shape[:3]
  sizes = [(max(1, round(h * s)), max(1, round(w * s))) for s in scales]
  mirrors = (False, True) if flip_image else (False,)
  resize = resize_cubic if cubic else resize_image
  # scaled[k][i]: image i at the k-th (mirror, size), normalized.
  scaled = [
    [normalize(resize(image[:, ::-1] if m else image, size), mean, std) for image in images]
    for m in mirrors
    for size in sizes
  ]
  if window:
    tiles = [[tile(x, window, stride, pad) for x in row] for row in scaled]
    flat = [t for row in tiles for t in row]
    probs = _run(probs_fn, np.concatenate([t[0] for t in flat]))
    parts = iter(np.split(probs, np.cumsum([len(t[0]) for t in flat])[:-1]))
    per_scale = [
      [
        stitch(next(parts), boxes, shape, offset, x.shape[:2])
        for (_, boxes, shape, offset), x in zip(tile_row, row)
      ]
      for tile_row, row in zip(tiles, scaled)
    ]
  else:
    per_scale = [_run(probs_fn, np.stack(row)) for row in scaled]
  back_resize = resize_cubic if cubic else resize_bilinear
  out = []
  for i in range(n):
    back = [back_resize(row[i], (h, w)) for row in per_scale]
    if flip_image:
      back = back[: len(sizes)] + [p[:, ::-1] for p in back[len(sizes) :]]
    out.append(np.mean(back, axis=0))
  return np.stack(out)


# --- an export directory as a Python API (jax imported here only) -------------------------

# The pip lines of an export's loader, without cows_jax: `{jax}` is its jax requirement.
PIP_CPU = 'pip install "jax>={jax}" flatbuffers numpy pillow'
PIP_CUDA = 'pip install "jax[cuda12]>={jax}" flatbuffers numpy pillow'


def canonical_platform(name: str) -> str:
  """A platform name as jax.export spells it (what `--platforms` and meta.json list).

  Mirrors jax._src.xla_bridge.canonicalize_platform, which jax.export applies: the backend
  name 'gpu' (jax.default_backend() on an NVIDIA or AMD GPU) is the GPU runtime installed,
  'cuda' or 'rocm' (jax.export.default_export_platform()), and 'cuda' on a machine without a
  GPU; 'cpu', 'cuda', 'rocm' and 'tpu' stay as they are."""
  name = name.strip().lower()
  if name != 'gpu':
    return name
  from jax import export

  found = export.default_export_platform()
  return found if found in ('cuda', 'rocm') else 'cuda'


def machine_platform() -> str:
  """This machine's platform as jax.export names it: jax.default_backend(), canonical."""
  import jax

  return canonical_platform(jax.default_backend())


def _version(text: str) -> tuple[int, ...]:
  """'0.10.2' (or '0.10.3.dev20260601') -> (0, 10, 2)."""
  return tuple(int(x) for x in re.findall(r'\d+', text)[:3])


def check_jax(meta: dict, name: str) -> None:
  """The installed jax can load the export (meta.json's `load_with`), else a one-line error
  naming both jax versions and the fix.

  jax.export loads artifacts of the same and older jax (6 months of backward compatibility,
  3 weeks of forward compatibility, which no version number can express): an export needs a
  jax at least as new as the one that made it, and whose jax.export still reads the export's
  calling convention (jax may stop reading one that is 6 months old)."""
  import jax
  from jax import export

  want = meta.get('load_with')
  if not want:
    return
  made, have = want['exported_with_jax'], jax.__version__
  version = want['calling_convention_version']
  low = export.minimum_supported_calling_convention_version
  high = export.maximum_supported_calling_convention_version
  if _version(have) < _version(made):
    raise ValueError(
      f'{name} was exported with jax {made} and this is jax {have}, which is older; load it '
      f'with jax {made} or newer: {want["pip"]}'
    )
  if not low <= version <= high:
    raise ValueError(
      f'{name} was exported with jax {made} (calling convention {version}) and this jax {have} '
      f"reads calling conventions {low}..{high}, past jax.export's 6-month window; load it "
      f'with jax {made} (pip install "jax=={made}") or export it again with jax {have}'
    )


def check_platform(meta: dict, name: str) -> None:
  """The export was lowered for this machine's platform, else a one-line error."""
  platforms = [canonical_platform(p) for p in meta['platforms']]
  platform = machine_platform()
  if platform not in platforms:
    raise ValueError(
      f'{name} was exported for {", ".join(platforms)} and this machine runs {platform}; '
      f'export it again with --platforms={",".join(platforms + [platform])}'
    )


def _as_images(images) -> tuple[list[np.ndarray], bool]:
  """(uint8 [H, W, 3] arrays, whether one image was given) of an image or a sequence of
  images: numpy arrays [H, W, 3] or [n, H, W, 3] (uint8 RGB), or PIL images."""
  single = isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim != 4)
  out = []
  for i, image in enumerate([images] if single else list(images)):
    if isinstance(image, Image.Image):
      image = np.asarray(image.convert('RGB'))
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or not image.size:
      raise ValueError(
        f'image {i}: expected a uint8 RGB array [H, W, 3] or a PIL image, got {image.dtype} '
        f'{list(image.shape)}; read files with np.asarray(PIL.Image.open(path).convert("RGB"))'
      )
    out.append(image)
  return out, single


class Export:
  """A segmenter export, loaded once (`load`): class probabilities and label maps of any
  number of images of any sizes by the export's test-time procedure; the images of one size
  go through the network together (`predict_batch`)."""

  def __init__(self, exported, meta: dict):
    self.meta = meta
    self.classes = list(meta['classes'])
    self.palette = np.asarray(meta['palette'], np.uint8)
    self._call = exported.call
    self._procedure = meta['test_time']

  def probabilities(self, images):
    """float32 [H, W, C] per image (C = len(classes), background first): one image (a uint8
    array [H, W, 3] or a PIL image) gives one array, a list (or an array [n, H, W, 3]) a
    list."""
    batch, single = _as_images(images)
    out = [None] * len(batch)
    same_size = {}
    for i, image in enumerate(batch):
      same_size.setdefault(image.shape, []).append(i)
    for indices in same_size.values():
      probs = predict_batch(np.stack([batch[i] for i in indices]), self._call, **self._procedure)
      for i, p in zip(indices, probs):
        out[i] = p
    return out[0] if single else out

  __call__ = probabilities

  def labels(self, images):
    """uint8 [H, W] class indices (argmax of `probabilities`), one per image as there."""
    probs = self.probabilities(images)
    argmax = lambda p: np.argmax(p, -1).astype(np.uint8)
    return argmax(probs) if isinstance(probs, np.ndarray) else [argmax(p) for p in probs]

  def label_image(self, label: np.ndarray) -> Image.Image:
    """A label map as a palette PNG image ('P', the classes' colours, indices kept)."""
    out = Image.fromarray(np.asarray(label, np.uint8), 'P')
    out.putpalette(self.palette.ravel().tolist())
    return out

  def overlay(self, image, label: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The classes' colours over the image (RGB), `alpha` the colours' weight."""
    [image], _ = _as_images(image)
    label = np.asarray(label, np.uint8)
    if label.shape != image.shape[:2]:
      raise ValueError(
        f'label {list(label.shape)} and image {list(image.shape[:2])} differ in size; pass the '
        "image's own label map (labels(image))"
      )
    colours = self.palette[label].astype(np.float64)
    blend = (1 - alpha) * image + alpha * colours
    return Image.fromarray(blend.round().astype(np.uint8))


def load(directory: str) -> Export:
  """The segmenter export in `directory` (`cows-jax export`): meta.json and model.jax read
  and checked (complete, unchanged, lowered for this machine's platform, a jax that loads
  it), the network deserialized once."""
  name = str(directory).rstrip('/')
  paths = {f: os.path.join(directory, f) for f in ('meta.json', 'model.jax')}
  for f, path in paths.items():
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path} is missing: {name} is not a complete export')
  with open(paths['meta.json']) as f:
    try:
      meta = json.load(f)
    except ValueError as e:
      raise ValueError(f'{paths["meta.json"]} is not JSON ({e}); export it again') from None
  with open(paths['model.jax'], 'rb') as f:
    data = f.read()
  if hashlib.sha256(data).hexdigest() != meta.get('sha256'):
    raise ValueError(f'{paths["model.jax"]}: its sha256 differs from meta.json; export it again')
  return from_bytes(data, meta, name)


def from_bytes(data: bytes, meta: dict, name: str) -> Export:
  """`Export` of model.jax's bytes and meta.json, checked as `load` does (after the files)."""
  if meta.get('model', 'segmenter') != 'segmenter':
    raise ValueError(
      f'{name} is an export of the {meta["model"]}; predict from a segmenter export '
      '(cows-jax export --model segmenter)'
    )
  missing = [k for k in ('classes', 'palette', 'platforms', 'test_time') if k not in meta]
  if missing:
    raise ValueError(f'{name}/meta.json has no {", ".join(missing)}; export it again')
  check_platform(meta, name)
  check_jax(meta, name)
  from jax import export

  return Export(export.deserialize(bytearray(data)), meta)
