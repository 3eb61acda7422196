"""Stage 5: the numbers researchers report, in WORKDIR/reports/.

(a) localization maps on train as CAMs, at the best background threshold of a sweep;
(b) pseudo labels on train (ignored pixels count as misses of their true class);
(c) the segmenter on val, with and without the dense CRF, beside the same segmenter trained on
    ground-truth masks (the fully supervised upper bound) and an all-background floor.
"""

import os

import numpy as np
from absl import logging

from cows_jax import crf, label, localize, metrics, predict, reporting, segment, visualize
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
  best_t, best_miou, curve, acc = metrics.sweep_bg_threshold(
    _cam_items(train, ids, workdir), cfg.evaluate.cam_thresholds, n
  )
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
  return {
    'cam_miou': cam_miou,
    'cam_bg_threshold': best_t,
    'cam_threshold_sweep': [{'threshold': t, 'miou': m} for t, m in curve],
    'pseudo_label_miou': pseudo.miou(),
    'pseudo_label_ignored_fraction': _ignored_fraction(pseudo),
  }


def _ignored_fraction(acc) -> float:
  return float(acc.matrix[:, -1].sum() / acc.matrix.sum())


# summary.json key stem and table column of each segmenter's val predictions.
OUTPUTS = {
  'pseudo': ('segmentation', 'segmentation'),
  'ground_truth': ('fully_supervised', 'fully supervised'),
}


def evaluate_segmenters(cfg, val, workdir):
  """{summary key stem: (ConfusionAccumulator, val predictions, column title)} of every trained
  segmenter (segment.supervisions), each also with the dense CRF ('_crf') when evaluate.crf;
  and the probabilities function of the first segmenter (for the train grid)."""
  n = cfg.data.num_classes + 1
  crf_params = cfg.crf if cfg.evaluate.crf else None
  results, first = {}, None
  for supervision in segment.check_supervisions(cfg):
    probabilities = segment.load_predictor(cfg, workdir, supervision)
    first = first or probabilities
    key, title = OUTPUTS[supervision]
    plain, refined = predict.predict_source(val, probabilities, crf_params)
    for suffix, extra, preds in (('', '', plain), ('_crf', ' + CRF', refined)):
      if preds is not None:
        acc = metrics.ConfusionAccumulator(n)
        for i, pred in enumerate(preds):
          acc.add(pred, val[i]['mask'])
        results[key + suffix] = (acc, preds, f'{title}{extra} (val)')
  return results, first


def all_background(cfg, val):
  floor = metrics.ConfusionAccumulator(cfg.data.num_classes + 1)
  for i in range(len(val)):
    floor.add(np.zeros_like(val[i]['mask']), val[i]['mask'])
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


def train_grid(cfg, train, ids, workdir, probabilities):
  """image | localization map | pseudo label | prediction | ground truth, on train images."""
  rows = []
  for i in range(min(cfg.evaluate.num_visualize, len(ids))):
    r = train[i]
    maps, _ = localize.load_maps(os.path.join(localize.maps_dir(workdir), ids[i] + '.npz'))
    peak = maps.max() if maps.size else 0.0
    heat = maps.max(0) / peak if peak > 0 else np.zeros(r['mask'].shape, np.float32)
    pseudo = visualize.read_label_png(label.label_path(workdir, ids[i]))
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
  ids = reporting.read_json(label.index_path(workdir), 'label')['ids']
  if cfg.evaluate.crf:
    crf.check_available()  # before minutes of work, not after.
  data = sources.load(cfg)
  train, val = data['train'], data['val']
  names = ('background',) + sources.class_names(cfg)

  best_t, cam_miou, curve, cam_iou = evaluate_cams(cfg, train, ids, workdir)
  pseudo = evaluate_pseudo_labels(cfg, train, ids, workdir)
  results, probabilities = evaluate_segmenters(cfg, val, workdir)
  floor = all_background(cfg, val)

  summary = {
    'cam_miou': cam_miou,
    'cam_bg_threshold': best_t,
    'cam_threshold_sweep': [{'threshold': t, 'miou': m} for t, m in curve],
    'pseudo_label_miou': pseudo.miou(),
    'pseudo_label_ignored_fraction': _ignored_fraction(pseudo),
    **{_miou_key(k): acc.miou() for k, (acc, _, _) in results.items()},
    'all_background_miou': floor.miou(),
    'num_train': len(train),
    'num_val': len(val),
  }
  out = reports_dir(workdir)
  columns = {
    'CAM (train)': cam_iou,
    'pseudo label (train)': pseudo.per_class_iou(),
    **{title: acc.per_class_iou() for acc, _, title in results.values()},
  }
  reporting.write_json_atomic(
    os.path.join(out, 'per_class_iou.json'),
    {
      'classes': list(names),
      **{k: [None if np.isnan(x) else float(x) for x in v] for k, v in columns.items()},
    },
  )
  reporting.write_text_atomic(
    os.path.join(out, 'per_class_iou.md'), visualize.per_class_iou_markdown(names, columns)
  )
  visualize.save_png_atomic(os.path.join(out, 'val_predictions.png'), val_grid(cfg, val, results))
  main = next(iter(results))  # the first segmenter, after the CRF when there is one.
  acc, _, title = results.get(main + '_crf', results[main])
  visualize.save_png_atomic(
    os.path.join(out, 'confusion_matrix.png'),
    visualize.confusion_matrix_image(acc.matrix, names, title),
  )
  reporting.write_json_atomic(
    os.path.join(out, 'confusion_matrix.json'),
    {'output': title, 'classes': list(names), 'matrix': acc.matrix.tolist()},
  )
  visualize.save_png_atomic(
    os.path.join(out, 'train_pipeline.png'), train_grid(cfg, train, ids, workdir, probabilities)
  )
  reporting.write_json_atomic(os.path.join(out, 'summary.json'), summary)
  logging.info(
    'evaluate: CAM %.1f (bg %.2f) | pseudo labels %.1f | %s | all-background %.1f -> %s',
    cam_miou,
    best_t,
    summary['pseudo_label_miou'],
    ' | '.join(f'{t} {acc.miou():.1f}' for acc, _, t in results.values()),
    summary['all_background_miou'],
    out,
  )
  return summary
