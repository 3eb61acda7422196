"""Built-in synthetic weakly supervised segmentation dataset.

Every image holds 1 to `max_objects` objects drawn from shape families, one family per
class, each with its own appearance distribution (hue range, saturation/value range and
texture), on a smooth noisy background with clutter distractors (blobs, lines, arcs) that
are not class shapes and often borrow class colors, so that neither color nor saliency
alone solves the task. Each example carries the image, its image-level multi-hot labels,
a VOC-style ground-truth mask (0 background, k+1 for class k, 255 on a thin band around
object boundaries) and a simulated saliency map with realistic errors (blur, misses,
false positives on clutter, noise).

Two extra splits stand in for the paper's extra training images (settings 2 and 3), read
through data.extra (layout 'split'): `single_label` holds one object per image on a plainer
background (smoother, no clutter), like Caltech-256 next to VOC; `web` holds images drawn like
train whose label set is, at the rate `web_noise_rate`, replaced by a wrong one, like web images
found by a search for another class (the true labels are kept in 'true_labels').

Example i of split s depends only on (seed, s, i). `build` writes the examples as a TFDS
array_record dataset with the features and PNG encoding of the real datasets' builds
(records.py); `load_sources` returns their decoded random-access sources, records.RecordSource.
Train and val are built together; each extra split is built alone, when a config reads it
(`load_split`), so a build of train and val neither grows nor changes name with them.
"""

import colorsys
import dataclasses
import hashlib
import json
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds

from cows_jax.configs.defaults import FIELDS
from cows_jax.data import builds, records

# Bumped whenever rendering changes, so that datasets built by older code are not reused.
_GENERATOR_VERSION = 1
# Example seeds hold a split's index here: new splits are appended, so no example changes.
SPLITS = ('train', 'val', 'single_label', 'web')
DATASET_SPLITS = ('train', 'val')  # built together: the dataset's splits
EXTRA_SPLITS = ('single_label', 'web')  # each built alone: extra classifier images
# The spec fields of each split: a build's fingerprint leaves out those of splits it lacks.
_SPLIT_FIELDS = {
  'train': ('train_size',),
  'val': ('val_size',),
  'single_label': ('single_label_size',),
  'web': ('web_size', 'web_noise_rate'),
}
# The spec's fields: config fields data.<name> (sources.synthetic_spec copies them).
SYNTHETIC_FIELDS = (
  'num_classes', 'image_size', 'train_size', 'val_size', 'seed', 'max_objects',
  'single_label_size', 'web_size', 'web_noise_rate',
)  # fmt: skip
MIN_VISIBLE_FRACTION = 0.01  # objects with a smaller visible core are unlabelled (ignore)
WEAK_SALIENCY_PROB = 0.10  # fraction of objects the simulated saliency nearly misses
PARTIAL_SALIENCY_PROB = 0.15  # fraction of objects whose saliency misses one side
CLUTTER_SALIENCY_PROB = 0.30  # fraction of clutter items that become saliency false positives

CLASS_NAMES = (
    "disc", "square", "triangle", "star", "ring", "cross",
    "ellipse", "hexagon", "crescent", "heart", "arrow", "tee",
)  # fmt: skip


def _default(name: str):
  """The default of config field data.`name` (configs/defaults.py)."""
  return FIELDS[f'data.{name}'].default


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Everything that determines the dataset's content; its fingerprint names the build. Each
  field is the config field data.<name>, with its default and allowed values."""

  num_classes: int = _default('num_classes')
  image_size: int = _default('image_size')
  train_size: int = _default('train_size')
  val_size: int = _default('val_size')
  seed: int = _default('seed')
  max_objects: int = _default('max_objects')
  single_label_size: int = _default('single_label_size')
  web_size: int = _default('web_size')
  web_noise_rate: float = _default('web_noise_rate')  # fraction of web images with wrong labels

  def __post_init__(self):
    # The config's ranges (a spec may be made without a config), then this world's own.
    for name in SYNTHETIC_FIELDS:
      if problem := FIELDS[f'data.{name}'].problem(f'SyntheticSpec.{name}', getattr(self, name)):
        raise ValueError(problem)
    if not 1 <= self.num_classes <= len(CLASS_NAMES):
      raise ValueError(
        f'SyntheticSpec.num_classes must be in 1..{len(CLASS_NAMES)}, got {self.num_classes}'
      )
    if not 32 <= self.image_size <= 512:
      raise ValueError(f'SyntheticSpec.image_size must be in 32..512, got {self.image_size}')

  def fingerprint(self, splits: tuple[str, ...] = DATASET_SPLITS) -> str:
    """Short stable hash of what the build of `splits` depends on: the fields, less those of
    other splits, and the generator version. For train and val that is every field the spec
    had before the extra splits, so their builds kept their names."""
    others = {f for s in SPLITS if s not in splits for f in _SPLIT_FIELDS[s]}
    payload = {k: v for k, v in dataclasses.asdict(self).items() if k not in others}
    payload['generator_version'] = _GENERATOR_VERSION
    if tuple(splits) != DATASET_SPLITS:
      payload['splits'] = list(splits)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

  def split_size(self, split: str) -> int:
    """Number of examples in `split`."""
    return getattr(self, _SPLIT_FIELDS[_check_split(split)][0])


def _check_split(split: str) -> str:
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  return split


# ----------------------------------------------------------------------------- shapes
# Each shape takes local coordinates (u, v) in which the shape roughly fills the unit disc.


def _polygon(u, v, sides: int, inradius: float):
  """Regular polygon as an intersection of half-planes."""
  angles = np.pi / 2 + 2 * np.pi * np.arange(sides) / sides
  support = np.multiply.outer(np.cos(angles), u) + np.multiply.outer(np.sin(angles), v)
  return support.max(axis=0) <= inradius


def _star(u, v):
  phase = np.mod(5 * np.arctan2(v, u) / (2 * np.pi), 1.0)
  return np.hypot(u, v) <= 0.42 + 0.58 * np.abs(2 * phase - 1) ** 1.5


def _heart(u, v):
  x, y = 1.2 * u, -1.2 * v + 0.15
  return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


def _arrow(u, v):
  shaft = (np.abs(v) <= 0.2) & (u >= -1.0) & (u <= 0.15)
  head = (u >= 0.15) & (u <= 1.0) & (np.abs(v) <= 0.7 * (1.0 - u) / 0.85)
  return shaft | head


def _tee(u, v):
  bar = (np.abs(u) <= 0.9) & (v >= -0.9) & (v <= -0.45)
  stem = (np.abs(u) <= 0.24) & (v > -0.45) & (v <= 0.9)
  return bar | stem


_SHAPES: tuple[Callable, ...] = (
  lambda u, v: u**2 + v**2 <= 1.0,  # disc
  lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,  # square
  lambda u, v: _polygon(u, v, 3, 0.55),  # triangle
  _star,
  lambda u, v: (u**2 + v**2 <= 1.0) & (u**2 + v**2 >= 0.55**2),  # ring
  lambda u, v: (
    ((np.abs(u) <= 0.28) | (np.abs(v) <= 0.28)) & (np.maximum(np.abs(u), np.abs(v)) <= 0.95)
  ),
  lambda u, v: u**2 + (v / 0.5) ** 2 <= 1.0,  # ellipse
  lambda u, v: _polygon(u, v, 6, 0.85),  # hexagon
  lambda u, v: (u**2 + v**2 <= 1.0) & ((u - 0.5) ** 2 + v**2 >= 0.8**2),  # crescent
  _heart,
  _arrow,
  _tee,
)

# ----------------------------------------------------------------------------- textures
# Each texture maps local coordinates and a per-instance rng to a mixing weight in [0, 1].


def _direction(rng, u, v):
  angle = rng.uniform(0, np.pi)
  return u * np.cos(angle) + v * np.sin(angle)


def _stripes(rng, u, v):
  return (
    np.sin(np.pi * rng.uniform(2.5, 4.5) * _direction(rng, u, v) + rng.uniform(0, 6.3)) > 0
  ).astype(float)


def _checker(rng, u, v):
  cells = rng.uniform(2.0, 3.5)
  return np.mod(np.floor(cells * u + 9) + np.floor(cells * v + 9), 2)


def _dots(rng, u, v):
  cells = rng.uniform(2.5, 4.0)
  fu, fv = np.mod(cells * u + 0.5, 1.0) - 0.5, np.mod(cells * v + 0.5, 1.0) - 0.5
  return (np.hypot(fu, fv) <= rng.uniform(0.22, 0.32)).astype(float)


def _marble(rng, u, v):
  waves = sum(
    np.sin(np.pi * rng.uniform(1.0, 3.0) * _direction(rng, u, v) + rng.uniform(0, 6.3))
    for _ in range(3)
  )
  return np.clip(0.5 + waves / 4, 0.0, 1.0)


def _gradient(rng, u, v):
  return np.clip(0.5 + 0.5 * _direction(rng, u, v), 0.0, 1.0)


def _waves(rng, u, v):
  bend = rng.uniform(0.2, 0.4) * np.sin(np.pi * rng.uniform(1.5, 2.5) * v)
  return (np.sin(np.pi * rng.uniform(3.0, 4.5) * (u + bend)) > 0).astype(float)


def _rings(rng, u, v):
  return (np.sin(np.pi * rng.uniform(3.0, 5.0) * np.hypot(u, v) + rng.uniform(0, 6.3)) > 0).astype(
    float
  )


@dataclasses.dataclass(frozen=True)
class _Appearance:
  """A class's appearance distribution: hue centre, saturation/value ranges, texture."""

  hue: float
  sat: tuple[float, float]
  val: tuple[float, float]
  texture: Callable
  second: str  # how the texture's second colour relates to the base: 'dark' | 'light' | 'shift'


_APPEARANCES = (
  _Appearance(0.00, (0.75, 0.95), (0.75, 0.95), _marble, 'dark'),  # disc: red
  _Appearance(0.62, (0.65, 0.90), (0.60, 0.85), _checker, 'light'),  # square: blue
  _Appearance(0.15, (0.75, 0.95), (0.85, 1.00), _stripes, 'dark'),  # triangle: yellow
  _Appearance(0.34, (0.65, 0.90), (0.45, 0.70), _dots, 'light'),  # star: green
  _Appearance(0.08, (0.80, 1.00), (0.85, 1.00), _gradient, 'shift'),  # ring: orange
  _Appearance(0.77, (0.55, 0.80), (0.50, 0.75), _stripes, 'light'),  # cross: purple
  _Appearance(0.50, (0.60, 0.85), (0.70, 0.90), _marble, 'dark'),  # ellipse: cyan
  _Appearance(0.88, (0.65, 0.90), (0.75, 0.95), _dots, 'dark'),  # hexagon: magenta
  _Appearance(0.24, (0.70, 0.90), (0.70, 0.90), _checker, 'dark'),  # crescent: lime
  _Appearance(0.96, (0.30, 0.50), (0.90, 1.00), _gradient, 'shift'),  # heart: pink
  _Appearance(0.45, (0.70, 0.95), (0.35, 0.55), _waves, 'light'),  # arrow: teal
  _Appearance(0.07, (0.55, 0.75), (0.35, 0.50), _rings, 'light'),  # tee: brown
)
assert len(_APPEARANCES) == len(_SHAPES) == len(CLASS_NAMES)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
  return np.asarray(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)))


def _class_colors(rng, appearance: _Appearance) -> tuple[np.ndarray, np.ndarray]:
  """Jittered base colour and texture colour for one instance of a class."""
  h = appearance.hue + rng.uniform(-0.03, 0.03)
  s, v = rng.uniform(*appearance.sat), rng.uniform(*appearance.val)
  second = {
    'dark': (h, s, v * rng.uniform(0.35, 0.55)),
    'light': (h, s * rng.uniform(0.2, 0.4), min(1.0, v + 0.3)),
    'shift': (h + rng.choice([-1, 1]) * rng.uniform(0.05, 0.08), s, v * 0.8),
  }[appearance.second]
  return _hsv(h, s, v), _hsv(*second)


# ----------------------------------------------------------------------------- rendering helpers


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates (y, x)."""
  coords = np.arange(size, dtype=np.float64) + 0.5
  return np.meshgrid(coords, coords, indexing='ij')


def _local_coords(dy, dx, radius, angle, aspect):
  """Rotated, anisotropically scaled coordinates in which an object fills the unit disc.

  Shapes reach at most 1.28 (tee corners) in these units and the aspect factor is at most
  exp(0.2), so an object stays within 1.45 * radius of its centre.
  """
  c, s = np.cos(angle), np.sin(angle)
  return (c * dx + s * dy) / (radius * np.sqrt(aspect)), (-s * dx + c * dy) * np.sqrt(
    aspect
  ) / radius


def _interp_matrix(size: int, cells: int) -> np.ndarray:
  """Linear interpolation weights from `cells` control points to `size` pixels."""
  pos = np.linspace(0, cells - 1, size)
  return np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(cells)[None, :]))


def _smooth_noise(rng, size: int, cells: int, channels: int) -> np.ndarray:
  """Smooth random field in [0, 1], bilinear upsampling of a coarse random grid."""
  m = _interp_matrix(size, cells)
  return (m @ rng.random((channels, cells, cells)) @ m.T).transpose(1, 2, 0)


def _separable_filter(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
  """Filters the two leading axes with an odd 1-D kernel, edge-replicated.

  Shifted-slice sums instead of matrix products: BLAS threading makes tiny matmuls slow.
  """
  radius = len(taps) // 2
  for axis in (0, 1):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(x, pad, mode='edge')
    n = x.shape[axis]
    x = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(taps))
  return x


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian blur truncated at 3 sigma."""
  offsets = np.arange(-int(3 * sigma + 0.5), int(3 * sigma + 0.5) + 1)
  taps = np.exp(-(offsets**2) / (2 * sigma**2))
  return _separable_filter(x, taps / taps.sum())


def _soften(image: np.ndarray) -> np.ndarray:
  """[1, 2, 1] / 4 filter: anti-aliases the hard rasterized edges."""
  return _separable_filter(image, np.array([0.25, 0.5, 0.25]))


def _boundary_band(instances: np.ndarray) -> np.ndarray:
  """Object pixels whose instance id differs from a 4-neighbour: a 1-px band inside object edges.

  Two touching objects thus get a 2-px band between them, like VOC's band around each object.
  """
  band = np.zeros(instances.shape, bool)
  diff_v = instances[1:, :] != instances[:-1, :]
  diff_h = instances[:, 1:] != instances[:, :-1]
  band[1:, :] |= diff_v
  band[:-1, :] |= diff_v
  band[:, 1:] |= diff_h
  band[:, :-1] |= diff_h
  return band & (instances >= 0)


# ----------------------------------------------------------------------------- scene parts


def _background(rng, size: int, yy, xx) -> np.ndarray:
  """Smooth coloured noise over a colour gradient, plus finer mottling."""
  base_a = _hsv(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.8))
  base_b = _hsv(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.8))
  angle = rng.uniform(0, 2 * np.pi)
  ramp = ((np.cos(angle) * xx + np.sin(angle) * yy) / size * 0.7 + 0.5).clip(0, 1)[..., None]
  image = base_a * (1 - ramp) + base_b * ramp
  image += 0.35 * (_smooth_noise(rng, size, int(rng.integers(3, 7)), 3) - 0.5)
  image += 0.12 * (_smooth_noise(rng, size, int(rng.integers(10, 16)), 1) - 0.5)
  return image


def _plain_background(rng, size: int, yy, xx) -> np.ndarray:
  """`_background`'s colour gradient with a third of its coarse noise and no mottling: the
  plainer backgrounds of single-label photo collections."""
  base_a = _hsv(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.8))
  base_b = _hsv(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.8))
  angle = rng.uniform(0, 2 * np.pi)
  ramp = ((np.cos(angle) * xx + np.sin(angle) * yy) / size * 0.7 + 0.5).clip(0, 1)[..., None]
  image = base_a * (1 - ramp) + base_b * ramp
  return image + 0.12 * (_smooth_noise(rng, size, 3, 3) - 0.5)


def _window_mask(size: int, centre, half: float, shape_fn: Callable) -> np.ndarray:
  """Full-size mask of a shape rasterized only inside its bounding window, for speed."""
  lo = np.clip(np.floor(np.asarray(centre) - half), 0, size).astype(int)
  hi = np.clip(np.ceil(np.asarray(centre) + half), 0, size).astype(int)
  yy, xx = np.meshgrid(np.arange(lo[0], hi[0]) + 0.5, np.arange(lo[1], hi[1]) + 0.5, indexing='ij')
  mask = np.zeros((size, size), bool)
  mask[lo[0] : hi[0], lo[1] : hi[1]] = shape_fn(yy - centre[0], xx - centre[1])
  return mask


def _clutter_mask(rng, size: int) -> np.ndarray:
  """One distractor that is not a class shape: an irregular blob, a thin line or an arc."""
  return _window_mask(size, rng.uniform(0, size, 2), 0.16 * size + 3, _clutter_shape(rng, size))


def _clutter_shape(rng, size: int) -> Callable:
  """Distractor rasterizer on offsets (dy, dx) from its centre; extent stays below 0.16 * size + 3."""
  kind = rng.integers(3)
  if kind == 0:  # irregular blob
    radius = size * rng.uniform(0.03, 0.07)
    harmonics = [(k, rng.uniform(0.15, 0.35), rng.uniform(0, 6.3)) for k in (1, 2, 3)]

    def blob(dy, dx):
      phi = np.arctan2(dy, dx)
      wobble = sum(amp * np.sin(k * phi + phase) for k, amp, phase in harmonics)
      return np.hypot(dy, dx) <= radius * (1 + wobble)

    return blob
  width = rng.uniform(1.0, 2.5)
  if kind == 1:  # straight line segment
    angle, half = rng.uniform(0, np.pi), size * rng.uniform(0.08, 0.15)

    def line(dy, dx):
      along = np.clip(dx * np.cos(angle) + dy * np.sin(angle), -half, half)
      return np.hypot(dx - along * np.cos(angle), dy - along * np.sin(angle)) <= width

    return line
  radius, start, span = (
    size * rng.uniform(0.05, 0.12),
    rng.uniform(0, 2 * np.pi),
    rng.uniform(1.0, 3.5),
  )

  def arc(dy, dx):
    in_arc = np.mod(np.arctan2(dy, dx) - start, 2 * np.pi) <= span
    return (np.abs(np.hypot(dy, dx) - radius) <= width) & in_arc

  return arc


def _clutter_color(rng, num_classes: int) -> np.ndarray:
  """Half of the distractors borrow a class colour so colour alone cannot identify objects."""
  if rng.random() < 0.5:
    return _class_colors(rng, _APPEARANCES[rng.integers(num_classes)])[0]
  return _hsv(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.3, 1.0))


def _object_mask(rng, cls: int, size: int) -> tuple[np.ndarray, tuple]:
  """Rasterized instance of class `cls` with random scale, rotation, aspect and position."""
  radius = size * rng.uniform(0.13, 0.27)
  centre = rng.uniform(0.6 * radius, size - 0.6 * radius, 2)
  pose = (radius, rng.uniform(0, 2 * np.pi), np.exp(rng.uniform(-0.2, 0.2)))
  mask = _window_mask(
    size, centre, 1.45 * radius + 1, lambda dy, dx: _SHAPES[cls](*_local_coords(dy, dx, *pose))
  )
  return mask, (centre, *pose)


def _place_objects(rng, spec: SyntheticSpec, count: int):
  """Samples `count` objects one by one; a pose is rejected if it hides too much of an
  earlier object (after 20 rejections the object is left out)."""
  size, min_area = spec.image_size, 2 * MIN_VISIBLE_FRACTION * spec.image_size**2
  instances = np.full((size, size), -1, np.int32)
  objects = []
  for _ in range(count):
    cls = int(rng.integers(spec.num_classes))
    for _attempt in range(20):
      mask, pose = _object_mask(rng, cls, size)
      areas = np.bincount(instances[instances >= 0], minlength=len(objects))
      kept = np.bincount(instances[(instances >= 0) & ~mask], minlength=len(objects))
      if mask.sum() >= min_area and np.all(kept >= 0.5 * areas):
        instances[mask] = len(objects)
        objects.append((cls, mask, pose))
        break
  return objects


def _paint(rng, image, mask, placement, appearance: _Appearance, yy, xx) -> None:
  """Fills `mask` of `image` with an instance of `appearance`, its texture in the object's own
  coordinates (`placement`: centre and pose, as _object_mask returns them)."""
  centre, *pose = placement
  u, v = _local_coords(yy[mask] - centre[0], xx[mask] - centre[1], *pose)
  base, second = _class_colors(rng, appearance)
  weight = appearance.texture(rng, u, v)[:, None]
  image[mask] = base * (1 - weight) + second * weight


def _render(rng, spec: SyntheticSpec, plain: bool = False):
  """Composites background, clutter and objects; returns image, instance ids, classes, clutter
  masks. `plain` (the single_label split): one object on a plain background, no clutter."""
  size = spec.image_size
  yy, xx = _grid(size)
  image = (_plain_background if plain else _background)(rng, size, yy, xx)
  instances = np.full((size, size), -1, np.int32)
  objects = _place_objects(rng, spec, 1 if plain else int(rng.integers(1, spec.max_objects + 1)))
  clutter = (
    []
    if plain
    else [
      (_clutter_mask(rng, size), _clutter_color(rng, spec.num_classes))
      for _ in range(rng.integers(3, 9))
    ]
  )
  on_top = rng.random(len(clutter)) < 0.2
  for mask, color in (c for c, top in zip(clutter, on_top) if not top):
    image[mask] = color
  for index, (cls, mask, placement) in enumerate(objects):
    _paint(rng, image, mask, placement, _APPEARANCES[cls], yy, xx)
    instances[mask] = index
  for mask, color in (c for c, top in zip(clutter, on_top) if top):
    image[mask] = color
    instances[mask] = -1
  image = _soften(image) + rng.normal(0, 0.025, image.shape)
  return image, instances, [cls for cls, _, _ in objects], [m for m, _ in clutter]


def _ground_truth(instances: np.ndarray, classes: list[int], num_classes: int):
  """VOC-style mask and labels; instances whose visible core is too small become ignore."""
  band = _boundary_band(instances)
  core_area = np.bincount(instances[(instances >= 0) & ~band], minlength=len(classes))
  visible = core_area >= MIN_VISIBLE_FRACTION * instances.size
  lookup = np.array(
    [c + 1 if vis else records.IGNORE_INDEX for c, vis in zip(classes, visible)] + [0], np.uint8
  )
  mask = lookup[instances]  # index -1 (background) picks the trailing 0
  mask[band] = records.IGNORE_INDEX
  labels = np.zeros(num_classes, np.uint8)
  labels[[c for c, vis in zip(classes, visible) if vis]] = 1
  return mask, labels


def _saliency(rng, instances: np.ndarray, clutter: list[np.ndarray], size: int) -> np.ndarray:
  """Simulated off-the-shelf saliency: blurred objects with misses and false positives."""
  yy, xx = _grid(size)
  objects = instances >= 0
  sal = np.zeros((size, size))
  for index in np.unique(instances[objects]):
    region = instances == index
    strength = (
      rng.uniform(0.05, 0.3) if rng.random() < WEAK_SALIENCY_PROB else rng.uniform(0.7, 1.0)
    )
    if rng.random() < PARTIAL_SALIENCY_PROB:  # miss the part of the object beyond a random line
      angle, cy, cx = rng.uniform(0, 2 * np.pi), yy[region].mean(), xx[region].mean()
      side = np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy) > 0
      strength = np.where(side, strength * rng.uniform(0.0, 0.3), strength)
    sal = np.where(region, strength, sal)
  for mask in clutter:
    if rng.random() < CLUTTER_SALIENCY_PROB:
      sal = np.where(mask & ~objects, rng.uniform(0.35, 0.8), sal)
  sal += 0.3 * np.clip(_smooth_noise(rng, size, 5, 1)[..., 0] - 0.6, 0, None)
  sal = _blur(sal, size * rng.uniform(0.012, 0.03)) + rng.normal(0, 0.04, sal.shape)
  return np.round(255 * np.clip(sal, 0, 1)).astype(np.uint8)


def _web_labels(rng, labels: np.ndarray, noise_rate: float) -> np.ndarray:
  """The labels a web search gives: at `noise_rate`, as many classes as the image holds,
  drawn from those it lacks (it was found by a search for another class); else its own."""
  if rng.random() >= noise_rate:
    return labels
  absent = np.flatnonzero(labels == 0)
  wrong = np.zeros_like(labels)
  wrong[rng.choice(absent, min(int(labels.sum()), len(absent)), replace=False)] = 1
  return wrong


def generate_example(spec: SyntheticSpec, split: str, index: int) -> dict:
  """Example `index` of `split`, a pure function of (spec, split, index).

  Returns {'image': uint8[H,W,3], 'mask': uint8[H,W], 'saliency': uint8[H,W], 'labels': uint8[C]};
  the web split's also 'true_labels' uint8[C] (the mask holds the true classes).
  """
  if not 0 <= index < spec.split_size(split):
    raise IndexError(
      f'index {index} out of range for split {split!r} of size {spec.split_size(split)}'
    )
  if split == 'web' and spec.num_classes <= spec.max_objects:
    raise ValueError(
      f'the web split needs num_classes > max_objects (got {spec.num_classes} and '
      f'{spec.max_objects}), so that each image lacks a class to be wrongly labelled with; '
      'raise data.num_classes or lower data.max_objects'
    )
  rng = np.random.default_rng([spec.seed, SPLITS.index(split), index])
  while True:  # re-draw the rare scene in which no object stays visible enough to be labelled
    image, instances, classes, clutter = _render(rng, spec, plain=split == 'single_label')
    mask, labels = _ground_truth(instances, classes, spec.num_classes)
    if labels.any():
      break
  example = {
    'image': np.round(255 * np.clip(image, 0, 1)).astype(np.uint8),
    'mask': mask,
    'saliency': _saliency(rng, instances, clutter, spec.image_size),
    'labels': labels,
  }
  if split == 'web':
    example['labels'] = _web_labels(rng, labels, spec.web_noise_rate)
    example['true_labels'] = labels
  return example


# ----------------------------------------------------------------------------- TFDS storage


class CowsSynthetic(builds.SpecBuilder):
  """TFDS builder of some splits of one SyntheticSpec; the config name is their fingerprint."""

  DESCRIPTION = 'CoWS synthetic weakly supervised segmentation data'

  def features(self) -> dict:
    c = self.spec.num_classes
    features = {
      'image': tfds.features.Tensor(shape=(), dtype=np.object_),
      'mask': tfds.features.Tensor(shape=(), dtype=np.object_),
      'saliency': tfds.features.Tensor(shape=(), dtype=np.object_),
      'labels': tfds.features.Tensor(shape=(c,), dtype=np.uint8),
    }
    if 'web' in self.builder_config.splits:
      features['true_labels'] = tfds.features.Tensor(shape=(c,), dtype=np.uint8)
    return features

  def record(self, split: str, index: int) -> dict:
    example = generate_example(self.spec, split, index)
    for field in ('image', 'mask', 'saliency'):
      example[field] = records.encode_png(example[field])
    return example


def _prepared(
  spec: SyntheticSpec, data_dir: str, splits: tuple[str, ...] = DATASET_SPLITS
) -> CowsSynthetic:
  return builds.prepared_spec(
    CowsSynthetic,
    spec,
    splits,
    data_dir,
    spec.fingerprint(splits),
    f'synthetic dataset {spec}, {"/".join(splits)}',
  )


def _record_source(source, build_dir: str) -> records.RecordSource:
  return records.RecordSource(source, {}, build_dir)


def build(spec: SyntheticSpec, data_dir: str) -> str:
  """Builds the dataset for `spec` unless a complete build exists (builds.prepared);
  returns its directory."""
  return str(_prepared(spec, data_dir).data_dir)


def load_sources(spec: SyntheticSpec, data_dir: str) -> dict[str, records.RecordSource]:
  """Builds if needed, then returns {'train': source, 'val': source} of decoded records."""
  return builds.split_sources(_prepared(spec, data_dir), _record_source)


def load_split(spec: SyntheticSpec, split: str, data_dir: str) -> records.RecordSource:
  """The extra split `split` (EXTRA_SPLITS), built alone if needed, as decoded records."""
  if split not in EXTRA_SPLITS:
    raise ValueError(f'{split!r} is not an extra split of the synthetic dataset ({EXTRA_SPLITS})')
  return builds.split_sources(_prepared(spec, data_dir, (split,)), _record_source)[split]
