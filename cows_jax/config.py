"""Configs by name, and the one function that finalizes a config for a run.

`--config voc12:runlocal` names a packaged config (configs/ is installed as cows_jax.configs);
`--config configs/voc12.py:runlocal` is a file. `finalize` resolves what depends on files
outside the config (the input convention of imported weights) and returns a read-only copy;
the CLI and every stage call it, so a stage called from Python runs exactly as from the CLI.
"""

import importlib
import importlib.resources
import os

import ml_collections
from absl import logging

from cows_jax.configs.defaults import SCHEMA
from cows_jax.imagenet_standin import backbones
from cows_jax.models import imported


def packaged_names() -> list[str]:
  """Names of the configs installed with the package (voc12, synthetic, ...)."""
  files = importlib.resources.files('cows_jax.configs').iterdir()
  return sorted(
    f.name[:-3]
    for f in files
    if f.name.endswith('.py')
    and f.name not in ('__init__.py', 'defaults.py', 'presets.py', 'schema.py')
  )


def resolve(spec: str) -> str:
  """'NAME[:ARG]' of a packaged config -> 'FILE[:ARG]'; a file path is returned as it is."""
  name, sep, arg = spec.partition(':')
  if os.path.exists(name) or os.sep in name or name.endswith('.py'):
    return spec
  if name in packaged_names():
    return f'{importlib.resources.files("cows_jax.configs") / (name + ".py")}{sep}{arg}'
  return spec


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of 'NAME[:ARG]' (a packaged config), as `get_config(ARG)` returns it."""
  name, _, arg = spec.partition(':')
  if name not in packaged_names():
    raise ValueError(f'unknown config {name!r} (packaged: {", ".join(packaged_names())})')
  return importlib.import_module(f'cows_jax.configs.{name}').get_config(arg or None)


def finalize(cfg) -> ml_collections.FrozenConfigDict:
  """The config as a run uses it, read-only: a value set under a renamed field's old name moves
  to the new field (a logged warning names both; configs/defaults.py declares them);
  init_from='standin' (or its old name 'pretrain', with a warning) becomes the directory of
  the config's ImageNet stand-in backbone (imagenet_standin.backbones); the classifier's
  input mean/std follow the weights in model.init_from; the segmenter's mean/std and ResNet
  block layout follow segment.init_from. Idempotent."""
  c = ml_collections.ConfigDict(cfg.to_dict())
  for warning in SCHEMA.move_renamed(c) + backbones.move_renamed(c):
    logging.warning('%s', warning)
  backbones.resolve(c)
  if c.model.init_from not in ('', backbones.STANDIN):
    convention = imported.read_provenance(c.model.init_from)['input']
    c.input.mean, c.input.std = tuple(convention['mean']), tuple(convention['std'])
  if c.segment.init_from not in ('', backbones.STANDIN):
    provenance = imported.read_provenance(c.segment.init_from)
    c.segment.mean = tuple(provenance['input']['mean'])
    c.segment.std = tuple(provenance['input']['std'])
    if 'stride_in_1x1' in provenance:
      c.segment.resnet_stride_in_1x1 = provenance['stride_in_1x1']
  return ml_collections.FrozenConfigDict(c)


def with_overrides(cfg, overrides) -> ml_collections.FrozenConfigDict:
  """A finalized copy of `cfg` with ((dotted field, value), ...) set; a field that does not
  exist is an error."""
  c = ml_collections.ConfigDict(cfg.to_dict())
  set_fields(c, overrides)
  return finalize(c)


def set_fields(c: ml_collections.ConfigDict, overrides) -> None:
  """Sets ((dotted field, value), ...) on a mutable config, in place; a field that does not
  exist (or a section that does not) is an error."""
  for field, value in overrides:
    *parents, leaf = field.split('.')
    node = c
    for p in parents:
      node = node.get(p)
    if not hasattr(node, 'keys') or leaf not in node:
      raise ValueError(f'unknown config field {field!r}')
    node[leaf] = value
