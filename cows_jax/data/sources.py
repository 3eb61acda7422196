"""Datasets by config: random-access sources of decoded records per split.

A record is {'image': uint8[H,W,3], 'mask': uint8[H,W] (0 bg, k+1 class k, 255 ignore),
'saliency': uint8[H,W], 'labels': uint8[C] multi-hot, 'id': str}.
"""

import os

import numpy as np

from cows_jax.data import synthetic


def data_dir(cfg) -> str:
  """Where built datasets live: config field, else $COWS_DATA_DIR, else ~/.cache."""
  return os.path.expanduser(cfg.data.data_dir or os.environ.get(
      'COWS_DATA_DIR', '~/.cache/cows_jax/datasets'))


def synthetic_spec(cfg) -> synthetic.SyntheticSpec:
  d = cfg.data
  return synthetic.SyntheticSpec(num_classes=d.num_classes, image_size=d.image_size,
                                 train_size=d.train_size, val_size=d.val_size, seed=d.seed,
                                 max_objects=d.max_objects)


def load(cfg) -> dict:
  """{split: source} for the configured dataset; empty splits are an error."""
  if cfg.data.name != 'synthetic':
    raise ValueError(f'unknown dataset data.name={cfg.data.name!r} (known: synthetic)')
  sources = synthetic.load_sources(synthetic_spec(cfg), data_dir(cfg))
  for split, source in sources.items():
    if len(source) == 0:
      raise ValueError(f'split {split!r} of dataset {cfg.data.name!r} is empty')
  return sources


def class_names(cfg) -> tuple[str, ...]:
  """Names of the object classes (background excluded)."""
  return tuple(synthetic.CLASS_NAMES[:cfg.data.num_classes])


def all_labels(source) -> np.ndarray:
  """[N, C] multi-hot labels of every record of a source."""
  return np.stack([np.asarray(source[i]['labels']) for i in range(len(source))])
