"""Each paper rule of the pseudo-label generator on a tiny hand-made image.

Maps are written so that min-max normalization is the identity (each contains 0 and 1) unless a
test is about normalization. Rules not under test are switched off by replacing fields of the paper's rules.
"""

import dataclasses

import numpy as np
import pytest

from cows_jax import label
from cows_jax.configs.defaults import paper_defaults
from cows_jax.pseudo_labels import (
  normalize_maps,
  pseudo_label_with_saliency,
  pseudo_label_without_saliency,
)

PAPER = label.rules(paper_defaults())  # the paper's thresholds, from the config.
NO_BG_IGNORE = dataclasses.replace(PAPER, bg_saliency_ignore=256)


def test_normalize_maps_min_max_per_map_and_constant_to_zero():
  maps = np.array([[[2.0, 4.0, 6.0]], [[-1.0, 1.0, 0.0]], [[3.0, 3.0, 3.0]]])
  np.testing.assert_allclose(
    normalize_maps(maps), [[[0.0, 0.5, 1.0]], [[0.0, 1.0, 0.5]], [[0.0, 0.0, 0.0]]]
  )


def test_scores_below_threshold_are_zeroed_and_tie_goes_to_background():
  maps = np.array([[[0.0, 1.0, 0.25, 0.5]]])
  saliency = np.array([[0, 255, 204, 204]], np.uint8)  # bg score 1, 0, 0.2, 0.2
  # Pixel 2: class 0.25 beats bg 0.2 before thresholding, but both fall under 0.3 -> 0 -> bg.
  label = pseudo_label_with_saliency(maps, np.array([4]), saliency, NO_BG_IGNORE)
  np.testing.assert_array_equal(label, [[0, 5, 0, 5]])
  assert label.dtype == np.uint8


def test_argmax_over_background_and_classes_on_raw_maps():
  a1 = [0.0, 1.0, 0.6, 0.4]
  a2 = [0.5, 0.0, 0.7, 1.0]
  maps = np.array([[a1], [(10.0 * np.array(a2) + 3.0).tolist()]])  # map 2 raw, normalized inside
  saliency = np.array([[51, 255, 255, 255]], np.uint8)  # bg score 0.8, 0, 0, 0
  label = pseudo_label_with_saliency(maps, np.array([2, 6]), saliency, NO_BG_IGNORE)
  np.testing.assert_array_equal(label, [[0, 3, 7, 7]])


def test_more_than_one_score_above_099_is_ignored():
  maps = np.array([[[1.0, 1.0, 0.0, 0.5]], [[0.0, 1.0, 1.0, 0.2]]])
  saliency = np.array([[0, 255, 255, 255]], np.uint8)  # bg score 1, 0, 0, 0
  label = pseudo_label_with_saliency(maps, np.array([0, 1]), saliency, NO_BG_IGNORE)
  np.testing.assert_array_equal(label, [[255, 255, 2, 1]])


def test_background_with_saliency_at_least_32_is_ignored():
  maps = np.array([[[0.0, 0.1, 1.0, 0.2]]])
  saliency = np.array([[31, 32, 255, 0]], np.uint8)
  label = pseudo_label_with_saliency(maps, np.array([0]), saliency, PAPER)
  np.testing.assert_array_equal(label, [[0, 255, 1, 0]])


def test_background_where_a_map_exceeds_095_is_ignored():
  maps = np.array([[[0.0, 0.97, 1.0, 0.5]]])
  saliency = np.array([[0, 0, 255, 0]], np.uint8)  # bg score 1 beats 0.97: labelled bg
  label = pseudo_label_with_saliency(maps, np.array([0]), saliency, PAPER)
  np.testing.assert_array_equal(label, [[0, 255, 1, 0]])


def test_foreground_below_one_percent_ignores_whole_image():
  saliency = np.zeros((10, 20), np.uint8)  # 200 pixels: 1% = 2 pixels
  maps = np.zeros((1, 10, 20))
  maps[0, 0, 0] = 1.0
  saliency[0, 0] = 255
  label = pseudo_label_with_saliency(maps, np.array([0]), saliency, PAPER)
  np.testing.assert_array_equal(label, np.full((10, 20), 255))

  maps[0, 0, 1] = 1.0
  saliency[0, 1] = 255
  label = pseudo_label_with_saliency(maps, np.array([0]), saliency, PAPER)
  expected = np.zeros((10, 20), np.uint8)
  expected[0, :2] = 1
  np.testing.assert_array_equal(label, expected)


def test_saliency_free_mode_labels_confident_regions_and_ignores_the_band_between():
  maps = np.array([[[0.0, 1.0, 0.5, 0.25, 0.3, 0.04]], [[0.2, 0.0, 0.6, 1.0, 0.1, 0.0]]])
  classes = np.array([0, 3])
  # fg 0.3, bg 0.05 (IRN's): pixel 0 has a map at 0.2 -> in the band -> ignore; pixel 4
  # reaches 0.3 only ties the fg score -> not an object, in the band -> ignore; pixel 5 is
  # below 0.05 everywhere -> background.
  np.testing.assert_array_equal(
    pseudo_label_without_saliency(maps, classes, PAPER), [[255, 1, 4, 4, 255, 0]]
  )
  strict = dataclasses.replace(PAPER, fg_threshold=0.7, bg_threshold=0.3)
  np.testing.assert_array_equal(
    pseudo_label_without_saliency(maps, classes, strict), [[0, 1, 255, 4, 255, 0]]
  )


def test_saliency_free_mode_applies_conflict_and_min_foreground_rules():
  conflict = np.array([[[1.0, 1.0, 0.0]], [[0.0, 1.0, 1.0]]])
  np.testing.assert_array_equal(
    pseudo_label_without_saliency(conflict, np.array([0, 1]), PAPER), [[1, 255, 2]]
  )
  constant = np.full((1, 2, 3), 7.0)  # constant map -> zeros -> all bg -> no foreground
  np.testing.assert_array_equal(
    pseudo_label_without_saliency(constant, np.array([0]), PAPER), np.full((2, 3), 255)
  )


def test_empty_label_set_is_all_ignore():
  empty = np.zeros((0, 2, 3))
  np.testing.assert_array_equal(
    pseudo_label_with_saliency(empty, np.array([], int), np.zeros((2, 3), np.uint8), PAPER),
    np.full((2, 3), 255),
  )
  np.testing.assert_array_equal(
    pseudo_label_without_saliency(empty, np.array([], int), PAPER), np.full((2, 3), 255)
  )


def test_shape_and_class_validation():
  maps = np.zeros((2, 3, 4))
  with pytest.raises(ValueError, match='classes'):
    pseudo_label_without_saliency(maps, np.array([0]), PAPER)
  with pytest.raises(ValueError, match='saliency shape'):
    pseudo_label_with_saliency(maps, np.array([0, 1]), np.zeros((4, 3), np.uint8), PAPER)
  with pytest.raises(ValueError, match='class ids'):
    pseudo_label_without_saliency(maps, np.array([0, 254]), PAPER)
  with pytest.raises(ValueError, match=r'\[K,H,W\]'):
    pseudo_label_without_saliency(np.zeros((3, 4)), np.array([0]), PAPER)


def test_saliency_free_thresholds_come_from_the_cam_sweep(tiny_run):
  from cows_jax import config, map_metrics, run_dir
  from cows_jax.data import sources

  cfg, workdir = tiny_run
  cfg = config.with_overrides(cfg, (('label.use_saliency', False),))
  run = run_dir.RunDir(workdir)
  train = sources.load(cfg)['train']
  ids = run_dir.read_json(run.maps_index(), 'localize')['ids']
  best = map_metrics.evaluate_cams(cfg, train, ids, run)[0]
  got = label.saliency_free_rules(cfg, train, ids, run)
  assert (got.fg_threshold, got.bg_threshold) == (best, max(best - 0.3, 0.0))
  fixed = config.with_overrides(cfg, (('label.thresholds', 'fixed'),))
  got = label.saliency_free_rules(fixed, train, ids, run)
  assert (got.fg_threshold, got.bg_threshold) == (0.3, 0.05)
