"""The whole config checked before anything runs: every problem at once, one line each.

A typo, an out-of-range threshold, a path that does not exist, a missing extra or missing
ImageNet weights would otherwise surface when the stage that needs it starts, often hours
into a run. `cows-jax` runs `problems` before every
run command and exits with status 2 when there are any.
"""

import os

import ml_collections

from cows_jax import crf, run_dir
from cows_jax.configs.defaults import SCHEMA
from cows_jax.data import sources, synthetic
from cows_jax.imagenet_standin import backbones

# The plain choices and ranges of every field are declared with it, in configs/defaults.py
# (SCHEMA); what needs logic (fields checked together, paths, extras, weights) is here.


def _get(cfg, field: str):
  node = cfg
  for part in field.split('.'):
    node = node[part]
  return node


def _ranges(cfg) -> list[str]:
  out = SCHEMA.problems(cfg)
  after, epochs = cfg.localize.after_epochs, cfg.classify.epochs
  if isinstance(after, int) and isinstance(epochs, int) and not 1 <= after <= epochs:
    out.append(f'localize.after_epochs={after}: expected 1..classify.epochs={epochs}')
  checks = [run_dir.supervisions]
  if cfg.data.name == 'synthetic':  # the generator's own checks (fields checked together)
    checks.append(sources.synthetic_spec)
  if backbones.uses_standin(cfg):  # and the stand-in's (e.g. the parts world's class count)
    checks.append(backbones.dataset_spec)
  for check in checks:
    try:
      check(cfg)
    except ValueError as e:
      out.append(str(e))
  return out


def _splits(cfg) -> tuple[str, ...]:
  d = cfg.data
  if d.name == 'synthetic':
    return ('train', 'val')
  if d.name == 'voc12':
    return ('train', 'val', 'test') + (() if d.voc.aug_layout == 'none' else ('train_aug',))
  return tuple(s for s in ('train', 'val', 'test') if d.lists[s])


def _paths(cfg) -> list[str]:
  d, out = cfg.data, []
  if d.name not in sources.DATASETS:
    return out
  splits = _splits(cfg)
  for field in ('classify_split', 'train_split', 'eval_split'):
    if d[field] not in splits:
      out.append(f'data.{field}={d[field]!r}: not a split of {d.name!r} here ({", ".join(splits)})')
  named = []
  if d.name == 'voc12':
    named += [('data.manual_dir', d.manual_dir, True), ('data.voc.aug_dir', d.voc.aug_dir, False)]
    named += [('data.voc.train_aug_list', d.voc.train_aug_list, False)]
  if d.name == 'image_lists':
    named += [('data.lists.class_list', d.lists.class_list, True)]
    named += [(f'data.lists.{s}', d.lists[s], False) for s in ('train', 'val', 'test')]
    named += [('data.lists.image_root', d.lists.image_root, True)]
  if d.extra.layout == 'split' and (
    d.name != 'synthetic' or d.extra.split not in synthetic.EXTRA_SPLITS
  ):
    out.append(
      f'data.extra.split={d.extra.split!r}: data.extra.layout=split reads an extra split of the '
      f'synthetic dataset ({", ".join(synthetic.EXTRA_SPLITS)}), data.name={d.name!r}'
    )
  if d.extra.layout == 'folders':
    named += [('data.extra.root', d.extra.root, True)]
  if d.extra.layout == 'list':
    named += [
      ('data.extra.root', d.extra.root, True),
      ('data.extra.list_file', d.extra.list_file, True),
    ]
  real = d.name != 'synthetic'
  if real and cfg.label.use_saliency:
    named += [('data.saliency_dir', d.saliency_dir, True)]
  for field, value, required in named:
    if not value and required:
      hint = ' (or --config.label.use_saliency=False)' if field == 'data.saliency_dir' else ''
      out.append(f'{field} is not set: give the path with --config.{field}=PATH{hint}')
    elif value and not os.path.exists(os.path.expanduser(value)):
      out.append(f'{field}={value}: does not exist')
  for field in ('model.init_from', 'segment.init_from'):
    value = _get(cfg, field)
    if value == backbones.STANDIN:
      continue  # the config's stand-in backbone: checked by `problems`, per command.
    if value and not os.path.isfile(os.path.join(os.path.expanduser(value), 'provenance.json')):
      out.append(
        f'{field}={value}: no provenance.json there; make it with `cows-jax weights import`'
      )
  if real and not cfg.model.allow_random_init:
    for field, arch in (('model.init_from', 'vgg16'), ('segment.init_from', cfg.segment.backbone)):
      if not _get(cfg, field):
        out.append(
          f'{field} is not set: {d.name} trains from ImageNet weights; run `cows-jax weights '
          f'import --arch {arch} --src FILE --out DIR` and pass --config.{field}=DIR (or '
          '--config.model.allow_random_init=True to train from random weights)'
        )
  return out


def _standin_architecture(cfg) -> list[str]:
  """The stand-in is a plain VGG16 (its BatchNorm folded into the convolutions, as the
  authors' ImageNet VGG has none): a model that differs would fail to load it, in a long
  error from inside the weights' tree. `cfg` has init_from's old value renamed."""
  if not backbones.uses_standin(cfg):
    return []
  out = []
  if cfg.model.norm != 'none':
    out.append(
      f"model.norm='{cfg.model.norm}' with init_from='{backbones.STANDIN}': the stand-in "
      'backbone has no BatchNorm (folded); use --config.model.norm=none, or train from '
      "scratch with --config.model.init_from='' --config.segment.init_from=''"
    )
  if cfg.segment.init_from == backbones.STANDIN and cfg.segment.backbone != 'vgg16':
    out.append(
      f"segment.backbone='{cfg.segment.backbone}' with segment.init_from="
      f"'{backbones.STANDIN}': the stand-in is a VGG16; use --config.segment.backbone=vgg16 "
      'or another --config.segment.init_from'
    )
  return out


# The commands that make the config's pretrained backbone first when it is missing.
PRETRAINING_COMMANDS = ('pipeline', 'ablate')
# The commands that run the dense CRF when evaluate.crf: only they need the crf extra.
CRF_COMMANDS = ('evaluate', 'pipeline', 'ablate')


def problems(cfg, command: str = 'pipeline') -> list[str]:
  """Every problem of a config for `command`, one line each; [] when it can run. It needs no
  file the config names to be readable (the CLI runs it before `config.finalize`)."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  SCHEMA.move_renamed(cfg)  # config.finalize warns of an old name,
  backbones.move_renamed(cfg)  # and of init_from's old value.
  out = _ranges(cfg)
  out += _paths(cfg)
  if command not in PRETRAINING_COMMANDS and backbones.missing(cfg):
    out.append(
      f"init_from='{backbones.STANDIN}': this config's stand-in backbone "
      f'({backbones.weights_dir(cfg)}) is not made yet; make it with `cows-jax '
      'pretrain` and the same --config flags (the pipeline makes it itself)'
    )
  out += _standin_architecture(cfg)
  if cfg.evaluate.crf and command in CRF_COMMANDS:
    try:
      crf.check_available()
    except ValueError as e:
      out.append(f'evaluate.crf=True: {e}; or --config.evaluate.crf=False')
  return out
