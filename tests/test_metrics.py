"""Confusion matrix, IoU and the CAM threshold sweep against hand-computed numbers."""

import numpy as np
import pytest

from cows_jax.metrics import (
  ConfusionAccumulator,
  confusion_matrix,
  iou_from_confusion,
  mean_iou,
  sweep_bg_threshold,
)

GT = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
PRED = np.array([[0, 1, 1, 1], [2, 0, 2, 255]])
# rows gt 0..2, cols pred 0..2 + invalid prediction; the (gt 255, pred 2) pixel is dropped.
EXPECTED_CM = np.array(
  [
    [1, 1, 0, 0],
    [0, 2, 0, 1],
    [1, 0, 1, 0],
  ]
)
# class 0: 1 / (2 + 2 - 1); class 1: 2 / (3 + 3 - 2); class 2: 1 / (2 + 1 - 1)
EXPECTED_IOU = np.array([1 / 3, 1 / 2, 1 / 2])


def test_confusion_matrix_and_miou_by_hand():
  cm = confusion_matrix(PRED, GT, num_classes=3)
  np.testing.assert_array_equal(cm, EXPECTED_CM)
  assert cm.dtype == np.int64
  np.testing.assert_allclose(iou_from_confusion(cm), EXPECTED_IOU)
  assert mean_iou(cm) == pytest.approx(100 * (1 / 3 + 1 / 2 + 1 / 2) / 3)  # 44.44


def test_ignore_in_gt_excluded_and_ignore_in_pred_is_a_miss_not_a_false_positive():
  cm = confusion_matrix(np.array([255, 255, 1]), np.array([1, 255, 1]), num_classes=2)
  np.testing.assert_array_equal(cm, [[0, 0, 0], [0, 1, 1]])
  np.testing.assert_allclose(iou_from_confusion(cm), [np.nan, 0.5])
  empty = confusion_matrix(np.array([0, 1]), np.array([255, 255]), num_classes=2)
  np.testing.assert_array_equal(empty, np.zeros((2, 3)))
  assert np.isnan(mean_iou(empty))


def test_absent_class_is_nan_and_left_out_of_the_mean():
  cm = confusion_matrix(PRED, GT, num_classes=4)
  np.testing.assert_allclose(iou_from_confusion(cm), [*EXPECTED_IOU, np.nan])
  assert mean_iou(cm) == pytest.approx(100 * EXPECTED_IOU.mean())
  pred_only = confusion_matrix(np.array([3, 0]), np.array([0, 0]), num_classes=4)
  np.testing.assert_allclose(iou_from_confusion(pred_only), [0.5, np.nan, np.nan, 0.0])


def test_square_confusion_matrix_accepted_and_bad_gt_rejected():
  np.testing.assert_allclose(iou_from_confusion(np.array([[3, 1], [0, 2]])), [3 / 4, 2 / 3])
  with pytest.raises(ValueError, match='gt values'):
    confusion_matrix(np.array([0]), np.array([5]), num_classes=3)
  with pytest.raises(ValueError, match='shape'):
    confusion_matrix(np.array([0, 1]), np.array([0]), num_classes=3)


def test_accumulator_sums_images():
  acc = ConfusionAccumulator(3)
  acc.add(PRED[0], GT[0])
  acc.add(PRED[1], GT[1])
  np.testing.assert_array_equal(acc.matrix, EXPECTED_CM)
  np.testing.assert_allclose(acc.per_class_iou(), EXPECTED_IOU)
  assert acc.miou() == pytest.approx(100 * EXPECTED_IOU.mean())


def test_cam_labelling_relu_max_normalization_and_ties_to_background():
  """The sweep's labels are exact where its mIoU against them as ground truth is 100."""
  maps = np.array([[[0.0, 2.0, 4.0, 10.0]], [[-5.0, 6.0, 1.0, 0.0]], [[-1.0, -2.0, -3.0, -4.0]]])
  # normalized: [0, .2, .4, 1], [0, 1, 1/6, 0], all-negative map -> zeros
  cases = [
    (maps, np.array([0, 4, 7]), 0.3, [[0, 5, 1, 1]]),
    (maps[:1], np.array([0]), 0.4, [[0, 0, 0, 1]]),  # 0.4 ties go to background
    (np.zeros((0, 1, 2)), np.array([], int), 0.3, [[0, 0]]),  # no classes: background
  ]
  for cams, classes, t, expected in cases:
    _, miou, _, _ = sweep_bg_threshold([(cams, classes, np.array(expected))], [t], num_classes=9)
    assert miou == pytest.approx(100.0), (classes, t)
    _, miou, _, _ = sweep_bg_threshold([(cams, classes, np.array(expected) * 0 + 1)], [t], 9)
    assert miou < 100.0


def test_sweep_picks_the_threshold_that_separates_the_hand_made_case():
  items = iter(  # an iterator: the sweep must need only one pass
    [
      (np.array([[[0.0, 2.0, 4.0, 10.0]]]), np.array([0]), np.array([[0, 0, 1, 1]])),  # [0,.2,.4,1]
      (np.array([[[-1.0, 5.0]]]), np.array([1]), np.array([[0, 2]])),  # [0, 1]
    ]
  )
  best_t, best_miou, curve, acc = sweep_bg_threshold(items, [0.1, 0.3, 0.5], num_classes=3)
  assert best_t == 0.3
  assert best_miou == pytest.approx(100.0)
  assert acc.miou() == pytest.approx(100.0) and acc.matrix.sum() == 6  # the best's pixels
  # t=0.1: IoU 2/3, 2/3, 1 -> 77.78; t=0.5: IoU 3/4, 1/2, 1 -> 75.0
  assert [t for t, _ in curve] == [0.1, 0.3, 0.5]
  np.testing.assert_allclose([m for _, m in curve], [700 / 9, 100.0, 75.0])
