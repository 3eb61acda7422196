"""Pair sampling: every partner shares a class with its anchor; the anchor itself is a
possible partner (the reference's random.choice) unless excluded."""

import numpy as np
import pytest

from cows_jax.data.pairs import ClassIndex


def test_partner_shares_a_class():
  rng = np.random.default_rng(0)
  labels = (rng.random((200, 10)) < 0.2).astype(np.uint8)
  labels[labels.sum(1) == 0, 0] = 1
  index = ClassIndex(labels)
  for anchor in range(200):
    for _ in range(5):
      partner = index.sample_partner(anchor, rng, may_be_anchor=False)
      assert partner != anchor or labels[:, np.flatnonzero(labels[anchor])].sum(0).min() == 1
      assert (labels[anchor] & labels[partner]).any()


def test_every_class_of_the_anchor_gets_picked():
  labels = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.uint8)
  index = ClassIndex(labels)
  rng = np.random.default_rng(0)
  partners = {index.sample_partner(0, rng, may_be_anchor=False) for _ in range(100)}
  assert partners == {1, 2}
  # The reference: uniform over the chosen class's images, the anchor among them.
  draws = [index.sample_partner(0, rng, may_be_anchor=True) for _ in range(4000)]
  assert set(draws) == {0, 1, 2}
  # class 0 or 1 with probability 1/2 each, then 1/2 the anchor: P(anchor) = 1/2.
  assert abs(np.mean(np.asarray(draws) == 0) - 0.5) < 0.03


def test_empty_label_set_is_an_error():
  with pytest.raises(ValueError, match='empty label set'):
    ClassIndex(np.array([[1, 0], [0, 0]], np.uint8))
