"""`cows-jax ablate`: what each part of the method buys, everything else equal.

Four variants on one config (paper.md's ablation axes):
  1. baseline CAM: single-image loss only, plain CAM inference;
  2. + co-attention loss;
  3. + contrastive co-attention loss (the full training), still plain CAMs;
  4. + co-attention inference with cross-image context: the full method.
Variants 3 and 4 share one trained classifier. Each variant gets its own workdir under
DIR/<variant> (maps, pseudo labels) and the classifiers live in DIR/train/<training>; all of
it resumes like the pipeline does. The table goes to DIR/reports/ablation.{json,md}.
The stages come in as functions (the CLI's table), so this module imports none of them.
"""

import dataclasses
import os
from typing import Callable, Mapping

from absl import logging

from cows_jax import config, map_metrics, parallel, run_dir
from cows_jax.data import sources


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
  """The finalized config with the variant's overrides applied (`cfg` is left alone)."""
  return config.with_overrides(cfg, variant.overrides)


def _link_classifier(train_run: run_dir.RunDir, variant_run: run_dir.RunDir) -> None:
  """The variant's classifier directory -> the shared training run's checkpoints."""
  link = os.fspath(variant_run.classifier())
  target = os.path.relpath(os.fspath(train_run.classifier()), os.fspath(variant_run.root))
  if os.path.islink(link) and os.readlink(link) == target:
    return
  if os.path.lexists(link):
    raise ValueError(f'{link} exists and is not a link to {target}; use a fresh --workdir')
  variant_run.root.mkdir(parents=True, exist_ok=True)
  os.symlink(target, link)


def run(cfg, workdir: str, stages: Mapping[str, Callable]) -> list[dict]:
  """Train, localize and label every variant with `stages` ({'classify': fn(cfg, workdir),
  'localize': ..., 'label': ...}), score its maps and pseudo labels; write and return the
  table rows."""
  rows = []
  for variant in VARIANTS:
    logging.info('=== ablate: %s ===', variant.name)
    vcfg = variant_config(cfg, variant)
    train_dir = os.path.join(workdir, 'train', variant.training)
    stages['classify'](vcfg, train_dir)
    variant_dir = os.path.join(workdir, variant.slug)
    if parallel.is_writer():
      _link_classifier(run_dir.RunDir(train_dir), run_dir.RunDir(variant_dir))
    parallel.barrier('ablate: link')
    stages['localize'](vcfg, variant_dir)
    stages['label'](vcfg, variant_dir)
    run = run_dir.RunDir(variant_dir)
    ids = run_dir.read_json(run.labels_index(), 'label')['ids']
    report, _ = map_metrics.localization_report(vcfg, sources.load(vcfg)['train'], ids, run)
    rows.append(
      {
        'variant': variant.name,
        'slug': variant.slug,
        'training': variant.training,
        'inference': vcfg.localize.method,
        **report,
      }
    )
  out = run_dir.RunDir(workdir).reports()
  if parallel.is_writer():
    run_dir.write_json(out / 'ablation.json', rows)
    run_dir.write_text(out / 'ablation.md', markdown_table(rows))
  parallel.barrier('ablate')
  logging.info('ablate:\n%s', markdown_table(rows))
  return rows


def markdown_table(rows: list[dict]) -> str:
  lines = [
    '| variant | CAM mIoU % (train) | pseudo-label mIoU % (train) | bg threshold |',
    '|---|---:|---:|---:|',
  ]
  lines += [
    f'| {r["variant"]} | {r["cam_miou"]:.1f} | {r["pseudo_label_miou"]:.1f} | '
    f'{r["cam_bg_threshold"]:.2f}{" (edge)" if r.get("cam_bg_threshold_at_edge") else ""} |'
    for r in rows
  ]
  edge = any(r.get('cam_bg_threshold_at_edge') for r in rows)
  note = '\n(edge): the best threshold is at the end of the sweep; the CAM mIoU may be higher.\n'
  return '\n'.join(lines) + '\n' + (note if edge else '')
