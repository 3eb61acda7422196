"""Stage 5: the numbers researchers report, in WORKDIR/reports/.

(a) localization maps on train as CAMs, at the best background threshold of a sweep;
(b) pseudo labels on train (ignored pixels count as misses of their true class);
(c) the segmenter on val, beside an all-background prediction as the floor.
"""

import os

import numpy as np
from absl import logging

from cows_jax import label, localize, metrics, reporting, segment, visualize
from cows_jax.data import sources


def reports_dir(workdir: str) -> str:
  return os.path.join(workdir, 'reports')


def _cam_items(train, ids, workdir):
  for i, image_id in enumerate(ids):
    maps, classes = localize.load_maps(os.path.join(localize.maps_dir(workdir), image_id + '.npz'))
    yield maps, classes, train[i]['mask']


def evaluate_cams(cfg, train, ids, workdir):
  """(best threshold, mIoU, curve, per-class IoU at the best threshold)."""
  n = cfg.data.num_classes + 1
  best_t, best_miou, curve = metrics.sweep_bg_threshold(
      _cam_items(train, ids, workdir), cfg.evaluate.cam_thresholds, n)
  acc = metrics.ConfusionAccumulator(n)
  for maps, classes, gt in _cam_items(train, ids, workdir):
    acc.add(metrics.cam_scores_to_label(maps, classes, best_t), gt)
  return best_t, best_miou, curve, acc.per_class_iou()


def evaluate_pseudo_labels(cfg, train, ids, workdir):
  acc = metrics.ConfusionAccumulator(cfg.data.num_classes + 1)
  for i, image_id in enumerate(ids):
    acc.add(visualize.read_label_png(label.label_path(workdir, image_id)), train[i]['mask'])
  return acc


def localization_report(cfg, workdir: str) -> dict:
  """Stage-2 numbers only (no segmenter needed): CAM mIoU of the maps at the best threshold
  of the background sweep, and pseudo-label mIoU, both on train."""
  ids = reporting.read_json(label.index_path(workdir), 'label')['ids']
  train = sources.load(cfg)['train']
  best_t, cam_miou, curve, _ = evaluate_cams(cfg, train, ids, workdir)
  pseudo = evaluate_pseudo_labels(cfg, train, ids, workdir)
  return {'cam_miou': cam_miou, 'cam_bg_threshold': best_t,
          'cam_threshold_sweep': [{'threshold': t, 'miou': m} for t, m in curve],
          'pseudo_label_miou': pseudo.miou(),
          'pseudo_label_ignored_fraction': _ignored_fraction(pseudo)}


def _ignored_fraction(acc) -> float:
  return float(acc.matrix[:, -1].sum() / acc.matrix.sum())


def predict_split(cfg, source, predict):
  """Predictions for every record, batched over images of equal size."""
  bs = cfg.segment.eval_batch_size
  preds = [None] * len(source)
  by_shape: dict = {}
  for i in range(len(source)):
    by_shape.setdefault(source[i]['image'].shape, []).append(i)
  for indices in by_shape.values():
    for s in range(0, len(indices), bs):
      chunk = indices[s:s + bs]
      padded = chunk + [chunk[0]] * (bs - len(chunk))
      out = predict(np.stack([source[i]['image'] for i in padded]))
      for j, i in enumerate(chunk):
        preds[i] = out[j].astype(np.uint8)
  return preds


def evaluate_segmentation(cfg, val, preds):
  n = cfg.data.num_classes + 1
  seg, floor = metrics.ConfusionAccumulator(n), metrics.ConfusionAccumulator(n)
  for i, pred in enumerate(preds):
    gt = val[i]['mask']
    seg.add(pred, gt)
    floor.add(np.zeros_like(gt), gt)
  return seg, floor


def val_grid(cfg, val, preds):
  """image | prediction | ground truth for the first few val images (maps and pseudo labels
  exist for train images only: `train_grid` shows those)."""
  rows = []
  for i in range(min(cfg.evaluate.num_visualize, len(val))):
    r = val[i]
    rows.append([r['image'], visualize.colorize(preds[i]), visualize.colorize(r['mask'])])
  return visualize.make_grid(rows, ['image', 'prediction', 'ground truth'])


def train_grid(cfg, train, ids, workdir, predict):
  """image | localization map | pseudo label | prediction | ground truth, on train images."""
  rows = []
  for i in range(min(cfg.evaluate.num_visualize, len(ids))):
    r = train[i]
    maps, _ = localize.load_maps(os.path.join(localize.maps_dir(workdir), ids[i] + '.npz'))
    peak = maps.max() if maps.size else 0.0
    heat = maps.max(0) / peak if peak > 0 else np.zeros(r['mask'].shape, np.float32)
    pseudo = visualize.read_label_png(label.label_path(workdir, ids[i]))
    pred = predict(r['image'][None])[0]
    rows.append([r['image'], visualize.heatmap(heat, r['image']), visualize.colorize(pseudo),
                 visualize.colorize(pred.astype(np.uint8)), visualize.colorize(r['mask'])])
  return visualize.make_grid(rows, ['image', 'map', 'pseudo label', 'prediction',
                                    'ground truth'])


def run(cfg, workdir: str) -> dict:
  """Writes summary.json, per_class_iou.md/.json and grids; returns the summary."""
  ids = reporting.read_json(label.index_path(workdir), 'label')['ids']
  data = sources.load(cfg)
  train, val = data['train'], data['val']
  names = ('background',) + sources.class_names(cfg)

  best_t, cam_miou, curve, cam_iou = evaluate_cams(cfg, train, ids, workdir)
  pseudo = evaluate_pseudo_labels(cfg, train, ids, workdir)
  predict = segment.load_predictor(cfg, workdir)
  preds = predict_split(cfg, val, predict)
  seg, floor = evaluate_segmentation(cfg, val, preds)

  summary = {
      'cam_miou': cam_miou, 'cam_bg_threshold': best_t,
      'cam_threshold_sweep': [{'threshold': t, 'miou': m} for t, m in curve],
      'pseudo_label_miou': pseudo.miou(),
      'pseudo_label_ignored_fraction': _ignored_fraction(pseudo),
      'segmentation_miou': seg.miou(),
      'all_background_miou': floor.miou(),
      'num_train': len(train), 'num_val': len(val),
  }
  out = reports_dir(workdir)
  columns = {'CAM (train)': cam_iou, 'pseudo label (train)': pseudo.per_class_iou(),
             'segmentation (val)': seg.per_class_iou()}
  reporting.write_json_atomic(os.path.join(out, 'per_class_iou.json'), {
      'classes': list(names),
      **{k: [None if np.isnan(x) else float(x) for x in v] for k, v in columns.items()}})
  reporting.write_text_atomic(os.path.join(out, 'per_class_iou.md'),
                              visualize.per_class_iou_markdown(names, columns))
  visualize.save_png_atomic(os.path.join(out, 'val_predictions.png'),
                            val_grid(cfg, val, preds))
  visualize.save_png_atomic(os.path.join(out, 'train_pipeline.png'),
                            train_grid(cfg, train, ids, workdir, predict))
  reporting.write_json_atomic(os.path.join(out, 'summary.json'), summary)
  logging.info('evaluate: CAM %.1f (bg %.2f) | pseudo labels %.1f | segmentation %.1f '
               '(all-background %.1f) -> %s', cam_miou, best_t, summary['pseudo_label_miou'],
               summary['segmentation_miou'], summary['all_background_miou'], out)
  return summary
