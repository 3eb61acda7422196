"""The synthetic world's ImageNet stand-in backbones: what identifies one, where it lives,
and the name configs give it.

`cows-jax pretrain` (train.py) makes the backbone of a config once, in
DATA_DIR/pretrained/<fingerprint>; the fingerprint covers everything that changes the weights.
Backbones of the packaged configs also ship with the package (shipped/<fingerprint>, made by
that command: docs/pretrain.md), so that the demo does not spend its time making one.
`model.init_from='standin'` (and `segment.init_from`) names the config's backbone:
`config.finalize` replaces it with the directory that holds it.
"""

import hashlib
import json
import os

from cows_jax.data import sources, synthetic_parts
from cows_jax.imagenet_standin import dataset

# `model.init_from` / `segment.init_from`: the backbone `cows-jax pretrain` makes for the config.
STANDIN = 'standin'
# STANDIN's old name, kept for one release: `move_renamed` replaces it with a warning.
OLD_STANDIN = 'pretrain'
# Bumped whenever the training procedure changes, so that backbones made by older code are
# not reused.
VERSION = 1
# Fields of pretrain.* that change the weights (the log and checkpoint periods do not).
TRAINING_FIELDS = (
  'epochs',
  'batch_size',
  'base_lr',
  'warmup_epochs',
  'momentum',
  'nesterov',
  'weight_decay',
  'scales',
  'mirror',
  'color_jitter',
)
# The backbones shipped with the package, one directory per fingerprint.
SHIPPED_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'shipped')


def dataset_spec(cfg) -> dataset.PretrainSpec | synthetic_parts.PartsPretrainSpec:
  """The pretraining set of the config's world: the shapes world's shape x appearance
  classes, or (data.world='parts') the parts world's body x part classes."""
  p = cfg.pretrain
  fields = dict(
    num_classes=p.num_classes,
    image_size=p.image_size,
    train_size=p.train_size,
    val_size=p.val_size,
    seed=p.seed,
  )
  if cfg.data.name == 'synthetic' and sources.world(cfg) == 'parts':
    objects = {name: cfg.data[name] for name in synthetic_parts.OBJECT_FIELDS}
    return synthetic_parts.PartsPretrainSpec(**fields, **objects)
  return dataset.PretrainSpec(**fields)


def load_sources(spec, data_dir: str) -> dict:
  """{'train', 'val'} sources (dataset.Source) of a `dataset_spec`, built if needed."""
  if isinstance(spec, synthetic_parts.PartsPretrainSpec):
    return synthetic_parts.load_pretrain_sources(spec, data_dir)
  return dataset.load_sources(spec, data_dir)


def training_fields(cfg) -> dict:
  fields = {f: cfg.pretrain[f] for f in TRAINING_FIELDS}
  return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


def fingerprint(cfg) -> str:
  """Short stable hash of everything that changes the backbone."""
  payload = {
    'dataset': dataset_spec(cfg).fingerprint(),
    'seed': cfg.pretrain.seed,
    'width': cfg.model.width,
    'dtype': cfg.model.dtype,
    'training': training_fields(cfg),
    'version': VERSION,
  }
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def weights_dir(cfg) -> str:
  """Where `cows-jax pretrain` makes the config's backbone: DATA_DIR/pretrained/<fingerprint>
  (DATA_DIR as the datasets': data.data_dir, else $COWS_DATA_DIR, else
  ~/.cache/cows_jax/datasets)."""
  return os.path.join(sources.data_dir(cfg), 'pretrained', fingerprint(cfg))


def _is_complete(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, 'provenance.json'))


def location(cfg) -> str:
  """The directory holding the config's backbone: the one made in the data directory, else the
  one shipped with the package, else (none exists yet) where `cows-jax pretrain` makes it."""
  made, shipped = weights_dir(cfg), os.path.join(SHIPPED_ROOT, fingerprint(cfg))
  if not _is_complete(made) and _is_complete(shipped):
    return shipped
  return made


def move_renamed(cfg) -> list[str]:
  """Replaces OLD_STANDIN in model.init_from and segment.init_from of a mutable config with
  STANDIN, in place; a warning line each (config.finalize logs them)."""
  out = []
  for section in ('model', 'segment'):
    if cfg[section].init_from == OLD_STANDIN:
      cfg[section].init_from = STANDIN
      out.append(
        f"{section}.init_from='{OLD_STANDIN}' is renamed '{STANDIN}': the config's stand-in "
        'backbone is used; the old name goes in the next release'
      )
  return out


def uses_standin(cfg) -> bool:
  """Whether the classifier or the segmenter starts from the config's stand-in backbone (by
  its name or its old one: the CLI asks before `config.finalize`)."""
  return bool({STANDIN, OLD_STANDIN} & {cfg.model.init_from, cfg.segment.init_from})


def missing(cfg) -> bool:
  """Whether the config names its backbone and none has been made or shipped."""
  return uses_standin(cfg) and not _is_complete(location(cfg))


def resolve(cfg) -> None:
  """Replaces STANDIN in model.init_from and segment.init_from of a mutable config
  with `location(cfg)` once the backbone exists there (before, it stays: `cows-jax config`
  still prints the config, and the stages' validation names the command that makes it)."""
  where = location(cfg)
  if not _is_complete(where):
    return
  for node in (cfg.model, cfg.segment):
    if node.init_from == STANDIN:
      node.init_from = where
