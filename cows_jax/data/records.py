"""Real datasets as TFDS array_record builds: the user's files, validated once, read by index.

A layout (voc.py, image_lists.py) turns a directory the user already has into `Entry`s per
split; `load` writes them as records {'image', 'mask', 'saliency', 'labels', 'id'} (images
kept as their original encoded bytes, masks and saliency as PNG) and returns decoded
random-access sources (`RecordSource`, which also reads the synthetic dataset's build, stored
with the same features and PNG encoding). No TensorFlow: the byte fields are plain tensors
decoded with PIL.

Per-image problems (missing or corrupt image, bad mask) skip the image, and are counted and
stored in the build's metadata for `cows-jax data check`; more than `max_skipped_fraction` of
a split fails the build, which TFDS then never marks complete. Structural problems (missing
directory or list file, unknown class name) are errors raised before anything is written.
"""

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from cows_jax.data import builds

IGNORE_INDEX = 255
UNLABELLED_SPLITS = ('test',)  # images without classes are kept only here
_CHUNK = 64  # images validated concurrently (PIL decodes without the GIL)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One image of a split, as the layout found it.

  labels: class ids, or None to take the classes present in the mask. origin: where the
  image was listed (file or file:line), for messages.
  """

  id: str
  image: str
  origin: str
  mask: str = ''  # class-id PNG (palette or grayscale) or SBD .mat; '' = none
  labels: tuple[int, ...] | None = None
  saliency: str = ''  # saliency PNG (0..255); '' = none; a missing file is counted


class BadFile(Exception):
  """A per-image problem: the image is skipped and reported."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'{path}: {reason}')
    self.path, self.reason = path, reason


def read_ids(path: str) -> list[str]:
  """Ids of a split list: first token of each line, directory and extension dropped, so
  `2007_000032`, `/JPEGImages/2007_000032.jpg /SegmentationClassAug/...` and
  `2007_000032 0 14` all give 2007_000032."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'split list {path} not found')
  with open(path) as f:
    ids = [os.path.splitext(os.path.basename(line.split()[0]))[0] for line in f if line.strip()]
  if not ids:
    raise ValueError(f'split list {path} is empty')
  return ids


def require_dir(path: str, what: str) -> str:
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{what} {path} not found')
  return path


def _read_bytes(path: str, what: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except FileNotFoundError:
    raise BadFile(path, f'missing {what}') from None
  except OSError as e:
    raise BadFile(path, f'unreadable {what} ({e})') from None


def read_image(path: str) -> tuple[bytes, tuple[int, int]]:
  """(encoded bytes, (H, W)), after a full decode: a truncated file fails here, not later."""
  data = _read_bytes(path, 'image')
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      return data, (im.height, im.width)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise BadFile(path, f'corrupt or truncated image ({e})') from None


def read_mask(path: str) -> np.ndarray:
  """Class ids uint8 [H,W] of a palette/grayscale PNG (palette indices, never colours) or of
  an SBD GTcls .mat."""
  if path.endswith('.mat'):
    try:
      return np.asarray(
        scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)['GTcls'].Segmentation,
        np.uint8,
      )
    except FileNotFoundError:
      raise BadFile(path, 'missing mask') from None
    except (OSError, ValueError, KeyError, AttributeError) as e:
      raise BadFile(path, f'unreadable SBD mask, expected GTcls.Segmentation ({e})') from None
  data = _read_bytes(path, 'mask')
  try:
    with Image.open(io.BytesIO(data)) as im:
      if im.mode not in ('P', 'L'):
        raise BadFile(
          path, f'mask has mode {im.mode}; expected class ids as a palette or grayscale PNG'
        )
      return np.asarray(im)
  except (OSError, SyntaxError, ValueError) as e:
    raise BadFile(path, f'corrupt mask ({e})') from None


def mask_classes(mask: np.ndarray, num_classes: int, path: str) -> tuple[int, ...]:
  """Object classes present in a mask (value k+1 is class k); other values are errors."""
  values = np.unique(mask)
  bad = [int(v) for v in values if v > num_classes and v != IGNORE_INDEX]
  if bad:
    raise BadFile(
      path, f'mask values {bad[:8]} outside the class ids 0..{num_classes} and {IGNORE_INDEX}'
    )
  return tuple(int(v) - 1 for v in values if 0 < v <= num_classes)


def read_saliency(path: str, shape: tuple[int, int]) -> np.ndarray | None:
  """Saliency uint8 [H,W] resized to the image's shape (with a warning); None if missing."""
  if not os.path.isfile(path):
    return None
  data = _read_bytes(path, 'saliency map')
  try:
    with Image.open(io.BytesIO(data)) as im:
      im = im.convert('L')
      if (im.height, im.width) != tuple(shape):
        logging.warning(
          '%s: saliency map is %dx%d, its image %dx%d; resized (bilinear)',
          path,
          im.width,
          im.height,
          shape[1],
          shape[0],
        )
        im = im.resize((shape[1], shape[0]), Image.BILINEAR)
      return np.asarray(im)
  except (OSError, SyntaxError, ValueError) as e:
    raise BadFile(path, f'corrupt saliency map ({e})') from None


def encode_png(array: np.ndarray) -> bytes:
  """Lossless PNG of a uint8 array: how every build stores masks and saliency (synthetic: images too)."""
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
  """The array `encode_png` stored, with its shape and dtype."""
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im)


def encode(entry: Entry, num_classes: int) -> tuple[dict, dict]:
  """(record, notes) of one entry, or BadFile. notes: saliency 'missing' / 'resized'."""
  image, shape = read_image(entry.image)
  mask_bytes, classes = b'', entry.labels or ()
  if entry.mask:
    mask = read_mask(entry.mask)
    if mask.shape != shape:
      raise BadFile(
        entry.mask,
        f'mask is {mask.shape[1]}x{mask.shape[0]}, its image {entry.image} {shape[1]}x{shape[0]}',
      )
    found = mask_classes(mask, num_classes, entry.mask)
    classes = found if entry.labels is None else entry.labels
    mask_bytes = encode_png(mask)
  saliency, notes = None, {}
  if entry.saliency:
    saliency = read_saliency(entry.saliency, shape)
    notes = {'saliency_missing': saliency is None}
  labels = np.zeros(num_classes, np.uint8)
  labels[list(classes)] = 1
  record = {
    'image': image,
    'mask': mask_bytes,
    'saliency': b'' if saliency is None else encode_png(saliency),
    'labels': labels,
    'id': entry.id.encode(),
  }
  return record, notes


def _try(fn: Callable, entry: Entry):
  try:
    return fn(entry)
  except BadFile as e:
    return e


def _validated(entries: Sequence[Entry], fn: Callable):
  """(entry, fn(entry) or BadFile) in order, `_CHUNK` at a time on a thread pool."""
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    for start in range(0, len(entries), _CHUNK):
      chunk = entries[start : start + _CHUNK]
      yield from zip(chunk, pool.map(lambda e: _try(fn, e), chunk))


def too_many_skipped(split: str, total: int, skipped: list, max_fraction: float) -> str:
  """'' or the error message for a split that lost more than `max_fraction` of its images."""
  if len(skipped) <= max_fraction * total:
    return ''
  shown = '; '.join(f'{path}: {reason}' for _, path, reason in skipped[:5])
  return (
    f'split {split!r}: {len(skipped)} of {total} images unusable (more than '
    f'data.max_skipped_fraction={max_fraction}), e.g. {shown}'
  )


@dataclasses.dataclass(eq=False)
class LayoutConfig(tfds.core.BuilderConfig):
  """Carries the layout (paths and options, small and picklable: it travels to grain workers
  with the builder); the config name is the fingerprint of the layout and its entries."""

  layout: object = None
  max_skipped_fraction: float = 0.01


class RecordsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes a layout's entries; metadata per split: class ids per record (a labels-only
  read), skipped images with reasons, saliency maps missing."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self) -> tfds.core.DatasetInfo:
    layout = self.builder_config.layout
    blob = tfds.features.Tensor(shape=(), dtype=np.object_)
    return tfds.core.DatasetInfo(
      builder=self,
      description=f'{type(self).__name__} from {layout}',
      features=tfds.features.FeaturesDict(
        {
          'image': blob,
          'mask': blob,
          'saliency': blob,
          'id': blob,
          'labels': tfds.features.Tensor(shape=(layout.num_classes,), dtype=np.uint8),
        }
      ),
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    return {
      split: self._generate_examples(split, entries)
      for split, entries in self.builder_config.layout.entries().items()
    }

  def _generate_examples(self, split: str, entries: list[Entry]):
    num_classes = self.builder_config.layout.num_classes
    classes, skipped, no_saliency, key = [], [], [], 0
    for entry, result in _validated(entries, lambda e: encode(e, num_classes)):
      problem = _problem(entry, result, split)
      if problem:
        skipped.append(problem)
        logging.warning('%s: skipped %s (%s)', split, problem[1], problem[2])
        continue
      record, notes = result
      if notes.get('saliency_missing'):
        no_saliency.append(entry.id)
      classes.append(np.flatnonzero(record['labels']).tolist())
      yield key, record
      key += 1
    error = too_many_skipped(split, len(entries), skipped, self.builder_config.max_skipped_fraction)
    if error:
      raise ValueError(error)
    self.info.metadata[split] = {
      'classes': classes,
      'skipped': skipped,
      'no_saliency': len(no_saliency),
      'no_saliency_ids': no_saliency[:20],
    }


def _problem(entry: Entry, result, split: str) -> tuple | None:
  """(id, file, reason) when the entry cannot be used in `split`."""
  if isinstance(result, BadFile):
    return entry.id, result.path, f'{result.reason}; listed in {entry.origin}'
  if not result[0]['labels'].any() and split not in UNLABELLED_SPLITS:
    return entry.id, entry.mask or entry.origin, 'empty label set'
  return None


def fingerprint(builder_cls: type, layout, entries: dict) -> str:
  """Hash of the builder version, the layout and every entry: a changed list, class map or
  option gives a new build (files edited in place under the same names do not)."""
  payload = json.dumps(
    [
      builder_cls.__name__,
      str(builder_cls.VERSION),
      repr(layout),
      {s: [dataclasses.astuple(e) for e in es] for s, es in entries.items()},
    ],
    sort_keys=True,
  )
  return hashlib.sha256(payload.encode()).hexdigest()[:12]


def load(builder_cls: type, layout, data_dir: str, max_skipped_fraction: float) -> dict:
  """Builds unless a complete build of the same fingerprint exists (process 0 first, with
  several processes); {split: RecordSource}."""
  entries = layout.entries()  # structural errors surface here, before any writing
  for split, es in entries.items():
    if not es:
      raise ValueError(f'split {split!r} of {layout} lists no images')
  name = fingerprint(builder_cls, layout, entries)
  config = LayoutConfig(
    name=name, description=repr(layout), layout=layout, max_skipped_fraction=max_skipped_fraction
  )
  builder = builds.prepared(
    lambda: builder_cls(config=config, data_dir=data_dir, file_format='array_record'),
    f'{builder_cls.name} {name} from {layout}',
  )
  sources = builder.as_data_source()
  return {
    split: RecordSource(sources[split], builder.info.metadata[split], str(builder.data_dir))
    for split in entries
  }


class RecordSource:
  """Random-access source (grain RandomAccessDataSource) of the decoded records of any build,
  real or synthetic: both store the same features. `labels()` decodes no image.

  A record without a mask gets an all-ignore mask; without saliency, a [0, 0] saliency.
  """

  def __init__(self, source: Sequence[dict], metadata: dict, build_dir: str):
    self._source, self.metadata, self.build_dir = source, metadata, build_dir

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    record = self._source[int(index)]
    with Image.open(io.BytesIO(record['image'])) as im:
      image = np.asarray(im.convert('RGB'))
    mask = (
      decode_png(record['mask'])
      if record['mask']
      else np.full(image.shape[:2], IGNORE_INDEX, np.uint8)
    )
    saliency = decode_png(record['saliency']) if record['saliency'] else np.zeros((0, 0), np.uint8)
    return {
      'image': image,
      'mask': mask,
      'saliency': saliency,
      'labels': np.asarray(record['labels'], np.uint8),
      'id': bytes(record['id']).decode(),
    }

  def labels(self) -> np.ndarray:
    if 'classes' not in self.metadata:  # synthetic builds: read the stored labels field only
      return np.stack([np.asarray(self._source[i]['labels'], np.uint8) for i in range(len(self))])
    num_classes = self._source.dataset_info.features['labels'].shape[0]
    out = np.zeros((len(self), num_classes), np.uint8)
    for i, classes in enumerate(self.metadata['classes']):
      out[i, classes] = 1
    return out

  def __repr__(self) -> str:
    return f'RecordSource({self.build_dir}, {len(self)} records)'


class Subset:
  """Records `indices` of a source (runlocal: an evenly spaced sample of a split)."""

  def __init__(self, source, indices: np.ndarray):
    self._source, self._indices = source, np.asarray(indices)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> dict:
    return self._source[int(self._indices[int(index)])]

  def labels(self) -> np.ndarray:
    return all_labels(self._source)[self._indices]


class Resized:
  """Records resized to size x size: bilinear image and saliency, nearest mask."""

  def __init__(self, source, size: int):
    self._source, self._size = source, (size, size)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    r = dict(self._source[index])
    r['image'] = _resize(r['image'], self._size, Image.BILINEAR)
    r['mask'] = _resize(r['mask'], self._size, Image.NEAREST)
    if r['saliency'].size:
      r['saliency'] = _resize(r['saliency'], self._size, Image.BILINEAR)
    return r

  def labels(self) -> np.ndarray:
    return all_labels(self._source)


def _resize(array: np.ndarray, size: tuple[int, int], method) -> np.ndarray:
  if array.shape[:2] == size:
    return array
  return np.asarray(Image.fromarray(array).resize((size[1], size[0]), method))


def all_labels(source) -> np.ndarray:
  """[N, C] multi-hot labels; sources that know them without decoding images say so."""
  if hasattr(source, 'labels'):
    return source.labels()
  return np.stack([np.asarray(source[i]['labels']) for i in range(len(source))])
