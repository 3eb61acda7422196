"""The whole config checked before anything runs: every problem at once, one line each.

A typo, an out-of-range threshold, a path that does not exist, a missing extra or missing
ImageNet weights would otherwise surface when the stage that needs it starts, often hours
into a run. `cows-jax` runs `problems` before every
run command and exits with status 2 when there are any.
"""

import os

from cows_jax import crf, run_dir, synthetic_backbones, test_time
from cows_jax.data import mixing, sources, synthetic, voc
from cows_jax.models import deeplab

METHODS = ('coattention', 'cam', 'cam_views')  # localize.method
CHOICES = {
  'data.name': sources.DATASETS,
  'data.extra.layout': sources.EXTRA_LAYOUTS,
  'data.extra.mixing': mixing.MIXINGS,
  'data.voc.aug_layout': voc.AUG_LAYOUTS,
  'model.norm': ('none', 'batch'),
  'model.dtype': ('float32', 'bfloat16', 'float16'),
  'segment.dtype': ('float32', 'bfloat16', 'float16'),
  'segment.backbone': ('resnet101', 'vgg16'),
  'segment.head': deeplab.HEADS,
  'localize.method': METHODS,
  'segment.scale_sampling': ('discrete', 'uniform'),
  'label.thresholds': ('cam_sweep', 'fixed'),
  'segment.head_init': tuple(deeplab.HEAD_INITS),
  'inference.pad': test_time.PADDINGS,
  'inference.interpolation': test_time.INTERPOLATIONS,
}
# (field, low, high): low <= value <= high; None leaves a side open.
RANGES = (
  ('host_workers', 0, None),
  ('data.num_classes', 1, 254),
  ('data.max_skipped_fraction', 0, 1),
  ('input.size', 16, None),
  ('model.width', 1e-3, None),
  ('classify.epochs', 1, None),
  ('classify.batch_pairs', 1, None),
  ('classify.pairs_per_device', 0, None),
  ('classify.warmup_epochs', 0, None),
  ('classify.base_lr', 1e-12, None),
  ('classify.momentum', 0, 1),
  ('classify.weight_decay', 0, None),
  ('classify.lr_decay_factor', 0, 1),
  ('classify.contrastive_from_epoch', 0, None),
  ('classify.log_every_steps', 1, None),
  ('classify.checkpoint_every_steps', 1, None),
  ('localize.num_related', 1, None),
  ('localize.gate', 0, 1),
  ('localize.batch_size', 1, None),
  ('localize.feature_memory_mib', 0, None),
  ('label.score_threshold', 0, 1),
  ('label.conflict_threshold', 0, 1),
  ('label.bg_saliency_ignore', 0, 256),
  ('label.fg_confident', 0, 1),
  ('label.min_fg_fraction', 0, 1),
  ('label.fg_threshold', 0, 1),
  ('label.bg_threshold', 0, 1),
  ('label.sweep_band', 0, 1),
  ('segment.crop_size', 8, None),
  ('segment.batch_size', 1, None),
  ('segment.accumulation_steps', 1, None),
  ('segment.iterations', 1, None),
  ('segment.base_lr', 1e-12, None),
  ('segment.lr_power', 0, None),
  ('segment.momentum', 0, 1),
  ('segment.weight_decay', 0, None),
  ('segment.log_every_steps', 1, None),
  ('segment.checkpoint_every_steps', 1, None),
  ('inference.window', 0, None),
  ('inference.window_stride', 1e-6, 1),
  ('crf.iterations', 0, None),
)
LR_MULTIPLIERS = (
  'classify.lr_mult_pretrained_weight',
  'classify.lr_mult_pretrained_bias',
  'classify.lr_mult_new_weight',
  'classify.lr_mult_new_bias',
  'segment.lr_mult_backbone_weight',
  'segment.lr_mult_backbone_bias',
  'segment.lr_mult_head_weight',
  'segment.lr_mult_head_bias',
)


def _get(cfg, field: str):
  node = cfg
  for part in field.split('.'):
    node = node[part]
  return node


def _ranges(cfg) -> list[str]:
  out = []
  for field, low, high in RANGES + tuple((f, 0, None) for f in LR_MULTIPLIERS):
    value = _get(cfg, field)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
      out.append(f'{field}={value!r}: expected a number')
    elif (low is not None and value < low) or (high is not None and value > high):
      bounds = f'>= {low}' if high is None else f'in [{low}, {high}]'
      out.append(f'{field}={value!r}: expected a value {bounds}')
  for field, allowed in CHOICES.items():
    if _get(cfg, field) not in allowed:
      out.append(f'{field}={_get(cfg, field)!r}: expected one of {", ".join(allowed)}')
  c = cfg.classify
  if not 1 <= c.localize_after_epochs <= c.epochs:
    out.append(
      f'classify.localize_after_epochs={c.localize_after_epochs}: expected 1..classify.epochs={c.epochs}'
    )
  bad = [t for t in cfg.evaluate.cam_thresholds if not 0 <= t <= 1]
  if bad or not cfg.evaluate.cam_thresholds:
    out.append(
      f'evaluate.cam_thresholds={tuple(cfg.evaluate.cam_thresholds)}: expected values in [0, 1]'
    )
  if not cfg.inference.scales or min(cfg.inference.scales) <= 0:
    out.append(f'inference.scales={tuple(cfg.inference.scales)}: expected positive scales')
  if not cfg.segment.scales or min(cfg.segment.scales) <= 0:
    out.append(f'segment.scales={tuple(cfg.segment.scales)}: expected positive scales')
  try:
    run_dir.supervisions(cfg)
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
    if value == synthetic_backbones.PLACEHOLDER:
      continue  # the config's pretrained backbone: checked by `problems`, per command.
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


# The commands that make the config's pretrained backbone first when it is missing.
PRETRAINING_COMMANDS = ('pipeline', 'ablate')
# The commands that run the dense CRF when evaluate.crf: only they need the crf extra.
CRF_COMMANDS = ('evaluate', 'pipeline', 'ablate')


def problems(cfg, command: str = 'pipeline') -> list[str]:
  """Every problem of a config for `command`, one line each; [] when it can run. It needs no
  file the config names to be readable (the CLI runs it before `config.finalize`)."""
  out = _ranges(cfg)
  out += _paths(cfg)
  if command not in PRETRAINING_COMMANDS and synthetic_backbones.missing(cfg):
    out.append(
      f"init_from='{synthetic_backbones.PLACEHOLDER}': this config's pretrained backbone "
      f'({synthetic_backbones.weights_dir(cfg)}) is not made yet; make it with `cows-jax '
      'pretrain` and the same --config flags (the pipeline makes it itself)'
    )
  if cfg.evaluate.crf and command in CRF_COMMANDS:
    try:
      crf.check_available()
    except ValueError as e:
      out.append(f'evaluate.crf=True: {e}; or --config.evaluate.crf=False')
  return out
