"""Datasets by config: random-access sources of decoded records per split.

A record is {'image': uint8[H,W,3], 'mask': uint8[H,W] (0 bg, k+1 class k, 255 ignore),
'saliency': uint8[H,W], 'labels': uint8[C] multi-hot, 'id': str}; a record without a mask
has an all-ignore mask, one without a saliency map a [0, 0] saliency.

Stages ask by role: `load(cfg)['train']` is data.train_split (maps, pseudo labels, the
segmenter), `load(cfg)['val']` data.eval_split, and `classifier_pool(cfg)` holds
data.classify_split with the extra images of data.extra mixed in: folders or a list file of
the user's, or (layout 'split') an extra split of the synthetic dataset's own builder.
"""

import os

import numpy as np

from cows_jax.data import image_lists, mixing, records, synthetic, synthetic_parts, voc

DATASETS = ('synthetic', 'voc12', 'image_lists')
# data.world of the synthetic dataset: 'shapes' (synthetic.py) or 'parts' (synthetic_parts.py).
WORLDS = ('shapes', 'parts')
EXTRA_LAYOUTS = ('none', 'folders', 'list', 'split')


def data_dir(cfg) -> str:
  """Where built datasets live: config field, else $COWS_DATA_DIR, else ~/.cache."""
  return os.path.expanduser(
    cfg.data.data_dir or os.environ.get('COWS_DATA_DIR', '~/.cache/cows_jax/datasets')
  )


def world(cfg) -> str:
  """The synthetic world of the config (data.world; configs without the field: 'shapes')."""
  name = cfg.data.get('world', 'shapes')
  if name not in WORLDS:
    raise ValueError(f'data.world={name!r}: expected one of {", ".join(WORLDS)}')
  return name


def synthetic_spec(cfg) -> synthetic.SyntheticSpec | synthetic_parts.PartsSpec:
  d = cfg.data
  if world(cfg) == 'parts':
    return synthetic_parts.PartsSpec(
      num_classes=d.num_classes,
      image_size=d.image_size,
      train_size=d.train_size,
      val_size=d.val_size,
      seed=d.seed,
      unlabelled_rate=d.unlabelled_rate,
      **{name: d[name] for name in synthetic_parts.OBJECT_FIELDS},
    )
  return synthetic.SyntheticSpec(**{name: d[name] for name in synthetic.SYNTHETIC_FIELDS})


def _path(path: str) -> str:
  """Absolute path (builds are keyed by their inputs' paths), '' kept as 'not set'."""
  return os.path.abspath(os.path.expanduser(path)) if path else ''


def voc_layout(cfg) -> voc.VocLayout:
  d = cfg.data
  return voc.VocLayout(
    manual_dir=_path(d.manual_dir),
    aug_layout=d.voc.aug_layout,
    aug_dir=_path(d.voc.aug_dir),
    train_aug_list=_path(d.voc.train_aug_list),
    saliency_dir=_path(d.saliency_dir),
  )


def lists_layout(cfg) -> image_lists.ListLayout:
  d = cfg.data.lists
  lists = tuple((split, _path(d[split])) for split in ('train', 'val', 'test') if d[split])
  if not lists:
    raise ValueError('data.lists: no list file set (data.lists.train / .val / .test)')
  return image_lists.ListLayout(
    class_names=image_lists.read_class_list(_path(d.class_list)),
    image_root=_path(d.image_root),
    lists=lists,
    mask_dir=_path(d.mask_dir),
    masked_splits=tuple(d.masked_splits),
    saliency_dir=_path(cfg.data.saliency_dir),
  )


def class_names(cfg) -> tuple[str, ...]:
  """Names of the object classes (background excluded)."""
  if cfg.data.name == 'synthetic':
    names = synthetic_parts.CLASS_NAMES if world(cfg) == 'parts' else synthetic.CLASS_NAMES
    return tuple(names[: cfg.data.num_classes])
  if cfg.data.name == 'voc12':
    return voc.CLASS_NAMES
  if cfg.data.name == 'image_lists':
    return image_lists.read_class_list(_path(cfg.data.lists.class_list))
  raise ValueError(f'unknown dataset data.name={cfg.data.name!r} (known: {", ".join(DATASETS)})')


def load_splits(cfg) -> dict:
  """Every split of the configured dataset under its own name, whole; builds if needed."""
  d = cfg.data
  names = class_names(cfg)
  if d.num_classes != len(names):
    raise ValueError(
      f'data.num_classes={d.num_classes} but dataset {d.name!r} has {len(names)} classes'
    )
  if d.name == 'synthetic':
    module = synthetic_parts if world(cfg) == 'parts' else synthetic
    return module.load_sources(synthetic_spec(cfg), data_dir(cfg))
  if d.name == 'voc12':
    return voc.load(voc_layout(cfg), data_dir(cfg), d.max_skipped_fraction)
  return image_lists.load(lists_layout(cfg), data_dir(cfg), d.max_skipped_fraction)


def view(cfg, source, what: str):
  """`source` as the stages see it: sampled (data.max_per_split), resized (data.image_size)."""
  if len(source) == 0:
    raise ValueError(f'{what} of dataset {cfg.data.name!r} is empty')
  n = cfg.data.max_per_split
  if 0 < n < len(source):
    source = records.Subset(source, np.linspace(0, len(source) - 1, n).round().astype(int))
  if cfg.data.name != 'synthetic' and cfg.data.image_size:
    source = records.Resized(source, cfg.data.image_size)
  return source


def split(cfg, splits: dict, field: str):
  """The split named by config field data.<field>, viewed."""
  name = cfg.data[field]
  if name not in splits:
    raise ValueError(
      f'data.{field}={name!r} is not a split of dataset {cfg.data.name!r} '
      f'(splits: {", ".join(splits)})'
    )
  return view(cfg, splits[name], f'split {name!r}')


def load(cfg) -> dict:
  """{'train': data.train_split, 'val': data.eval_split}, viewed."""
  splits = load_splits(cfg)
  return {'train': split(cfg, splits, 'train_split'), 'val': split(cfg, splits, 'eval_split')}


def extra_layout(cfg):
  """The layout of data.extra's folders or list file (class names those of the dataset), or
  None for the layouts 'none' and 'split'."""
  e = cfg.data.extra
  if e.layout not in EXTRA_LAYOUTS:
    raise ValueError(f'data.extra.layout={e.layout!r}; expected one of {EXTRA_LAYOUTS}')
  if e.layout == 'folders':
    return image_lists.FolderLayout(class_names(cfg), _path(e.root))
  if e.layout == 'list':
    return image_lists.ListLayout(class_names(cfg), _path(e.root), (('train', _path(e.list_file)),))
  return None


def extra_split(cfg):
  """Layout 'split': the extra split data.extra.split of the synthetic dataset, whole."""
  name, split = cfg.data.name, cfg.data.extra.split
  if name != 'synthetic' or split not in synthetic.EXTRA_SPLITS:
    raise ValueError(
      f'data.extra.split={split!r} is not an extra split of dataset {name!r}; '
      f"data.extra.layout='split' reads the synthetic dataset's "
      f'{" or ".join(synthetic.EXTRA_SPLITS)} (data.name=synthetic)'
    )
  if world(cfg) == 'parts':
    raise ValueError(
      "data.extra.layout='split': the parts world (data.world=parts) has no extra splits"
    )
  return synthetic.load_split(synthetic_spec(cfg), split, data_dir(cfg))


def load_extra(cfg) -> dict:
  """{'train': source} of the extra images, whole, or {} without any."""
  layout = extra_layout(cfg)
  if layout is not None:
    return image_lists.load(layout, data_dir(cfg), cfg.data.max_skipped_fraction)
  return {'train': extra_split(cfg)} if cfg.data.extra.layout == 'split' else {}


def _classifier_sources(cfg) -> tuple:
  """(data.classify_split, the extra images or None), viewed."""
  primary = split(cfg, load_splits(cfg), 'classify_split')
  extra = load_extra(cfg)
  return primary, view(cfg, extra['train'], 'data.extra') if extra else None


def classifier_plan(cfg) -> mixing.MixPlan:
  """Which images an epoch of the classifier holds (its length fixes the steps per epoch)."""
  primary, extra = _classifier_sources(cfg)
  return mixing.make_plan(len(primary), len(extra) if extra else 0, cfg.data.extra.ratio)


def classifier_pool(cfg) -> mixing.PairPool:
  """The classifier's pairs: data.classify_split, mixed with data.extra when set."""
  primary, extra = _classifier_sources(cfg)
  e = cfg.data.extra
  return mixing.make_pool(primary, extra, e.ratio, e.is_noisy_source, e.mixing)


def all_labels(source) -> np.ndarray:
  """[N, C] multi-hot labels of every record of a source."""
  return records.all_labels(source)
