"""Pair sampling (paper.md): the partner of anchor m shares a random class of m."""

import numpy as np


class ClassIndex:
  """For each class, the indices of the images that contain it.

  `partners` (bool [N], optional): the images that may be drawn as partners; a class none of
  whose images may falls back to all of them.
  """

  def __init__(self, labels: np.ndarray, partners: np.ndarray | None = None):
    labels = np.asarray(labels)
    if labels.ndim != 2:
      raise ValueError(f'labels must be [N, C] multi-hot, got shape {labels.shape}')
    empty = np.flatnonzero(labels.sum(1) == 0)
    if empty.size:
      raise ValueError(f'{empty.size} images have an empty label set (first index {empty[0]})')
    self.labels = labels
    self.by_class = [np.flatnonzero(labels[:, c]) for c in range(labels.shape[1])]
    self._partners = self.by_class
    if partners is not None:
      allowed = [
        np.flatnonzero(labels[:, c] & np.asarray(partners, bool)) for c in range(labels.shape[1])
      ]
      self._partners = [a if a.size else b for a, b in zip(allowed, self.by_class)]

  def classes_of(self, index: int) -> np.ndarray:
    return np.flatnonzero(self.labels[index])

  def sample_with_class(self, c: int, rng: np.random.Generator, exclude: int = -1) -> int:
    """A random image containing class c, other than `exclude` when another exists."""
    return _pick(self.by_class[c], rng, exclude)

  def sample_partner(self, anchor: int, rng: np.random.Generator, may_be_anchor: bool) -> int:
    """Pick a random class of the anchor, then a random image that has it (among the allowed
    partners): any of them when `may_be_anchor` (the reference's random.choice over the
    class's list), else another one when there is one."""
    c = int(rng.choice(self.classes_of(anchor)))
    return _pick(self._partners[c], rng, -1 if may_be_anchor else anchor)


def _pick(members: np.ndarray, rng: np.random.Generator, exclude: int) -> int:
  if members.size > 1 and exclude >= 0:
    members = members[members != exclude]
  return int(rng.choice(members))
