"""Stage 5: the numbers researchers report, in WORKDIR/reports/.

(a) localization maps on train as CAMs, at the best background threshold of a sweep;
(b) pseudo labels on train (ignored pixels count as misses of their true class);
(c) the segmenter on val, with and without the dense CRF, beside the same segmenter trained on
    ground-truth masks (the fully supervised upper bound) and an all-background floor.
"""

import functools

import numpy as np
from absl import logging

from cows_jax import (
  config,
  crf,
  host_pool,
  inference,
  map_metrics,
  metrics,
  parallel,
  progress,
  run_dir,
  summaries,
  visualize,
)
from cows_jax.data import sources

# summary.json key stem and table column of each segmenter's val predictions.
OUTPUTS = {
  'pseudo': ('segmentation', 'segmentation'),
  'ground_truth': ('fully_supervised', 'fully supervised'),
}


def evaluate_segmenters(cfg, val, workdir):
  """{summary key stem: (ConfusionAccumulator, {index: prediction} of the images the grid
  shows, column title)} of every trained segmenter (segment.supervisions), each also with the
  dense CRF ('_crf') when evaluate.crf; and the probabilities function of the first segmenter
  (for the train grid). Each process predicts its share of the images; the confusion matrices
  are summed over processes; process 0 also predicts the images the grid shows. The CRF runs
  in `host_workers` processes while the device predicts the next images (host_pool)."""
  n = cfg.data.num_classes + 1
  crf_params = crf.Params.from_config(cfg.crf) if cfg.evaluate.crf else None
  share = parallel.process_share(len(val))
  shown = range(min(cfg.evaluate.num_visualize, len(val))) if parallel.is_writer() else ()
  results, first = {}, None
  workers = host_pool.workers(cfg) if crf_params is not None else 1
  with host_pool.HostPool(workers, 'evaluate') as pool:
    for supervision in run_dir.supervisions(cfg):
      probabilities = inference.load_predictor(cfg, workdir, supervision)
      first = first or probabilities
      key, title = OUTPUTS[supervision]
      accs = {'': metrics.ConfusionAccumulator(n), '_crf': metrics.ConfusionAccumulator(n)}
      grid = {'': {}, '_crf': {}}
      counter = progress.Progress(f'evaluate: {title} segmenter', len(share))
      for i in sorted(set(share) | set(shown)):
        preds = inference.label_maps_pooled(val[i]['image'], probabilities, crf_params, pool)
        pool.then(functools.partial(_score, i, val, share, shown, accs, grid, counter), *preds)
      pool.drain()
      counter.close()
      for suffix, extra in (('', ''), ('_crf', ' + CRF')):
        if suffix == '' or crf_params is not None:
          accs[suffix].matrix = parallel.sum_over_processes(accs[suffix].matrix)
          results[key + suffix] = (accs[suffix], grid[suffix], f'{title}{extra} (val)')
  return results, first


def _score(i, val, share, shown, accs, grid, counter, plain, refined) -> None:
  """Image i's label maps (after the CRF: None without it) into the confusion matrices (its
  process's share) and the grid (the images it shows)."""
  for suffix, pred in (('', plain), ('_crf', refined)):
    if pred is not None and i in share:
      accs[suffix].add(pred, val[i]['mask'])
    if pred is not None and i in shown:
      grid[suffix][i] = pred
  counter.update(int(i in share))


def all_background(cfg, val):
  floor = metrics.ConfusionAccumulator(cfg.data.num_classes + 1)
  for i in parallel.process_share(len(val)):
    floor.add(np.zeros_like(val[i]['mask']), val[i]['mask'])
  floor.matrix = parallel.sum_over_processes(floor.matrix)
  return floor


def val_grid(cfg, val, results):
  """image | each segmenter's prediction | ground truth for the first few val images (maps and
  pseudo labels exist for train images only: `train_grid` shows those)."""
  rows = []
  for i in range(min(cfg.evaluate.num_visualize, len(val))):
    r = val[i]
    rows.append(
      [
        r['image'],
        *(visualize.colorize(preds[i]) for _, preds, _ in results.values()),
        visualize.colorize(r['mask']),
      ]
    )
  return visualize.make_grid(
    rows, ['image', *(t.replace(' (val)', '') for _, _, t in results.values()), 'ground truth']
  )


def train_grid(cfg, train, ids, run: run_dir.RunDir, probabilities):
  """image | localization map | pseudo label | prediction | ground truth, on train images."""
  rows = []
  for i in range(min(cfg.evaluate.num_visualize, len(ids))):
    r = train[i]
    maps, _ = run_dir.load_maps(run.map_file(ids[i]))
    peak = maps.max() if maps.size else 0.0
    heat = maps.max(0) / peak if peak > 0 else np.zeros(r['mask'].shape, np.float32)
    pseudo = run_dir.read_label_png(run.label_file(ids[i]))
    pred = np.argmax(probabilities(r['image']), -1)
    rows.append(
      [
        r['image'],
        visualize.heatmap(heat, r['image']),
        visualize.colorize(pseudo),
        visualize.colorize(pred.astype(np.uint8)),
        visualize.colorize(r['mask']),
      ]
    )
  return visualize.make_grid(rows, ['image', 'map', 'pseudo label', 'prediction', 'ground truth'])


def _miou_key(stem: str) -> str:
  """'segmentation' -> 'segmentation_miou', 'segmentation_crf' -> 'segmentation_miou_crf'."""
  return stem[:-4] + '_miou_crf' if stem.endswith('_crf') else stem + '_miou'


def run(cfg, workdir: str) -> dict:
  """Writes summary.json, per_class_iou.md/.json and grids; returns the summary."""
  cfg = config.finalize(cfg)
  run = run_dir.RunDir(workdir)
  ids = run_dir.read_json(run.labels_index(), 'label')['ids']
  if cfg.evaluate.crf:
    crf.check_available()  # before minutes of work, not after.
  data = sources.load(cfg)
  train, val = data['train'], data['val']
  names = ('background',) + sources.class_names(cfg)

  summary, columns = map_metrics.localization_report(cfg, train, ids, run)
  results, probabilities = evaluate_segmenters(cfg, val, workdir)
  floor = all_background(cfg, val)
  summary.update(
    {_miou_key(k): acc.miou() for k, (acc, _, _) in results.items()},
    all_background_miou=floor.miou(),
    num_train=len(train),
    num_val=len(val),
  )
  columns.update({title: acc.per_class_iou() for acc, _, title in results.values()})
  below = [k for k, (acc, _, _) in results.items() if acc.miou() < floor.miou()]
  summary['below_all_background'] = below
  for key in below:
    logging.warning(
      '*** evaluate: %s scores %.1f mIoU, below the all-background prediction (%.1f): the '
      'segmenter learned nothing useful; check the pseudo labels (reports/train_pipeline.png, '
      'pseudo_label_miou, pseudo_label_ignored_fraction) ***',
      results[key][2],
      results[key][0].miou(),
      floor.miou(),
    )

  if parallel.is_writer():
    _write_reports(cfg, run, summary, columns, results, names, train, val, ids, probabilities)
  parallel.barrier('evaluate')
  logging.info(
    'evaluate: CAM %.1f (bg %.2f) | pseudo labels %.1f | %s | all-background %.1f -> %s',
    summary['cam_miou'],
    summary['cam_bg_threshold'],
    summary['pseudo_label_miou'],
    ' | '.join(f'{t} {acc.miou():.1f}' for acc, _, t in results.values()),
    summary['all_background_miou'],
    run.reports(),
  )
  return summary


def _write_reports(cfg, run, summary, columns, results, names, train, val, ids, probabilities):
  """summary.json, the per-class tables, the figures and the TensorBoard summaries."""
  out = run.reports()
  run_dir.write_json(out / 'per_class_iou.json', map_metrics.per_class_json(names, columns))
  run_dir.write_text(out / 'per_class_iou.md', visualize.per_class_iou_markdown(names, columns))
  main = next(iter(results))  # the first segmenter, after the CRF when there is one.
  acc, _, title = results.get(main + '_crf', results[main])
  run_dir.write_json(
    out / 'confusion_matrix.json',
    {'output': title, 'classes': list(names), 'matrix': acc.matrix.tolist()},
  )
  figures = {
    'val_predictions': val_grid(cfg, val, results),
    'confusion_matrix': visualize.confusion_matrix_image(acc.matrix, names, title),
    'train_pipeline': train_grid(cfg, train, ids, run, probabilities),
  }
  tensorboard = summaries.Writer(run.tensorboard('evaluate'))
  for name, rgb in figures.items():
    run_dir.save_png(out / f'{name}.png', rgb)
    tensorboard.image(name, rgb)
  tensorboard.scalars(0, {k: v for k, v in summary.items() if k.endswith(('_miou', '_crf'))})
  tensorboard.close()
  run_dir.write_json(run.summary(), summary)
