"""Pseudo segmentation labels from localization maps (paper: "Pseudo labels from localization maps").

Label values: 0 = background, class id + 1 for an object class, ``rules.ignore_index`` (255) = ignore.
Everything here is per image and pure numpy so it can run in data-loader workers.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LabelRules:
  """Thresholds of the pseudo-label rules. No defaults: the config (`label.*`, with the
  paper's values) is their only source; `label.rules(cfg)` builds them."""

  score_threshold: float  # scores below set to 0
  conflict_threshold: float  # more than one score above -> ignore
  bg_saliency_ignore: int  # bg pixels with max(S, 255*[any A_c > fg_confident]) >= this -> ignore
  fg_confident: float
  min_fg_fraction: float  # images with labelled foreground < this fraction -> all ignore
  fg_threshold: float  # saliency-free mode: an object where its map beats this
  bg_threshold: float  # saliency-free mode: background where every map is below this
  ignore_index: int


def normalize_maps(maps: np.ndarray) -> np.ndarray:
  """Min-max normalize each map to 0..1 so one threshold fits maps of any scale.

  A constant map carries no localization evidence and becomes all zeros (not NaN).
  Float64 input stays float64; anything else is computed in float32.
  """
  maps = np.asarray(maps)
  if maps.ndim != 3:
    raise ValueError(f'maps must be [K,H,W], got shape {maps.shape}')
  maps = maps.astype(np.result_type(maps.dtype, np.float32), copy=False)
  lo = maps.min(axis=(1, 2), keepdims=True, initial=np.inf)
  hi = maps.max(axis=(1, 2), keepdims=True, initial=-np.inf)
  span = hi - lo
  safe_span = np.where(span > 0, span, 1)
  return np.where(span > 0, (maps - lo) / safe_span, 0).astype(maps.dtype, copy=False)


def _validate(
  maps: np.ndarray, classes: np.ndarray, rules: LabelRules
) -> tuple[np.ndarray, np.ndarray]:
  """Check shapes and class ids up front: a silent broadcast would corrupt every label."""
  maps = np.asarray(maps)
  classes = np.asarray(classes)
  if maps.ndim != 3:
    raise ValueError(f'maps must be [K,H,W], got shape {maps.shape}')
  if classes.ndim != 1 or classes.shape[0] != maps.shape[0]:
    raise ValueError(
      f'classes must be a 1-D array with one id per map: got classes shape {classes.shape} '
      f'for {maps.shape[0]} maps'
    )
  if classes.size and not np.issubdtype(classes.dtype, np.integer):
    raise ValueError(f'classes must be integer class ids, got dtype {classes.dtype}')
  if classes.size and (classes.min() < 0 or classes.max() + 1 >= min(rules.ignore_index, 256)):
    raise ValueError(
      f'class ids must be in [0, {min(rules.ignore_index, 256) - 2}] so that id + 1 is a uint8 label '
      f'distinct from ignore {rules.ignore_index}; got {classes.tolist()}'
    )
  return maps, classes.astype(np.int64)


def _label_from_scores(scores: np.ndarray, classes: np.ndarray, rules: LabelRules) -> np.ndarray:
  """Argmax over [bg, classes] plus the conflict and minimum-foreground rules.

  ``scores`` is [K+1,H,W] with the background score first. Where all scores are equal
  (e.g. all zeroed by the score threshold) argmax picks index 0, i.e. background: a pixel
  with no evidence for any class is background (then possibly ignored by a later rule).
  """
  lut = np.concatenate([[0], classes + 1]).astype(np.uint8)
  label = lut[np.argmax(scores, axis=0)]
  label[(scores > rules.conflict_threshold).sum(axis=0) > 1] = rules.ignore_index
  return label


def _drop_if_little_foreground(label: np.ndarray, rules: LabelRules) -> np.ndarray:
  """All-ignore an image whose final labelled foreground is too small to trust.

  Counted on the final label map (after the conflict rule): only pixels that actually carry a
  class label count as labelled foreground.
  """
  foreground = np.count_nonzero((label != 0) & (label != rules.ignore_index))
  if foreground < rules.min_fg_fraction * label.size:
    label[...] = rules.ignore_index
  return label


def pseudo_label_with_saliency(
  maps: np.ndarray, classes: np.ndarray, saliency: np.ndarray, rules: LabelRules
) -> np.ndarray:
  """The paper's rules: background from a saliency map S, objects from the localization maps.

  Args:
    maps: float [K,H,W] raw localization maps of the image's K present classes.
    classes: int [K] 0-based class ids of those maps.
    saliency: uint8 [H,W] saliency 0..255.
  Returns:
    uint8 [H,W] label (0 bg, id + 1, ignore). An image with an empty label set (K = 0) has
    no class to supervise against and a weakly supervised label "only background" is not
    evidence of anything, so it is all ignore.
  """
  maps, classes = _validate(maps, classes, rules)
  saliency = np.asarray(saliency)
  if saliency.shape != maps.shape[1:]:
    raise ValueError(f'saliency shape {saliency.shape} != map shape {maps.shape[1:]}')
  if classes.size == 0:
    return np.full(saliency.shape, rules.ignore_index, np.uint8)
  maps = normalize_maps(maps)
  sal = saliency.astype(np.float64)
  scores = np.concatenate([(1.0 - sal / 255.0)[None].astype(maps.dtype), maps])
  scores[scores < rules.score_threshold] = 0
  label = _label_from_scores(scores, classes, rules)
  # Background is trusted only where neither saliency nor a confident map hints at an object.
  object_hint = np.maximum(sal, 255.0 * (maps > rules.fg_confident).any(axis=0))
  label[(label == 0) & (object_hint >= rules.bg_saliency_ignore)] = rules.ignore_index
  return _drop_if_little_foreground(label, rules)


def pseudo_label_without_saliency(
  maps: np.ndarray, classes: np.ndarray, rules: LabelRules
) -> np.ndarray:
  """Saliency-free mode: confident regions of the maps alone, the rule of IRN (Ahn et al.,
  CVPR 2019, `cam_to_ir_label`: conf_fg_thres 0.30, conf_bg_thres 0.05).

  Without a saliency detector the maps are the only evidence, and one threshold cannot tell
  object from background near the object's edges. So a pixel is an object where its best
  normalized map reaches ``rules.fg_threshold`` (the argmax over the image's classes),
  background where every map stays below ``rules.bg_threshold``, and ignored in between.
  The conflict and minimum-foreground rules apply as in the saliency mode (an image whose
  maps are all zero has no evidence of where its objects are: all ignore). K = 0 -> all
  ignore.
  """
  maps, classes = _validate(maps, classes, rules)
  if classes.size == 0:
    return np.full(maps.shape[1:], rules.ignore_index, np.uint8)
  maps = normalize_maps(maps)
  scores = np.concatenate([np.full((1, *maps.shape[1:]), rules.fg_threshold, maps.dtype), maps])
  label = _label_from_scores(scores, classes, rules)
  label[(label == 0) & (maps.max(axis=0) >= rules.bg_threshold)] = rules.ignore_index
  return _drop_if_little_foreground(label, rules)
