"""`cows-jax ablate`: what each part of the method buys, everything else equal.

Four variants on one config (paper.md's ablation axes):
  1. baseline CAM: single-image loss only, plain CAM inference;
  2. + co-attention loss;
  3. + contrastive co-attention loss (the full training), still plain CAMs;
  4. + co-attention inference with cross-image context: the full method.
Variants 3 and 4 share one trained classifier. Each variant gets its own workdir under
DIR/<variant> (maps, pseudo labels) and the classifiers live in DIR/train/<training>; all of
it resumes like the pipeline does. The table goes to DIR/reports/ablation.{json,md}.
"""

import copy
import dataclasses
import os

from absl import logging

from cows_jax import classify, evaluate, label, localize, reporting


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  slug: str
  training: str  # name of the classifier run; equal names share one classifier.
  overrides: tuple  # ((dotted config field, value), ...)


_NO_COATTENTION = (
  ('classify.loss_weight_coattention', 0.0),
  ('classify.loss_weight_contrastive', 0.0),
)
_NO_CONTRASTIVE = (('classify.loss_weight_contrastive', 0.0),)
_CAM = (('localize.method', 'cam'),)
_COATTENTION = (('localize.method', 'coattention'),)

VARIANTS = (
  Variant(
    'baseline CAM (single-image loss, CAM inference)',
    'baseline_cam',
    'single',
    _NO_COATTENTION + _CAM,
  ),
  Variant('+ co-attention loss', 'coattention_loss', 'coattention', _NO_CONTRASTIVE + _CAM),
  Variant('+ contrastive co-attention loss', 'contrastive_loss', 'full', _CAM),
  Variant(
    '+ co-attention inference with cross-image context (full method)',
    'full_method',
    'full',
    _COATTENTION,
  ),
)


def variant_config(cfg, variant: Variant):
  """The config with the variant's overrides applied (a copy; `cfg` is left alone)."""
  out = copy.deepcopy(cfg)
  for field, value in variant.overrides:
    *parents, leaf = field.split('.')
    node = out
    for p in parents:
      node = node[p]
    node[leaf] = value
  return out


def _link_classifier(train_dir: str, variant_dir: str) -> None:
  """variant_dir/classifier -> the shared training run's checkpoints."""
  link = classify.checkpoint_dir(variant_dir)
  target = os.path.relpath(classify.checkpoint_dir(train_dir), variant_dir)
  if os.path.islink(link) and os.readlink(link) == target:
    return
  if os.path.lexists(link):
    raise ValueError(f'{link} exists and is not a link to {target}; use a fresh --workdir')
  os.makedirs(variant_dir, exist_ok=True)
  os.symlink(target, link)


def run(cfg, workdir: str) -> list[dict]:
  """Train, localize, label and evaluate every variant; write and return the table rows."""
  rows = []
  for variant in VARIANTS:
    logging.info('=== ablate: %s ===', variant.name)
    vcfg = variant_config(cfg, variant)
    train_dir = os.path.join(workdir, 'train', variant.training)
    classify.train(vcfg, train_dir)
    variant_dir = os.path.join(workdir, variant.slug)
    _link_classifier(train_dir, variant_dir)
    localize.run(vcfg, variant_dir)
    label.run(vcfg, variant_dir)
    report = evaluate.localization_report(vcfg, variant_dir)
    rows.append(
      {
        'variant': variant.name,
        'slug': variant.slug,
        'training': variant.training,
        'inference': vcfg.localize.method,
        **report,
      }
    )
  out = os.path.join(workdir, 'reports')
  reporting.write_json_atomic(os.path.join(out, 'ablation.json'), rows)
  reporting.write_text_atomic(os.path.join(out, 'ablation.md'), markdown_table(rows))
  logging.info('ablate:\n%s', markdown_table(rows))
  return rows


def markdown_table(rows: list[dict]) -> str:
  lines = [
    '| variant | CAM mIoU % (train) | pseudo-label mIoU % (train) | bg threshold |',
    '|---|---:|---:|---:|',
  ]
  lines += [
    f'| {r["variant"]} | {r["cam_miou"]:.1f} | {r["pseudo_label_miou"]:.1f} | '
    f'{r["cam_bg_threshold"]:.2f} |'
    for r in rows
  ]
  return '\n'.join(lines) + '\n'
