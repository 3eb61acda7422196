"""`cows-jax ablate`: what each part of the method buys, everything else equal.

The variants on one config (paper.md's ablation axes), and two controls:
  1. baseline CAM: single-image loss only, plain CAM inference;
     control baseline_views: its CAMs of the image and of each self view, mapped back and
     aggregated by the paper's rule (the multi-view average, no cross-image context);
  2. + co-attention loss;
  3. + contrastive co-attention loss (the full training), still plain CAMs;
     control full_views: the full classifier's CAMs over the self views;
  4. + co-attention inference with cross-image context: the full method;
     control related_only: co-attention with the related images only, no self views (the
     cross-image context alone).
Variant 3, 4 and their controls share one trained classifier, as 1 and baseline_views do.
Each variant gets its own workdir under DIR/<variant> (maps, pseudo labels) and the
classifiers live in DIR/train/<training>; all of it resumes like the pipeline does. Each
finished variant's row goes into DIR/reports/ablation.{json,md}, and a recorded variant is
not run again. `--variants` picks some: jobs with variants of different classifiers share DIR.

`--seeds` (`run_seeds`): all of that once per seed in DIR/seed<k>, then the pre-registered
paired analysis (`paired_report`: mean and standard error of each measure, and the per-seed
differences of full_method and related_only from baseline_views with their verdicts) ->
DIR/reports/ablation_seeds.{json,md}, rewritten after each seed and marked interim until the
last. Only what runs is locked (a classifier's run, a variant's directory), so jobs with
disjoint seeds, or with one seed's variants split between them, share DIR.

`--settings` (`run_settings`): the paper's three data settings in the synthetic world
(configs/synthetic.py's setting2 and setting3 arguments) x {variant 1, variant 4}, each run
through the whole pipeline once per seed in DIR/settings/<setting>/seed<k>/<variant>; the
table of CAM, pseudo-label and segmentation mIoU (mean and standard deviation over the seeds)
goes to DIR/reports/settings.{json,md}.
The stages come in as functions (the CLI's table), so this module imports none of them.
"""

import contextlib
import dataclasses
import os
from typing import Callable, ContextManager, Mapping, Sequence

import ml_collections
import numpy as np
from absl import logging

from cows_jax import config, map_metrics, parallel, run_dir
from cows_jax.configs import synthetic as synthetic_config
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
_CAM_VIEWS = (('localize.method', 'cam_views'),)
_COATTENTION = (('localize.method', 'coattention'),)
_RELATED_ONLY = _COATTENTION + (('localize.self_views', ()),)

VARIANTS = (
  Variant(
    'baseline CAM (single-image loss, CAM inference)',
    'baseline_cam',
    'single',
    _NO_COATTENTION + _CAM,
  ),
  Variant(
    'control: baseline CAMs over the self views (multi-view average)',
    'baseline_views',
    'single',
    _NO_COATTENTION + _CAM_VIEWS,
  ),
  Variant('+ co-attention loss', 'coattention_loss', 'coattention', _NO_CONTRASTIVE + _CAM),
  Variant('+ contrastive co-attention loss', 'contrastive_loss', 'full', _CAM),
  Variant('control: full classifier, CAMs over the self views', 'full_views', 'full', _CAM_VIEWS),
  Variant(
    '+ co-attention inference with cross-image context (full method)',
    'full_method',
    'full',
    _COATTENTION,
  ),
  Variant(
    'control: full classifier, co-attention with the related images only',
    'related_only',
    'full',
    _RELATED_ONLY,
  ),
)


def variant(slug: str) -> Variant:
  """The variant named `slug` (baseline_cam, full_method, ...)."""
  for v in VARIANTS:
    if v.slug == slug:
      return v
  raise ValueError(
    f'--variants: unknown variant {slug!r}; choose from {", ".join(v.slug for v in VARIANTS)}'
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


def run(
  cfg,
  workdir: str,
  stages: Mapping[str, Callable],
  variants: Sequence[Variant] = VARIANTS,
  lock: Callable[[str], ContextManager] = contextlib.nullcontext,
) -> list[dict]:
  """Train, localize and label each of `variants` with `stages` ({'classify': fn(cfg,
  workdir), 'localize': ..., 'label': ...}), score its maps and pseudo labels, and record its
  row in DIR/reports/ablation.{json,md}; return the rows of every variant recorded there.

  A recorded variant is finished and skipped (delete its row to run it again), so a rerun
  resumes where it stopped, and separate jobs can split the variants between them: `lock(dir)`
  (the CLI's run-directory lock) is held on a classifier's run while it trains and on a
  variant's directory while that variant runs."""
  for variant in variants:
    if variant.slug in _recorded(workdir):
      logging.info('=== ablate: %s: recorded, skipped ===', variant.name)
      continue
    logging.info('=== ablate: %s ===', variant.name)
    vcfg = variant_config(cfg, variant)
    train_dir = os.path.join(workdir, 'train', variant.training)
    with lock(train_dir):
      stages['classify'](vcfg, train_dir)
    variant_dir = os.path.join(workdir, variant.slug)
    with lock(variant_dir):
      if parallel.is_writer():
        _link_classifier(run_dir.RunDir(train_dir), run_dir.RunDir(variant_dir))
      parallel.barrier('ablate: link')
      stages['localize'](vcfg, variant_dir)
      stages['label'](vcfg, variant_dir)
      _record(workdir, _score(vcfg, variant, run_dir.RunDir(variant_dir)))
  rows = list(_recorded(workdir).values())
  logging.info('ablate: ablation\n%s', markdown_table(rows))
  return rows


def _score(vcfg, variant: Variant, run: run_dir.RunDir) -> dict:
  """The variant's table row: its maps' and pseudo labels' scores on the train split."""
  ids = run_dir.read_json(run.labels_index(), 'label')['ids']
  train = sources.load(vcfg)['train']
  report, _ = map_metrics.localization_report(vcfg, train, ids, run)
  return {
    'variant': variant.name,
    'slug': variant.slug,
    'training': variant.training,
    'inference': vcfg.localize.method,
    **report,
    **_recalls(vcfg, train, ids, run, report['cam_bg_threshold']),
  }


def _recorded(workdir: str) -> dict:
  """{slug: row} of the variants recorded in DIR/reports/ablation.json, in VARIANTS order."""
  table = run_dir.RunDir(workdir).reports() / 'ablation.json'
  if not table.exists():
    return {}
  rows = {row['slug']: row for row in run_dir.read_json(table, 'ablate')}
  return {v.slug: rows[v.slug] for v in VARIANTS if v.slug in rows}


def _record(workdir: str, row: dict) -> None:
  """Merge `row` into DIR/reports/ablation.{json,md}, under a lock, so that jobs splitting
  the variants of one DIR record side by side without losing each other's rows."""
  if parallel.is_writer():
    lock_file = run_dir.RunDir(workdir).reports() / '.ablation.lock'
    with run_dir.exclusive(lock_file, 'recording its ablation row'):
      merged = {**_recorded(workdir), row['slug']: row}
      rows = [merged[v.slug] for v in VARIANTS if v.slug in merged]
      _write(workdir, 'ablation', rows, markdown_table(rows))
  parallel.barrier(f'ablate: {row["slug"]} recorded')


def _publish(workdir: str, name: str, data, table: str) -> None:
  """DIR/reports/<name>.json and .md, written by one process; logged by every one."""
  if parallel.is_writer():
    _write(workdir, name, data, table)
  parallel.barrier(f'ablate: {name}')
  logging.info('ablate: %s\n%s', name, table)


def _write(workdir: str, name: str, data, table: str) -> None:
  out = run_dir.RunDir(workdir).reports()
  run_dir.write_json(out / f'{name}.json', data)
  run_dir.write_text(out / f'{name}.md', table)


def _recalls(cfg, train, ids, run: run_dir.RunDir, threshold: float) -> dict:
  """{'part_recall', 'body_recall'} (%) of the maps at the variant's best CAM threshold, when
  the dataset has part masks (the parts world); else nothing."""
  if not len(train) or 'part_mask' not in train[0]:
    return {}
  by_threshold = map_metrics.evaluate_part_recall(cfg, train, ids, run)
  at = min(by_threshold, key=lambda e: abs(e['threshold'] - threshold))
  return {'part_recall': 100 * at['part_recall'], 'body_recall': 100 * at['body_recall']}


def markdown_table(rows: list[dict]) -> str:
  recalls = any('part_recall' in r for r in rows)
  head = '| variant | CAM mIoU % (train) | pseudo-label mIoU % (train) | bg threshold |'
  rule = '|---|---:|---:|---:|'
  if recalls:
    head += ' part recall % | body recall % |'
    rule += '---:|---:|'
  lines = [head, rule]
  lines += [
    f'| {r["variant"]} | {r["cam_miou"]:.1f} | {r["pseudo_label_miou"]:.1f} | '
    f'{r["cam_bg_threshold"]:.2f}{" (edge)" if r.get("cam_bg_threshold_at_edge") else ""} |'
    + (f' {r["part_recall"]:.1f} | {r["body_recall"]:.1f} |' if recalls else '')
    for r in rows
  ]
  edge = any(r.get('cam_bg_threshold_at_edge') for r in rows)
  note = '\n(edge): the best threshold is at the end of the sweep; the CAM mIoU may be higher.\n'
  return '\n'.join(lines) + '\n' + (note if edge else '')


# --------------------------------------------------------------------- the variants over seeds

# The pre-registered analysis (docs/ablation.md, "Parts world: the analysis plan"): each
# measure's mean and standard error over the seeds, and the per-seed paired differences of a
# variant against its control. A difference counts only when its mean exceeds
# DECISION_STANDARD_ERRORS standard errors and at least DECISION_AGREEING of the seeds
# (4 of 5) share its sign.
SEED_MEASURES = (
  ('cam_miou', 'CAM mIoU %'),
  ('pseudo_label_miou', 'pseudo-label mIoU %'),
  ('part_recall', 'part recall %'),
  ('body_recall', 'body recall %'),
)
PAIRED = (('full_method', 'baseline_views'), ('related_only', 'baseline_views'))
PAIRED_MEASURES = ('cam_miou', 'pseudo_label_miou', 'part_recall')
DECISION_STANDARD_ERRORS = 2.0
DECISION_AGREEING = 0.8


def seed_config(cfg, seed: int):
  """The finalized config of one seed: seed and localize.seed (the dataset, data.seed, stays)."""
  return config.with_overrides(cfg, (('seed', seed), ('localize.seed', seed)))


def run_seeds(
  cfg,
  workdir: str,
  stages: Mapping[str, Callable],
  seeds: Sequence[int],
  variants: Sequence[Variant] = VARIANTS,
  lock: Callable[[str], ContextManager] = contextlib.nullcontext,
) -> dict:
  """`run` of `variants` once per seed in DIR/seed<k> (each resumes as `run` does), and the
  paired analysis (`paired_report`) of every variant recorded so far ->
  DIR/reports/ablation_seeds.{json,md}, rewritten after every seed: a run of many CPU hours
  shows its interim table (marked as such) as it goes.

  `lock` goes to `run`, so jobs with disjoint seeds, or with variants of different
  classifiers, can share DIR side by side; each job's report holds its own seeds, and a last
  `--seeds` with all of them (every variant then recorded, so skipped) writes the joint one."""
  _check_seeds(seeds)
  rows = {}
  for seed in seeds:
    logging.info('=== ablate: seed %d ===', seed)
    rows[seed] = run(
      seed_config(cfg, seed), os.path.join(workdir, f'seed{seed}'), stages, variants, lock
    )
    report = {**paired_report(rows), 'seeds_planned': list(seeds)}
    _publish(workdir, 'ablation_seeds', report, seeds_table(report))
  return report


def _check_seeds(seeds: Sequence[int]) -> None:
  if not seeds or len(set(seeds)) < len(seeds):
    raise ValueError(f'--seeds={",".join(map(str, seeds))}: give distinct seeds, e.g. 0,1,2')


def _mean_se(values: list[float]) -> dict:
  """Mean and standard error (sample standard deviation / sqrt(n); None for one value)."""
  n = len(values)
  se = float(np.std(values, ddof=1) / np.sqrt(n)) if n > 1 else None
  return {'mean': float(np.mean(values)), 'se': se, 'values': [float(v) for v in values]}


def compare(differences: list[float]) -> dict:
  """{'difference': mean/se/values, 'agreeing': seeds with the mean's sign, 'verdict': 'gain',
  'loss' or 'no measurable difference' by the pre-registered rule} of per-seed differences."""
  stat = _mean_se(differences)
  sign = np.sign(stat['mean'])
  agreeing = int(np.sum(np.sign(differences) == sign))
  beyond = stat['se'] is not None and abs(stat['mean']) > DECISION_STANDARD_ERRORS * stat['se']
  if beyond and agreeing >= DECISION_AGREEING * len(differences):
    verdict = 'gain' if sign > 0 else 'loss'
  else:
    verdict = 'no measurable difference'
  return {'difference': stat, 'agreeing': agreeing, 'verdict': verdict}


def paired_report(rows_by_seed: Mapping[int, list[dict]]) -> dict:
  """{'seeds', 'variants': {slug: {measure: mean/se/values}}, 'paired': [{variant, control,
  measure, difference: mean/se/values, agreeing, verdict}]} from each seed's `run` rows.
  Variants some seed lacks (not run there yet), the pairs that need them, and measures a
  dataset lacks (recalls outside the parts world) are left out."""
  seeds = list(rows_by_seed)
  by_slug = [{r['slug']: r for r in rows_by_seed[s]} for s in seeds]
  slugs = [v.slug for v in VARIANTS if all(v.slug in rows for rows in by_slug)]
  variants = {
    slug: {
      key: _mean_se([rows[slug][key] for rows in by_slug])
      for key, _ in SEED_MEASURES
      if all(key in rows[slug] for rows in by_slug)
    }
    for slug in slugs
  }
  paired = []
  for slug, control in PAIRED:
    for key in PAIRED_MEASURES:
      if key not in variants.get(slug, {}) or key not in variants.get(control, {}):
        continue
      differences = [rows[slug][key] - rows[control][key] for rows in by_slug]
      paired.append({'variant': slug, 'control': control, 'measure': key, **compare(differences)})
  return {'seeds': seeds, 'variants': variants, 'paired': paired}


def seeds_table(report: dict) -> str:
  """Markdown: mean ± standard error of each measure per variant, then the paired
  differences and their verdicts."""
  columns = [(k, t) for k, t in SEED_MEASURES if any(k in v for v in report['variants'].values())]
  n = len(report['seeds'])
  lines = [f'Mean ± standard error over {_seeds(report["seeds"])}.']
  to_run = [s for s in report.get('seeds_planned', ()) if s not in report['seeds']]
  if to_run:
    lines.append(
      f'**Interim:** {_seeds(to_run)} still to run; the verdicts are the '
      'pre-registered decision only once every planned seed is in.'
    )
  lines += [
    '',
    '| variant | ' + ' | '.join(t for _, t in columns) + ' |',
    '|---|' + '---:|' * len(columns),
  ]
  for slug, stats in report['variants'].items():
    lines.append(
      f'| {slug} | ' + ' | '.join(_mean_pm(stats.get(k), 'se') for k, _ in columns) + ' |'
    )
  lines += [
    '',
    '| paired difference | measure | mean ± standard error | seeds with its sign | verdict |',
    '|---|---|---:|---:|---|',
  ]
  for p in report['paired']:
    lines.append(
      f'| {p["variant"]} − {p["control"]} | {p["measure"]} | {_mean_pm(p["difference"], "se")} | '
      f'{p["agreeing"]} of {n} | {p["verdict"]} |'
    )
  return '\n'.join(lines) + '\n'


def _seeds(seeds: Sequence[int]) -> str:
  return f'{len(seeds)} seed{"s" * (len(seeds) != 1)} ({", ".join(map(str, seeds))})'


# ------------------------------------------------------------------- the paper's data settings


@dataclasses.dataclass(frozen=True)
class Setting:
  name: str
  slug: str
  extra: Callable | None  # sets data.extra (a configs/synthetic.py argument); None: no extra


SETTINGS = (
  Setting('1: image-level labels only', 'setting1', None),
  Setting('2: + single-label images', 'setting2', synthetic_config.setting2),
  Setting('3: + noisy web images', 'setting3', synthetic_config.setting3),
)
# (row name, variant): the CAM baseline (variant 1) and the full method (variant 4).
SETTING_VARIANTS = (
  ('CAM baseline', variant('baseline_cam')),
  ('full method', variant('full_method')),
)
# summary.json fields in the table: (key, column title); the CRF column when evaluate.crf.
SETTING_COLUMNS = (
  ('cam_miou', 'CAM mIoU % (train)'),
  ('pseudo_label_miou', 'pseudo-label mIoU % (train)'),
  ('segmentation_miou', 'segmentation mIoU % (val)'),
  ('segmentation_miou_crf', '+ CRF % (val)'),
)


def settings_config(cfg, setting: Setting, variant: Variant, seed: int):
  """The finalized config of one run: `setting`'s data.extra (setting 1: none), `variant`'s
  overrides, `seed` in seed and localize.seed (the dataset, data.seed, stays), and only the
  pseudo-label segmenter (the fully supervised one depends on neither axis)."""
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.data.extra.layout = 'none'
  if setting.extra is not None:
    setting.extra(c)
  overrides = (('seed', seed), ('localize.seed', seed), ('segment.supervisions', ('pseudo',)))
  return config.with_overrides(c, overrides + variant.overrides)


def run_settings(cfg, workdir: str, stages: Mapping[str, Callable], seeds: Sequence[int]) -> list:
  """Every setting x (CAM baseline, full method) x seed through `stages` (the pipeline's, in
  order), in DIR/settings/<setting>/seed<k>/<variant>; a run whose summary.json exists is
  read, not redone, and a killed one resumes stage by stage. Writes and returns the rows."""
  if cfg.data.name != 'synthetic':
    raise ValueError(
      f"ablate --settings runs the synthetic dataset's settings; data.name={cfg.data.name!r} "
      '(use --config configs/synthetic.py)'
    )
  _check_seeds(seeds)
  summaries = {}
  for seed in seeds:  # seed by seed: a killed run already has every cell of the first seeds
    for setting in SETTINGS:
      for row_name, variant in SETTING_VARIANTS:
        logging.info(
          '=== ablate --settings: setting %s, %s, seed %d ===', setting.name, row_name, seed
        )
        rcfg = settings_config(cfg, setting, variant, seed)
        rdir = os.path.join(workdir, 'settings', setting.slug, f'seed{seed}', variant.slug)
        summary = run_dir.RunDir(rdir).summary()
        if not summary.is_file():
          for stage in stages.values():
            stage(rcfg, rdir)
        summaries.setdefault((setting, row_name), []).append(run_dir.read_json(summary, 'evaluate'))
  rows = [
    {
      'setting': s.name,
      'setting_slug': s.slug,
      'variant': v,
      'seeds': list(seeds),
      **aggregate(runs),
    }
    for (s, v), runs in summaries.items()
  ]
  notes = _settings_notes(cfg, seeds)
  _publish(workdir, 'settings', {'notes': notes, 'rows': rows}, settings_table(rows, notes))
  return rows


def aggregate(summaries: list[dict]) -> dict:
  """{key: {'mean', 'std', 'values'}} of each SETTING_COLUMNS key every summary has, and
  'num_seeds'; std is the sample standard deviation (n - 1), None for one run."""
  out = {'num_seeds': len(summaries)}
  for key, _ in SETTING_COLUMNS:
    values = [float(s[key]) for s in summaries if key in s]
    if values and len(values) == len(summaries):
      std = float(np.std(values, ddof=1)) if len(values) > 1 else None
      out[key] = {'mean': float(np.mean(values)), 'std': std, 'values': values}
  return out


def _settings_notes(cfg, seeds: Sequence[int]) -> list[str]:
  d = cfg.data
  ratios = [
    settings_config(cfg, s, variant('baseline_cam'), seeds[0]).data.extra.ratio
    for s in SETTINGS[1:]
  ]
  train, val = (
    min(n, d.max_per_split) if d.max_per_split else n for n in (d.train_size, d.val_size)
  )
  return [
    f'seeds {", ".join(map(str, seeds))} (seed and localize.seed; every run uses the same '
    f'dataset, data.seed={d.seed}: {train} train, {val} val images)',
    f'setting 2: {d.single_label_size} single-label images; setting 3: {d.web_size} web '
    f'images, labels wrong at rate {d.web_noise_rate}; extra anchors per epoch per train '
    f'image (data.extra.ratio): {ratios[0]} and {ratios[1]}',
  ]


def settings_table(rows: list[dict], notes: Sequence[str] = ()) -> str:
  """Markdown: a row per setting and variant, mean ± std over the seeds of each column that
  some row has."""
  columns = [(k, t) for k, t in SETTING_COLUMNS if any(k in r for r in rows)]
  lines = [
    '| setting | variant | ' + ' | '.join(t for _, t in columns) + ' | seeds |',
    '|---|---|' + '---:|' * (len(columns) + 1),
  ]
  for r in rows:
    cells = [_mean_pm(r.get(k), 'std') for k, _ in columns]
    lines.append(f'| {r["setting"]} | {r["variant"]} | {" | ".join(cells)} | {r["num_seeds"]} |')
  return '\n'.join(lines + [''] + [f'- {n}' for n in notes]) + '\n'


def _mean_pm(stat: dict | None, spread: str) -> str:
  """'mean ± spread' of a stat dict (spread: 'std' or 'se'; the mean alone where it is None)."""
  if stat is None:
    return '–'
  return f'{stat["mean"]:.1f}' + ('' if stat[spread] is None else f' ± {stat[spread]:.1f}')
