"""Dense CRF: a noisy unary's label boundary moves to the colour edge; a clear error when the
extra is missing."""

import sys

import numpy as np
import pytest

from cows_jax import crf
from cows_jax.configs.defaults import paper_defaults


def test_boundary_moves_to_the_colour_edge():
  pytest.importorskip(
    'pydensecrf.densecrf', reason='the cows_jax[crf] extra (pydensecrf2) is not installed'
  )
  h, w, edge, wrong = 32, 48, 24, 18
  image = np.zeros((h, w, 3), np.uint8)
  image[:, :edge] = (200, 40, 40)
  image[:, edge:] = (40, 40, 200)
  image.flags.writeable = False  # dataset records are read-only.
  # Confident away from the edge, wrong (p = 0.6 for class 1) in a 6 px band left of it.
  x = np.arange(w)
  p1 = np.select([x < wrong, x < edge], [0.2, 0.6], 0.8)[None].repeat(h, 0)
  p1 = np.clip(p1 + np.random.default_rng(0).normal(0, 0.05, (h, w)), 0.01, 0.99)
  probs = np.stack([1 - p1, p1], -1).astype(np.float32)
  assert np.mean(probs.argmax(-1)[:, wrong:edge] == 1) > 0.8  # the unary is wrong there.
  out = crf.refine(image, probs, paper_defaults().crf)
  expected = (x >= edge)[None].repeat(h, 0)
  assert out.shape == probs.shape
  np.testing.assert_allclose(out.sum(-1), 1, atol=1e-4)
  assert np.mean(out.argmax(-1) == expected) > 0.99


def test_missing_extra_names_the_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'pydensecrf', None)
  monkeypatch.setitem(sys.modules, 'pydensecrf.densecrf', None)
  with pytest.raises(ValueError, match=r'cows_jax\[crf\]'):
    crf.check_available()
