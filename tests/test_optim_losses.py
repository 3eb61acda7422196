"""SGD with param-group multipliers against a hand-written PyTorch-style update, the step
decay, and the pixel loss's ignore label."""

import jax.numpy as jnp
import numpy as np

from cows_jax import losses, optim


def test_multipliers_by_group_and_kind():
  params = {
    'backbone': {'conv1_1': {'kernel': 0, 'bias': 0}},
    'extra1': {'kernel': 0, 'bias': 0},
    'co_weight': 0,
  }
  m = optim.lr_multipliers(params, ('backbone',), 1.0, 2.0, 10.0, 20.0)
  assert m == {
    'backbone': {'conv1_1': {'kernel': 1.0, 'bias': 2.0}},
    'extra1': {'kernel': 10.0, 'bias': 20.0},
    'co_weight': 10.0,
  }


def test_sgd_matches_pytorch_semantics():
  """PyTorch SGD(nesterov): g += wd*p; buf = mu*buf + g; p -= lr*(g + mu*buf)."""
  lr, mu, wd, mult = 0.1, 0.9, 0.01, 10.0
  tx = optim.sgd(lambda step: lr, mu, True, wd, {'w': mult})
  p = {'w': jnp.array([1.0, -2.0])}
  state = tx.init(p)
  ref_p, buf = np.array([1.0, -2.0]), np.zeros(2)
  for g in ([0.5, 0.1], [-0.2, 0.3], [0.1, 0.1]):
    updates, state = tx.update({'w': jnp.array(g)}, state, p)
    p = {'w': p['w'] + updates['w']}
    grad = np.array(g) + wd * ref_p
    buf = mu * buf + grad
    ref_p = ref_p - lr * mult * (grad + mu * buf)
    np.testing.assert_allclose(p['w'], ref_p, rtol=1e-5, atol=1e-6)


def test_step_decay_at_epoch_boundaries():
  schedule = optim.step_decay(1e-3, 10, (5, 10), 0.1)
  np.testing.assert_allclose(
    [schedule(s) for s in (0, 49, 50, 99, 100)], [1e-3, 1e-3, 1e-4, 1e-4, 1e-5], rtol=1e-6
  )


def test_pixel_cross_entropy_ignores_255():
  logits = jnp.array([[[[2.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [5.0, -5.0]]]])  # [1,2,2,2]
  labels = jnp.array([[[0, 1], [255, 1]]])
  ce = lambda z, y: np.log(np.exp(z).sum()) - z[y]
  expected = np.mean(
    [ce(np.array([2.0, 0.0]), 0), ce(np.array([0.0, 2.0]), 1), ce(np.array([5.0, -5.0]), 1)]
  )
  np.testing.assert_allclose(losses.pixel_cross_entropy(logits, labels), expected, rtol=1e-6)
  assert losses.pixel_cross_entropy(logits, jnp.full((1, 2, 2), 255)) == 0.0
