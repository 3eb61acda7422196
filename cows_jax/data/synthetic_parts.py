"""The parts world: a synthetic world in which a single image's CAM is partial.

The paper's premise is that a classifier's CAM covers only the most discriminative part of
an object. In the shapes world (synthetic.py) every object pixel carries its class's hue and
texture, so the whole object is discriminative. Here classes come in families:
- the members of a family share a large body: its shape, colour and texture are drawn by one
  sampler (the family's), so the body tells the family and nothing more;
- each class has its own small part on the body's rim (a disc of about 15% of the object's
  area, at least 16 px across at 112 px: 2 x 2 cells of a stride-8 map), with a colour and
  a coarse texture no other class and no clutter uses. Only the part tells a class from its
  siblings. `part_offset` moves the part out of the body; `body_aspect` elongates the body
  and puts the part at one end of it; `body_hues` picks the bodies' hues.

`PARTS_PER_FAMILY` classes per family; class k is part k of family k // PARTS_PER_FAMILY.
Siblings never share an image: an image holds one object, or (at `two_object_rate`) two of
different families; at `unlabelled_rate` it also holds an unlabelled body (a family's body
without a part, background in the mask), so that bodies turn up in images that hold none of
their family's classes. Part colours survive the paper's colour jitter (hue +-0.1 turn,
saturation x0.7..1.3, one draw per image): the parts of one family differ in hue by a third
of a turn, parts of one hue differ in texture, parts are saturated (>= 0.8, >= 0.56 after
the jitter) where bodies and the random clutter colours are not (<= 0.45), and the random
clutter's hues lie between the part hues.

Each example carries the image, the labels, the VOC-style mask (0 background, k+1 for class
k, 255 on a 1 px band), a simulated saliency map (synthetic.py's), and `part_mask`: k+1 on the
visible pixels of a class-k object's part, 0 elsewhere. The drawing helpers are synthetic.py's
(imported, not copied); the shapes world is not changed by this module.

The world's ImageNet stand-in (`PartsPretrainSpec`, for `cows-jax pretrain`) holds single
objects labelled by (family body, part), every body with every part: the segmentation
classes (a family's body with one of its own parts) first, then the combinations the
segmentation world never shows (a body with another family's part).

Example i of split s depends only on (seed, s, i).
"""

import dataclasses
import hashlib
import json

import numpy as np
import tensorflow_datasets as tfds

from cows_jax.data import builds, records, synthetic
from cows_jax.imagenet_standin import dataset as standin_dataset

# Bumped whenever rendering changes, so that datasets built by older code are not reused.
_GENERATOR_VERSION = 3  # 2: low-contrast body textures, light part textures; 3: larger,
# coarser parts (the gate)
SPLITS = ('train', 'val')
PARTS_PER_FAMILY = 3
# An object's part keeps at least this fraction of its area visible, an earlier object's
# body at least BODY_VISIBLE: a pose that hides more is redrawn.
PART_VISIBLE = 0.95
BODY_VISIBLE = 0.6
PART_RADIUS = 0.36  # part disc radius / body radius: 12-21% of the object area (median 15%)
# Where the part's centre sits, outside the body's rim, in part radii (-0.3: 30% of its radius
# inside: generator version 3's parts). Both specs' default.
PART_OFFSET = -0.3
PART_OFFSET_RANGE = (-1, 0.8)  # beyond 0.8 the part leaves the body
# A body's length over its width (the area kept), before a +-0.15 log jitter. Above 1 the part
# sits at one end of the long axis (give or take END_SPREAD radians), like an animal's head;
# at 1 (generator version 3's round bodies) anywhere on the rim. Both specs' default.
BODY_ASPECT = 1.0
BODY_ASPECT_RANGE = (1, 3)  # longer bodies leave the image
END_SPREAD = 0.3
# The families' body hues (disc, square, hexagon, oval). 'version3': generator version 3's,
# two of them within 0.12 turn of a part hue (square 0.55 of blue 2/3, hexagon 0.30 of green
# 1/3); 'between_parts': each a sixth of a turn from every part hue (the oval shares the
# disc's and differs by shape and texture). Both specs' default is 'version3'.
BODY_HUES = {
  'version3': (0.08, 0.55, 0.30, 0.80),
  'between_parts': (1 / 6, 1 / 2, 5 / 6, 1 / 6),
}
BODY_HUES_DEFAULT = 'version3'
# The spec fields that shape a world's objects, shared by the world and its stand-in (the
# config's data.<field>).
OBJECT_FIELDS = ('part_offset', 'body_aspect', 'body_hues')


@dataclasses.dataclass(frozen=True)
class _Body:
  """A family's body sampler: shape (on local coordinates), saturation/value, texture (its
  hue is the spec's, BODY_HUES)."""

  name: str
  shape: object
  sat: tuple[float, float]
  val: tuple[float, float]
  texture: object
  second: str


# Desaturated bodies (saturation <= 0.45): the saturated colours belong to the parts. Body
# textures are low-contrast ('shift': a hue shift of 0.05 to 0.08, 80% of the value).
_BODIES = (
  _Body('disc', synthetic._SHAPES[0], (0.25, 0.45), (0.55, 0.80), synthetic._marble, 'shift'),
  _Body('square', synthetic._SHAPES[1], (0.25, 0.45), (0.50, 0.75), synthetic._waves, 'shift'),
  _Body(
    'hexagon',
    synthetic._SHAPES[7],
    (0.25, 0.45),
    (0.45, 0.70),
    synthetic._gradient,
    'shift',
  ),
  _Body(
    'oval',
    lambda u, v: u**2 + (v / 0.8) ** 2 <= 1.0,
    (0.20, 0.40),
    (0.60, 0.85),
    synthetic._rings,
    'shift',
  ),
)
MAX_FAMILIES = len(_BODIES)
FAMILY_NAMES = tuple(b.name for b in _BODIES)
# Part hues: a third of a turn apart within a family, more than the jitter's +-0.1 turn.
PART_HUES = (0.0, 1 / 3, 2 / 3)
_PART_HUE_NAMES = ('red', 'green', 'blue')
_PART_TEXTURES = (
  ('dots', synthetic._dots),
  ('stripes', synthetic._stripes),
  ('checker', synthetic._checker),
  ('rings', synthetic._rings),
)


def _part_appearance(k: int) -> synthetic._Appearance:
  """Class k's part: hue by its rank in the family, texture by rank + family, so that every
  class has its own (hue, texture) pair and siblings differ in both."""
  family, rank = divmod(k, PARTS_PER_FAMILY)
  texture = _PART_TEXTURES[(rank + family) % len(_PART_TEXTURES)][1]
  return synthetic._Appearance(PART_HUES[rank], (0.80, 1.00), (0.80, 1.00), texture, 'light')


MAX_CLASSES = MAX_FAMILIES * PARTS_PER_FAMILY
CLASS_NAMES = tuple(
  f'{FAMILY_NAMES[k // PARTS_PER_FAMILY]}_{_PART_HUE_NAMES[k % PARTS_PER_FAMILY]}_'
  f'{_PART_TEXTURES[(k % PARTS_PER_FAMILY + k // PARTS_PER_FAMILY) % len(_PART_TEXTURES)][0]}'
  for k in range(MAX_CLASSES)
)


def family(k: int) -> int:
  """The family of class k."""
  return k // PARTS_PER_FAMILY


@dataclasses.dataclass(frozen=True)
class PartsSpec:
  """Everything that determines the parts world's content; its fingerprint names the build."""

  num_classes: int = 9
  image_size: int = 112
  train_size: int = 1000
  val_size: int = 200
  seed: int = 0
  two_object_rate: float = 0.5  # fraction of images drawn with two objects
  unlabelled_rate: float = 0.0  # fraction of images that also hold an unlabelled body
  part_offset: float = PART_OFFSET  # the part's centre outside the body's rim, in part radii
  body_aspect: float = BODY_ASPECT  # the body's length over its width
  body_hues: str = BODY_HUES_DEFAULT  # a key of BODY_HUES

  def __post_init__(self):
    if self.num_classes % PARTS_PER_FAMILY or not 1 <= self.num_classes <= MAX_CLASSES:
      raise ValueError(
        f'data.num_classes must be a multiple of {PARTS_PER_FAMILY} in the parts world, '
        f'at most {MAX_CLASSES} ({MAX_FAMILIES} families), got {self.num_classes}'
      )
    if not 32 <= self.image_size <= 512:
      raise ValueError(f'data.image_size must be in 32..512, got {self.image_size}')
    for field in ('train_size', 'val_size'):
      if getattr(self, field) < 1:
        raise ValueError(f'data.{field} must be >= 1, got {getattr(self, field)}')
    if self.seed < 0:
      raise ValueError(f'data.seed must be >= 0, got {self.seed}')
    if not 0 <= self.two_object_rate <= 1:
      raise ValueError(f'two_object_rate must be in 0..1, got {self.two_object_rate}')
    if not 0 <= self.unlabelled_rate <= 1:
      raise ValueError(f'data.unlabelled_rate must be in 0..1, got {self.unlabelled_rate}')
    _check_objects(self)

  @property
  def num_families(self) -> int:
    return self.num_classes // PARTS_PER_FAMILY

  def fingerprint(self, splits: tuple[str, ...] = SPLITS) -> str:
    """Short stable hash of every field, the world and the generator version."""
    return _fingerprint(self)

  def split_size(self, split: str) -> int:
    if split not in SPLITS:
      raise ValueError(f'split must be one of {SPLITS} in the parts world, got {split!r}')
    return {'train': self.train_size, 'val': self.val_size}[split]


def _check_objects(spec) -> None:
  """The object fields both specs share (OBJECT_FIELDS)."""
  low, high = PART_OFFSET_RANGE
  if not low <= spec.part_offset <= high:
    raise ValueError(
      f'data.part_offset must be in {low}..{high} part radii (beyond {high} the part leaves '
      f'the body), got {spec.part_offset}'
    )
  low, high = BODY_ASPECT_RANGE
  if not low <= spec.body_aspect <= high:
    raise ValueError(
      f'data.body_aspect must be in {low}..{high} (length over width; longer bodies leave the '
      f'image), got {spec.body_aspect}'
    )
  if spec.body_hues not in BODY_HUES:
    raise ValueError(f'data.body_hues must be one of {tuple(BODY_HUES)}, got {spec.body_hues!r}')


# The spec fields added after generator version 3, at the values that draw version 3's world.
_ADDED_AFTER_VERSION_3 = {
  'unlabelled_rate': 0.0,
  'part_offset': PART_OFFSET,
  'body_aspect': BODY_ASPECT,
  'body_hues': BODY_HUES_DEFAULT,
}


def _fingerprint(spec) -> str:
  """Short stable hash of every field of a spec (either), the world and the generator
  version. A field of _ADDED_AFTER_VERSION_3 at its version-3 value is left out, so that the
  builds and the backbones made before it keep their names."""
  payload = dict(dataclasses.asdict(spec), world='parts', generator_version=_GENERATOR_VERSION)
  for name, before in _ADDED_AFTER_VERSION_3.items():
    if payload.get(name, before) == before:
      payload.pop(name, None)
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- objects


def _rim_distance(body: np.ndarray, centre, direction, limit: float) -> float:
  """Distance from `centre` along `direction` to the body's last pixel (0.5 px steps)."""
  size = body.shape[0]
  t = np.arange(0.0, limit, 0.5)
  y = np.floor(centre[0] + t * direction[0]).astype(int)
  x = np.floor(centre[1] + t * direction[1]).astype(int)
  inside = (y >= 0) & (y < size) & (x >= 0) & (x < size)
  hit = np.zeros_like(t, bool)
  hit[inside] = body[y[inside], x[inside]]
  return float(t[np.flatnonzero(hit)[-1]]) if hit.any() else 0.0


def _draw_object(rng, body_family: int, spec, with_part: bool = True):
  """A body of `body_family` with (`with_part`) a part disc on its rim (its centre
  `spec.part_offset` part radii outside the rim; on an elongated body, at one end of its long
  axis), the part entirely inside the image; returns (object mask, part mask, body placement,
  part placement) or None when the drawn pose leaves no room for the part. Without a part:
  an empty part mask and no part placement."""
  body = _BODIES[body_family]
  size = spec.image_size
  radius = size * rng.uniform(0.23, 0.28)
  centre = rng.uniform(0.8 * radius, size - 0.8 * radius, 2)
  angle = rng.uniform(0, 2 * np.pi)
  pose = (radius, angle, spec.body_aspect * np.exp(rng.uniform(-0.15, 0.15)))
  # The long semi-axis: radius * sqrt(aspect) (the aspect keeps the area).
  reach = radius * np.sqrt(spec.body_aspect)
  body_mask = synthetic._window_mask(
    size,
    centre,
    1.45 * reach + 1,
    lambda dy, dx: body.shape(*synthetic._local_coords(dy, dx, *pose)),
  )
  if not with_part:
    return body_mask, np.zeros_like(body_mask), (centre, *pose), None
  part_radius = PART_RADIUS * radius
  for _ in range(8):
    if spec.body_aspect == 1:
      direction_angle = rng.uniform(0, 2 * np.pi)
    else:  # one end of the long axis, give or take END_SPREAD
      end = angle + np.pi * rng.integers(2)
      direction_angle = end + rng.uniform(-END_SPREAD, END_SPREAD)
    direction = np.array([np.sin(direction_angle), np.cos(direction_angle)])
    rim = _rim_distance(body_mask, centre, direction, 1.6 * reach)
    part_centre = centre + (rim + spec.part_offset * part_radius) * direction
    if np.all(part_centre >= part_radius + 1) and np.all(part_centre <= size - part_radius - 1):
      part_mask = synthetic._window_mask(
        size, part_centre, part_radius + 1, lambda dy, dx: dy**2 + dx**2 <= part_radius**2
      )
      # Texture coordinates: the part spans about half a unit, so its texture has one or two
      # coarse periods, visible on a stride-8 map.
      part_pose = (4 * part_radius, rng.uniform(0, 2 * np.pi), 1.0)
      return body_mask | part_mask, part_mask, (centre, *pose), (part_centre, *part_pose)
  return None


def _place_objects(rng, objects_to_draw: list[tuple[int, int | None]], spec):
  """Draws the objects ((body family, part class or None: no part) each) one by one, each on
  top of the earlier ones; a pose is redrawn (up to 30 times, then the object is left out)
  when it would hide more than (1 - PART_VISIBLE) of an earlier part or (1 - BODY_VISIBLE)
  of an earlier object."""
  size = spec.image_size
  instances = np.full((size, size), -1, np.int32)
  parts = np.zeros((size, size), bool)  # visible part pixels of any placed object
  objects = []
  for body_family, cls in objects_to_draw:
    for _attempt in range(30):
      drawn = _draw_object(rng, body_family, spec, with_part=cls is not None)
      if drawn is None:
        continue
      mask, part, placement, part_placement = drawn
      n = len(objects)
      areas = np.bincount(instances[instances >= 0], minlength=n)
      kept = np.bincount(instances[(instances >= 0) & ~mask], minlength=n)
      part_areas = np.bincount(instances[parts], minlength=n)
      part_kept = np.bincount(instances[parts & ~mask], minlength=n)
      if np.all(kept >= BODY_VISIBLE * areas) and np.all(part_kept >= PART_VISIBLE * part_areas):
        instances[mask] = n
        parts = (parts & ~mask) | part
        objects.append((body_family, cls, mask, part, placement, part_placement))
        break
  return objects, instances, parts


def _classes(rng, spec: PartsSpec) -> list[int]:
  """One class, or (at two_object_rate) two classes of different families."""
  first = int(rng.integers(spec.num_classes))
  if spec.num_families < 2 or rng.random() >= spec.two_object_rate:
    return [first]
  others = [k for k in range(spec.num_classes) if family(k) != family(first)]
  return [first, int(others[rng.integers(len(others))])]


def _objects(rng, spec: PartsSpec) -> list[tuple[int, int | None]]:
  """(body family, part class) of the image's labelled objects, then (at unlabelled_rate)
  an unlabelled body: a random family's body without a part, drawn last. Its family may be a
  labelled object's: only labelled siblings never share an image."""
  drawn = [(family(k), k) for k in _classes(rng, spec)]
  if spec.unlabelled_rate and rng.random() < spec.unlabelled_rate:
    drawn.append((int(rng.integers(spec.num_families)), None))
  return drawn


def _clutter_color(rng, spec) -> np.ndarray:
  """Half of the distractors take a family's body colour; the others a random colour whose
  hue lies between the part hues and whose saturation stays below the parts'."""
  if rng.random() < 0.5:
    body = _body_appearance(rng.integers(spec.num_families), spec)
    h = body.hue + rng.uniform(-0.03, 0.03)
    return synthetic._hsv(h, rng.uniform(*body.sat), rng.uniform(*body.val))
  gap = PART_HUES[rng.integers(len(PART_HUES))] + 1 / 6
  return synthetic._hsv(gap + rng.uniform(-0.08, 0.08), rng.uniform(0.1, 0.45), rng.uniform(0.3, 1))


def _body_appearance(f: int, spec) -> synthetic._Appearance:
  b = _BODIES[f]
  return synthetic._Appearance(BODY_HUES[spec.body_hues][f], b.sat, b.val, b.texture, b.second)


def _scene(rng, spec, objects_to_draw: list[tuple[int, int | None]]):
  """Background, clutter and objects ((body family, part class or None) each) at a spec's
  image size, families and object geometry (either spec); returns the float image, instance
  ids, the kept objects' part classes (None: an unlabelled body), per-pixel part owner (-1:
  none) and the clutter masks."""
  size = spec.image_size
  yy, xx = synthetic._grid(size)
  image = synthetic._background(rng, size, yy, xx)
  objects, instances, part_pixels = _place_objects(rng, objects_to_draw, spec)
  clutter = [
    (synthetic._clutter_mask(rng, size), _clutter_color(rng, spec))
    for _ in range(rng.integers(3, 9))
  ]
  on_top = rng.random(len(clutter)) < 0.2
  for mask, color in (c for c, top in zip(clutter, on_top) if not top):
    image[mask] = color
  for body_family, cls, mask, part, placement, part_placement in objects:
    synthetic._paint(rng, image, mask, placement, _body_appearance(body_family, spec), yy, xx)
    if cls is not None:
      synthetic._paint(rng, image, part, part_placement, _part_appearance(cls), yy, xx)
  for mask, color in (c for c, top in zip(clutter, on_top) if top):
    mask = mask & ~part_pixels  # clutter never covers a part
    image[mask] = color
    instances[mask] = -1
  image = synthetic._soften(image) + rng.normal(0, 0.025, image.shape)
  owner = np.where(part_pixels, instances, -1)
  return image, instances, [o[1] for o in objects], owner, [m for m, _ in clutter]


def generate_example(spec: PartsSpec, split: str, index: int) -> dict:
  """Example `index` of `split`, a pure function of (spec, split, index).

  Returns {'image': uint8[H,W,3], 'mask': uint8[H,W], 'saliency': uint8[H,W],
  'labels': uint8[C], 'part_mask': uint8[H,W]} (part_mask: k+1 on class k's visible part).
  The saliency map also covers unlabelled bodies: an off-the-shelf model sees any object.
  """
  if not 0 <= index < spec.split_size(split):
    raise IndexError(
      f'index {index} out of range for split {split!r} of size {spec.split_size(split)}'
    )
  # A fifth seed word keeps these streams apart from the shapes world's.
  rng = np.random.default_rng([spec.seed, SPLITS.index(split), index, 0, 2])
  while True:  # re-draw the rare scene in which no object stays visible enough
    image, instances, classes, owner, clutter = _scene(rng, spec, _objects(rng, spec))
    # Unlabelled bodies are background in the mask, as unlabelled objects are in VOC's.
    labelled = [i for i, c in enumerate(classes) if c is not None]
    renumber = np.full(len(classes) + 1, -1)  # index -1 (background) picks the trailing -1
    renumber[labelled] = np.arange(len(labelled))
    mask, labels = synthetic._ground_truth(
      renumber[instances], [classes[i] for i in labelled], spec.num_classes
    )
    if labels.any():
      break
  lookup = np.array([c + 1 if c is not None and labels[c] else 0 for c in classes] + [0], np.uint8)
  return {
    'image': np.round(255 * np.clip(image, 0, 1)).astype(np.uint8),
    'mask': mask,
    'saliency': synthetic._saliency(rng, instances, clutter, spec.image_size),
    'labels': labels,
    'part_mask': lookup[owner],
  }


# ----------------------------------------------------------------------------- TFDS storage


class CowsSyntheticParts(builds.SpecBuilder):
  """TFDS builder of the parts world's train and val; the config name is the fingerprint."""

  DESCRIPTION = 'CoWS synthetic parts world (weakly supervised segmentation data)'

  def features(self) -> dict:
    png = tfds.features.Tensor(shape=(), dtype=np.object_)
    return {
      'image': png,
      'mask': png,
      'saliency': png,
      'part_mask': png,
      'labels': tfds.features.Tensor(shape=(self.spec.num_classes,), dtype=np.uint8),
    }

  def record(self, split: str, index: int) -> dict:
    example = generate_example(self.spec, split, index)
    for field in ('image', 'mask', 'saliency', 'part_mask'):
      example[field] = records.encode_png(example[field])
    return example


class PartsRecordSource(records.RecordSource):
  """records.RecordSource with the part mask: each record also has 'part_mask' uint8[H,W]."""

  def __getitem__(self, index: int) -> dict:
    out = super().__getitem__(index)
    out['part_mask'] = records.decode_png(self._source[int(index)]['part_mask'])
    return out


def _prepared(spec: PartsSpec, data_dir: str) -> CowsSyntheticParts:
  return builds.prepared_spec(
    CowsSyntheticParts,
    spec,
    SPLITS,
    data_dir,
    spec.fingerprint(),
    f'synthetic parts world {spec}',
  )


def build(spec: PartsSpec, data_dir: str) -> str:
  """Builds the dataset for `spec` unless a complete build exists; returns its directory."""
  return str(_prepared(spec, data_dir).data_dir)


def load_sources(spec: PartsSpec, data_dir: str) -> dict[str, PartsRecordSource]:
  """Builds if needed, then returns {'train': source, 'val': source} of decoded records."""
  return builds.split_sources(
    _prepared(spec, data_dir), lambda source, d: PartsRecordSource(source, {}, d)
  )


# ----------------------------------------------------------------------------- pretraining


def pretrain_classes(num_families: int) -> tuple[tuple[int, int], ...]:
  """(body family, part class) of every pretraining class: the segmentation classes (a body
  with one of its own family's parts) first, in their order, then every other body with
  every other part, by body and part."""
  parts = range(num_families * PARTS_PER_FAMILY)
  own = tuple((family(p), p) for p in parts)
  return own + tuple((f, p) for f in range(num_families) for p in parts if family(p) != f)


PRETRAIN_CLASS_COUNTS = tuple(f * f * PARTS_PER_FAMILY for f in range(1, MAX_FAMILIES + 1))


@dataclasses.dataclass(frozen=True)
class PartsPretrainSpec:
  """The parts world's ImageNet stand-in: single objects labelled by (body, part)."""

  num_classes: int = 27  # families^2 x PARTS_PER_FAMILY: every body with every part
  image_size: int = 112
  train_size: int = 2700
  val_size: int = 270
  seed: int = 0
  part_offset: float = PART_OFFSET  # as PartsSpec's: the world's objects
  body_aspect: float = BODY_ASPECT
  body_hues: str = BODY_HUES_DEFAULT

  def __post_init__(self):
    if self.num_classes not in PRETRAIN_CLASS_COUNTS:
      raise ValueError(
        f'pretrain.num_classes must be families^2 x {PARTS_PER_FAMILY} in the parts world '
        f'(every body with every part): one of {PRETRAIN_CLASS_COUNTS}, got {self.num_classes}'
      )
    if not 32 <= self.image_size <= 512:
      raise ValueError(f'pretrain.image_size must be in 32..512, got {self.image_size}')
    for field in ('train_size', 'val_size'):
      if getattr(self, field) < 1:
        raise ValueError(f'pretrain.{field} must be >= 1, got {getattr(self, field)}')
    if self.seed < 0:
      raise ValueError(f'pretrain.seed must be >= 0, got {self.seed}')
    _check_objects(self)

  @property
  def num_families(self) -> int:
    return PRETRAIN_CLASS_COUNTS.index(self.num_classes) + 1

  def fingerprint(self) -> str:
    return _fingerprint(self)

  def split_size(self, split: str) -> int:
    if split not in SPLITS:
      raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    return {'train': self.train_size, 'val': self.val_size}[split]


def generate_pretrain_example(spec: PartsPretrainSpec, split: str, index: int) -> dict:
  """Example `index` of `split`: one object of class index mod num_classes.

  Returns {'image': uint8[H,W,3], 'label': int}.
  """
  if not 0 <= index < spec.split_size(split):
    raise IndexError(
      f'index {index} out of range for split {split!r} of size {spec.split_size(split)}'
    )
  label = index % spec.num_classes
  body, part = pretrain_classes(spec.num_families)[label]
  rng = np.random.default_rng([spec.seed, SPLITS.index(split), index, 1, 2])
  while True:
    image, _, classes, _, _ = _scene(rng, spec, [(body, part)])
    if classes:
      break
  return {'image': np.round(255 * np.clip(image, 0, 1)).astype(np.uint8), 'label': label}


class CowsSyntheticPartsPretrain(standin_dataset.ClassificationBuilder):
  """TFDS builder of one PartsPretrainSpec; the config name is the spec fingerprint."""

  DESCRIPTION = 'CoWS synthetic parts world pretraining (ImageNet stand-in) data'
  GENERATE = generate_pretrain_example


def load_pretrain_sources(
  spec: PartsPretrainSpec, data_dir: str
) -> dict[str, standin_dataset.Source]:
  """Builds if needed, then returns {'train': source, 'val': source} of decoded records."""
  prepared = builds.prepared_spec(
    CowsSyntheticPartsPretrain,
    spec,
    SPLITS,
    data_dir,
    spec.fingerprint(),
    f'synthetic parts pretraining dataset {spec}',
  )
  return builds.split_sources(prepared, standin_dataset.Source)
