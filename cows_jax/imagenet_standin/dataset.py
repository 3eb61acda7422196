"""The synthetic world's ImageNet stand-in: single-label classification on the segmentation
set's visual vocabulary.

A class is one shape family of synthetic.py drawn with one appearance family (hue, saturation
and value ranges, texture): 12 x 12 = 144 classes. Class k < 12 is shape k with appearance
k, which is segmentation class k (`synthetic.CLASS_NAMES[k]`), so the segmentation classes
are among the pretraining classes as VOC's are among ImageNet's; the other 132 pair a shape
with another family's appearance, so that neither shape nor appearance alone names a class.
Each image holds one object, with the segmentation set's scale, rotation, aspect and colour
variation, on its textured backgrounds with its clutter (half of the clutter in class
colours, some of it over the object). Example i of a split has class i mod num_classes.

The rendering is synthetic.py's own (imported, not copied). Example i of split s depends only
on (seed, s, i). `build` writes the examples as a TFDS array_record dataset (image as PNG,
label, id); `load_sources` returns decoded random-access sources.
"""

import dataclasses
import hashlib
import json

import numpy as np
import tensorflow_datasets as tfds

from cows_jax.data import builds, records, synthetic

# Bumped whenever rendering changes, so that datasets built by older code are not reused.
_GENERATOR_VERSION = 1
SPLITS = ('train', 'val')
SHAPE_NAMES = synthetic.CLASS_NAMES
# The appearance families of synthetic._APPEARANCES, by their hue.
APPEARANCE_NAMES = (
  'red', 'blue', 'yellow', 'green', 'orange', 'purple',
  'cyan', 'magenta', 'lime', 'pink', 'teal', 'brown',
)  # fmt: skip
assert len(APPEARANCE_NAMES) == len(synthetic._APPEARANCES) == len(SHAPE_NAMES)


def _class_table() -> tuple[tuple[int, int], ...]:
  """(shape, appearance) of every class: the segmentation classes (k, k) first, in their
  order, then every other pair by shape and appearance."""
  n = len(SHAPE_NAMES)
  others = [(s, a) for s in range(n) for a in range(n) if s != a]
  return tuple((k, k) for k in range(n)) + tuple(others)


CLASSES = _class_table()
MAX_CLASSES = len(CLASSES)  # 144
CLASS_NAMES = tuple(f'{APPEARANCE_NAMES[a]}_{SHAPE_NAMES[s]}' for s, a in CLASSES)


def segmentation_class(k: int) -> int:
  """The pretraining class of segmentation class k (the same shape and appearance): k."""
  if not 0 <= k < len(synthetic.CLASS_NAMES):
    raise ValueError(f'segmentation class {k} out of range 0..{len(synthetic.CLASS_NAMES) - 1}')
  return CLASSES.index((k, k))


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
  """Everything that determines the dataset's content; its fingerprint names the build."""

  num_classes: int = MAX_CLASSES
  image_size: int = 64
  train_size: int = 14400
  val_size: int = 1440
  seed: int = 0

  def __post_init__(self):
    if not len(SHAPE_NAMES) <= self.num_classes <= MAX_CLASSES:
      raise ValueError(
        f'PretrainSpec.num_classes must be in {len(SHAPE_NAMES)}..{MAX_CLASSES} (the '
        f'segmentation classes and more), got {self.num_classes}'
      )
    if not 32 <= self.image_size <= 512:
      raise ValueError(f'PretrainSpec.image_size must be in 32..512, got {self.image_size}')
    for field in ('train_size', 'val_size'):
      if getattr(self, field) < 1:
        raise ValueError(f'PretrainSpec.{field} must be >= 1, got {getattr(self, field)}')
    if self.seed < 0:
      raise ValueError(f'PretrainSpec.seed must be >= 0, got {self.seed}')

  def fingerprint(self) -> str:
    """Short stable hash of all fields and the generator version."""
    payload = dict(dataclasses.asdict(self), generator_version=_GENERATOR_VERSION)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

  def split_size(self, split: str) -> int:
    """Number of examples in `split`."""
    if split not in SPLITS:
      raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    return {'train': self.train_size, 'val': self.val_size}[split]


def generate_example(spec: PretrainSpec, split: str, index: int) -> dict:
  """Example `index` of `split`, a pure function of (spec, split, index).

  Returns {'image': uint8[H,W,3], 'label': int}.
  """
  if not 0 <= index < spec.split_size(split):
    raise IndexError(
      f'index {index} out of range for split {split!r} of size {spec.split_size(split)}'
    )
  label = index % spec.num_classes
  shape, appearance = CLASSES[label]
  # A fourth seed word keeps these streams apart from the segmentation set's (seed, s, i).
  rng = np.random.default_rng([spec.seed, SPLITS.index(split), index, 1])
  size = spec.image_size
  yy, xx = synthetic._grid(size)
  image = synthetic._background(rng, size, yy, xx)
  clutter = [
    (synthetic._clutter_mask(rng, size), synthetic._clutter_color(rng, len(SHAPE_NAMES)))
    for _ in range(rng.integers(3, 9))
  ]
  on_top = rng.random(len(clutter)) < 0.2
  for mask, color in (c for c, top in zip(clutter, on_top) if not top):
    image[mask] = color
  mask, placement = synthetic._object_mask(rng, shape, size)
  synthetic._paint(rng, image, mask, placement, synthetic._APPEARANCES[appearance], yy, xx)
  for mask, color in (c for c, top in zip(clutter, on_top) if top):
    image[mask] = color
  image = synthetic._soften(image) + rng.normal(0, 0.025, image.shape)
  return {'image': np.round(255 * np.clip(image, 0, 1)).astype(np.uint8), 'label': label}


# ----------------------------------------------------------------------------- TFDS storage


class ClassificationBuilder(builds.SpecBuilder, skip_registration=True):
  """A SpecBuilder of single-label images (this stand-in's and the parts world's pretraining
  sets): a PNG and its class id a record, from the subclass's GENERATE(spec, split, index)
  -> {'image', 'label'}."""

  GENERATE = None

  def features(self) -> dict:
    return {
      'image': tfds.features.Tensor(shape=(), dtype=np.object_),
      'label': tfds.features.Tensor(shape=(), dtype=np.int64),
    }

  def record(self, split: str, index: int) -> dict:
    example = type(self).GENERATE(self.spec, split, index)
    return {'image': records.encode_png(example['image']), 'label': example['label']}


class CowsSyntheticPretrain(ClassificationBuilder):
  """TFDS builder of one PretrainSpec; the config name is the spec fingerprint."""

  DESCRIPTION = 'CoWS synthetic pretraining (ImageNet stand-in) classification data'
  GENERATE = generate_example


class Source:
  """Random-access source (grain RandomAccessDataSource) of decoded records
  {'image': uint8[H,W,3], 'label': int, 'id': str}; `labels()` decodes no image."""

  def __init__(self, source, build_dir: str):
    self._source, self.build_dir = source, build_dir

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    record = self._source[int(index)]
    return {
      'image': records.decode_png(record['image']),
      'label': int(record['label']),
      'id': bytes(record['id']).decode(),
    }

  def labels(self) -> np.ndarray:
    return np.asarray([int(self._source[i]['label']) for i in range(len(self))], np.int64)

  def __repr__(self) -> str:
    return f'imagenet_standin.dataset.Source({self.build_dir}, {len(self)} records)'


def _prepared(spec: PretrainSpec, data_dir: str) -> CowsSyntheticPretrain:
  return builds.prepared_spec(
    CowsSyntheticPretrain,
    spec,
    SPLITS,
    data_dir,
    spec.fingerprint(),
    f'synthetic pretraining dataset {spec}',
  )


def build(spec: PretrainSpec, data_dir: str) -> str:
  """Builds the dataset for `spec` unless a complete build exists (builds.prepared);
  returns its directory."""
  return str(_prepared(spec, data_dir).data_dir)


def load_sources(spec: PretrainSpec, data_dir: str) -> dict[str, Source]:
  """Builds if needed, then returns {'train': source, 'val': source} of decoded records."""
  return builds.split_sources(_prepared(spec, data_dir), Source)
