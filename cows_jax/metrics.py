"""Segmentation metrics: confusion matrix, per-class IoU, mIoU, and the CAM background-threshold sweep.

``num_classes`` always counts background (21 for PASCAL VOC). Label values: 0 background,
class id + 1 for objects, ``ignore_index`` (255) ignored.

The confusion matrix has one extra, last column: ``cm[g, num_classes]`` counts pixels of
ground-truth class g whose prediction is not a valid class (e.g. 255 in a pseudo label). Such a
pixel is a miss for its ground-truth class (a false negative) without being a false positive of
any class, which is how ignore regions of pseudo labels must be scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def confusion_matrix(
  pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
  """int64 [N, N+1] counts, rows = ground truth, cols = prediction, last col = invalid prediction.

  Pixels with gt == ignore_index are excluded; any other gt value outside 0..N-1 is an error
  (it would mean the wrong ``num_classes``). Predictions outside 0..N-1 go to the last column.
  """
  pred = np.asarray(pred)
  gt = np.asarray(gt)
  if pred.shape != gt.shape:
    raise ValueError(f'pred shape {pred.shape} != gt shape {gt.shape}')
  gt = gt.ravel().astype(np.int64)
  pred = pred.ravel().astype(np.int64)
  keep = gt != ignore_index
  gt, pred = gt[keep], pred[keep]
  if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
    raise ValueError(
      f'gt values must be in [0, {num_classes}) or {ignore_index}; got {np.unique(gt).tolist()}'
    )
  pred = np.where((pred >= 0) & (pred < num_classes), pred, num_classes)
  counts = np.bincount(gt * (num_classes + 1) + pred, minlength=num_classes * (num_classes + 1))
  return counts.reshape(num_classes, num_classes + 1)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
  """Per-class IoU in 0..1, NaN for classes absent from both gt and prediction.

  Accepts [N,N] or [N,N+1] (with the invalid-prediction column, which adds to the gt counts
  only). NaN rather than 0 so that absent classes do not drag the mean down.
  """
  cm = np.asarray(cm, dtype=np.int64)
  n = cm.shape[0]
  if cm.ndim != 2 or cm.shape[1] not in (n, n + 1):
    raise ValueError(f'confusion matrix must be [N,N] or [N,N+1], got {cm.shape}')
  tp = np.diagonal(cm[:, :n])
  union = cm.sum(axis=1) + cm[:, :n].sum(axis=0) - tp
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def mean_iou(cm: np.ndarray) -> float:
  """Mean IoU in percent (0..100) over the classes present in gt or prediction (NaN if none)."""
  iou = iou_from_confusion(cm)
  present = ~np.isnan(iou)
  return float(iou[present].mean() * 100.0) if present.any() else float('nan')


def _max_normalized_best(maps: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Best normalized class score per pixel and its label (class id + 1).

  CAM evaluation convention: ReLU, then divide each map by its max (an all-nonpositive map
  becomes zeros). With no classes the best score is -inf, so every pixel is background.
  """
  maps = np.asarray(maps)
  classes = np.asarray(classes, dtype=np.int64)
  if maps.ndim != 3 or classes.shape != (maps.shape[0],):
    raise ValueError(
      f'maps [K,H,W] and classes [K] must agree, got {maps.shape} and {classes.shape}'
    )
  maps = np.maximum(maps.astype(np.result_type(maps.dtype, np.float32), copy=False), 0)
  peak = maps.max(axis=(1, 2), keepdims=True, initial=0)
  maps = np.where(peak > 0, maps / np.where(peak > 0, peak, 1), 0)
  if classes.size == 0:
    return np.full(maps.shape[1:], -np.inf), np.zeros(maps.shape[1:], np.int64)
  return maps.max(axis=0), classes[np.argmax(maps, axis=0)] + 1


def sweep_bg_threshold(
  cams_and_gts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
  thresholds: Sequence[float],
  num_classes: int,
  ignore_index: int = 255,
  reduce=None,
) -> tuple[float, float, list[tuple[float, float]], 'ConfusionAccumulator']:
  """CAM mIoU for every background threshold in one pass over (maps, classes, gt) items.

  One pass matters because reading or computing CAMs is the expensive part. `reduce`, when
  given, combines each threshold's confusion matrix with those of other workers (a sum over
  processes) before the best threshold is chosen. Returns (best threshold, its mIoU in
  percent, [(threshold, mIoU), ...] in the given order, the best threshold's confusion
  accumulator); ties keep the first.
  """
  thresholds = [float(t) for t in thresholds]
  if not thresholds:
    raise ValueError('thresholds must not be empty')
  accs = [ConfusionAccumulator(num_classes, ignore_index) for _ in thresholds]
  for maps, classes, gt in cams_and_gts:
    best, best_label = _max_normalized_best(maps, classes)
    for t, acc in zip(thresholds, accs):
      acc.add(np.where(best > t, best_label, 0), gt)
  if reduce is not None:
    for acc in accs:
      acc.matrix = reduce(acc.matrix)
  curve = [(t, acc.miou()) for t, acc in zip(thresholds, accs)]
  best = max(range(len(curve)), key=lambda i: -np.inf if np.isnan(curve[i][1]) else curve[i][1])
  return curve[best][0], curve[best][1], curve, accs[best]


class ConfusionAccumulator:
  """Streaming sum of confusion matrices, so evaluation never holds all masks in memory."""

  def __init__(self, num_classes: int, ignore_index: int = 255):
    self.num_classes = num_classes
    self.ignore_index = ignore_index
    self.matrix = np.zeros((num_classes, num_classes + 1), np.int64)

  def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
    self.matrix += confusion_matrix(pred, gt, self.num_classes, self.ignore_index)

  def per_class_iou(self) -> np.ndarray:
    return iou_from_confusion(self.matrix)

  def miou(self) -> float:
    return mean_iou(self.matrix)
