"""The stage-2 numbers of a run directory: mIoU of the localization maps (as CAMs, at the
best background threshold of a sweep) and of the pseudo labels, both on data.train_split.
`evaluate` reports them beside the segmenter's; `ablate` compares them across variants.
"""

import numpy as np
from absl import logging

from cows_jax import metrics, parallel, progress, run_dir


def _cam_items(train, ids, run: run_dir.RunDir, shown: progress.Progress):
  for i in parallel.process_share(len(ids)):
    maps, classes = run_dir.load_maps(run.map_file(ids[i]))
    yield maps, classes, train[i]['mask']
    shown.update()


def evaluate_cams(cfg, train, ids, run: run_dir.RunDir):
  """(best threshold, mIoU, curve, per-class IoU at the best threshold); each process reads
  its share of the maps and the confusion matrices are summed over processes."""
  n = cfg.data.num_classes + 1
  shown = progress.Progress('evaluate: maps', len(parallel.process_share(len(ids))))
  best_t, best_miou, curve, acc = metrics.sweep_bg_threshold(
    _cam_items(train, ids, run, shown),
    cfg.evaluate.cam_thresholds,
    n,
    reduce=parallel.sum_over_processes,
  )
  shown.close()
  return best_t, best_miou, curve, acc.per_class_iou()


def evaluate_pseudo_labels(cfg, train, ids, run: run_dir.RunDir) -> metrics.ConfusionAccumulator:
  """Each process reads its share of the labels; the confusion matrix is summed over them."""
  acc = metrics.ConfusionAccumulator(cfg.data.num_classes + 1)
  for i in parallel.process_share(len(ids)):
    acc.add(run_dir.read_label_png(run.label_file(ids[i])), train[i]['mask'])
  acc.matrix = parallel.sum_over_processes(acc.matrix)
  return acc


def ignored_fraction(acc: metrics.ConfusionAccumulator) -> float:
  """Share of the labelled pixels that the pseudo labels ignore (the accumulator's last column)."""
  return float(acc.matrix[:, -1].sum() / acc.matrix.sum())


def localization_report(cfg, train, ids, run: run_dir.RunDir) -> tuple[dict, dict]:
  """(summary entries, per-class IoU columns) of the maps and the pseudo labels."""
  best_t, cam_miou, curve, cam_iou = evaluate_cams(cfg, train, ids, run)
  pseudo = evaluate_pseudo_labels(cfg, train, ids, run)
  thresholds = sorted(cfg.evaluate.cam_thresholds)
  at_edge = len(thresholds) > 1 and best_t in (thresholds[0], thresholds[-1])
  if at_edge:
    logging.warning(
      'evaluate: the best CAM background threshold %.2f is at the edge of the sweep %s: the '
      'reported CAM mIoU may not be its best; widen evaluate.cam_thresholds',
      best_t,
      tuple(thresholds),
    )
  summary = {
    'cam_miou': cam_miou,
    'cam_bg_threshold': best_t,
    'cam_bg_threshold_at_edge': at_edge,
    'cam_threshold_sweep': [{'threshold': t, 'miou': m} for t, m in curve],
    'pseudo_label_miou': pseudo.miou(),
    'pseudo_label_ignored_fraction': ignored_fraction(pseudo),
  }
  columns = {'CAM (train)': cam_iou, 'pseudo label (train)': pseudo.per_class_iou()}
  return summary, columns


def per_class_json(names, columns: dict) -> dict:
  """Per-class IoU columns as JSON (NaN, a class absent everywhere, as null)."""
  return {
    'classes': list(names),
    **{k: [None if np.isnan(x) else float(x) for x in v] for k, v in columns.items()},
  }


def part_body_recall(items, thresholds, num_classes: int) -> list[dict]:
  """Part and body recall of CAMs at each background threshold (the parts world).

  `items`: (maps [K,H,W], classes [K], mask, part_mask) per image, the maps as
  `metrics.sweep_bg_threshold` reads them (ReLU, each map divided by its max, the best class
  where it exceeds the threshold), mask the ground truth (k+1 on class k, 255 ignore) and
  part_mask k+1 on class k's part (synthetic_parts.py). Class k's part pixels are those with
  mask == part_mask == k+1, its body pixels those with mask == k+1 and another part_mask;
  a recall is the fraction of them the maps label k. Returns one entry per threshold, in the
  given order: {'threshold', 'part_recall', 'body_recall' (means over the classes that have
  such pixels, NaN if none), 'part_recall_per_class', 'body_recall_per_class' (NaN: none)}.
  """
  thresholds = [float(t) for t in thresholds]
  # [threshold, kind (part, body), class, (hit, total)]
  counts = np.zeros((len(thresholds), 2, num_classes, 2), np.int64)
  for maps, classes, mask, part_mask in items:
    best, label = metrics._max_normalized_best(maps, classes)
    mask, part_mask = np.asarray(mask), np.asarray(part_mask)
    for k in np.unique(mask):
      if k == 0 or k > num_classes:
        continue
      obj = mask == k
      for kind, region in enumerate((obj & (part_mask == k), obj & (part_mask != k))):
        if not region.any():
          continue
        counts[:, kind, k - 1, 1] += region.sum()
        for i, t in enumerate(thresholds):
          counts[i, kind, k - 1, 0] += np.sum(region & (best > t) & (label == k))
  out = []
  with np.errstate(invalid='ignore', divide='ignore'):
    rates = counts[..., 0] / counts[..., 1]
  for i, t in enumerate(thresholds):
    entry = {'threshold': t}
    for kind, name in enumerate(('part', 'body')):
      per_class = rates[i, kind]
      present = ~np.isnan(per_class)
      entry[f'{name}_recall'] = float(per_class[present].mean()) if present.any() else float('nan')
      entry[f'{name}_recall_per_class'] = [float(x) for x in per_class]
    out.append(entry)
  return out


def evaluate_part_recall(cfg, train, ids, run: run_dir.RunDir) -> list[dict]:
  """`part_body_recall` of a run's maps over evaluate.cam_thresholds; `train` must carry
  'part_mask' (the parts world). One process reads every map."""
  shown = progress.Progress('evaluate: part recall', len(ids))

  def items():
    for i in range(len(ids)):
      maps, classes = run_dir.load_maps(run.map_file(ids[i]))
      record = train[i]
      yield maps, classes, record['mask'], record['part_mask']
      shown.update()

  out = part_body_recall(items(), cfg.evaluate.cam_thresholds, cfg.data.num_classes)
  shown.close()
  return out
