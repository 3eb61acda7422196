"""Co-attention: shapes, softmax axes, and the three losses' label targets."""

import jax
import jax.numpy as jnp
import numpy as np
from tolerances import FLOAT64

from cows_jax import losses
from cows_jax.models.coattention import CoAttentionNet, co_attend


def test_co_attend_matches_explicit_softmax_per_row():
  # In float64 (co_attend keeps float64 inputs in float64), against numpy in float64: both
  # sides differ by float64 rounding only, so tolerances.FLOAT64 of the magnitude.
  rng = np.random.default_rng(0)
  f_m = rng.normal(size=(2, 6, 4))
  f_n = rng.normal(size=(2, 9, 4))
  w = rng.normal(size=(4, 4))
  with jax.enable_x64(True):
    co_m, co_n = (np.asarray(x) for x in co_attend(f_m, f_n, w))
  assert co_m.dtype == co_n.dtype == np.float64
  assert co_m.shape == (2, 6, 4) and co_n.shape == (2, 9, 4)
  for b in range(2):
    p = f_m[b] @ w @ f_n[b].T  # [6, 9]
    # Each m position: a convex combination of n's features, weights sum to 1 over n.
    a_m = np.exp(p - p.max(1, keepdims=True))
    a_m /= a_m.sum(1, keepdims=True)
    want = a_m @ f_n[b]
    np.testing.assert_allclose(co_m[b], want, rtol=0, atol=FLOAT64 * np.abs(want).max())
    # Each n position: weights over m's positions (softmax over the m axis of P).
    a_n = np.exp(p - p.max(0, keepdims=True))
    a_n /= a_n.sum(0, keepdims=True)
    want = a_n.T @ f_m[b]
    np.testing.assert_allclose(co_n[b], want, rtol=0, atol=FLOAT64 * np.abs(want).max())


def test_co_attention_is_not_symmetric_in_softmax_axis():
  """Swapping the softmax axis changes the result: the test above can fail."""
  rng = np.random.default_rng(1)
  f_m, f_n = rng.normal(size=(1, 5, 3)), rng.normal(size=(1, 5, 3))
  w = rng.normal(size=(3, 3))
  co_m, _ = co_attend(f_m, f_n, w)
  p = f_m[0] @ w @ f_n[0].T
  wrong = np.exp(p) / np.exp(p).sum(0, keepdims=True)
  assert not np.allclose(co_m[0], wrong @ f_n[0], atol=1e-3)


def test_model_shapes_and_maps():
  model = CoAttentionNet(num_classes=5, width=0.125, feature_dim=512)
  x_m, x_n = jnp.ones((2, 32, 32, 3)), jnp.zeros((2, 32, 32, 3))
  params = model.init(jax.random.key(0), x_m, x_n)['params']
  scores = model.apply({'params': params}, x_m, x_n)
  assert all(s.shape == (2, 5) for s in scores)
  feats = model.apply({'params': params}, x_m, method=model.features)
  assert feats.shape == (2, 4, 4, 64)  # stride 8, 512 * 0.125 channels.
  small = model.apply({'params': params}, jnp.ones((2, 24, 24, 3)), method=model.features)
  maps_m, maps_n = model.apply({'params': params}, feats, small, method=model.pair_maps)
  assert maps_m.shape == (2, 4, 4, 5) and maps_n.shape == (2, 3, 3, 5)
  # The co-attention score is the pooled co-attention class map.
  head = model.apply({'params': params}, feats, small, method=model.pair_head)
  np.testing.assert_allclose(head.co_m, jnp.mean(maps_m, (1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(head.co_n, jnp.mean(maps_n, (1, 2)), rtol=1e-5, atol=1e-6)
  assert set(params) >= {'backbone', 'extra1', 'classifier', 'co_classifier', 'gate', 'co_weight'}


def test_pair_targets():
  l_m = jnp.array([[1, 1, 0, 0], [1, 0, 0, 0]], jnp.float32)
  l_n = jnp.array([[0, 1, 1, 0], [1, 0, 0, 0]], jnp.float32)
  common, diff_m, diff_n = losses.pair_targets(l_m, l_n)
  np.testing.assert_array_equal(common, [[0, 1, 0, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(diff_m, [[1, 0, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(diff_n, [[0, 0, 1, 0], [0, 0, 0, 0]])


def test_multilabel_soft_margin_matches_formula():
  x = jnp.array([[2.0, -1.0, 0.5]])
  y = jnp.array([[1.0, 0.0, 1.0]])
  sig = 1 / (1 + np.exp(-np.array([2.0, -1.0, 0.5])))
  expected = -np.mean([np.log(sig[0]), np.log(1 - sig[1]), np.log(sig[2])])
  np.testing.assert_allclose(losses.multilabel_soft_margin(x, y), expected, rtol=1e-6)


def _scores(value):
  from cows_jax.models.coattention import PairScores

  return PairScores(*[jnp.full((2, 4), value) for _ in range(6)])


def test_contrastive_loss_gated_by_epoch_and_difference():
  same = jnp.array([[1, 0, 0, 0], [0, 1, 0, 0]], jnp.float32)
  other = jnp.array([[1, 1, 0, 0], [0, 1, 0, 0]], jnp.float32)
  on = losses.coattention_losses(_scores(0.3), same, other, jnp.asarray(True))
  off = losses.coattention_losses(_scores(0.3), same, other, jnp.asarray(False))
  no_diff = losses.coattention_losses(_scores(0.3), same, same, jnp.asarray(True))
  # m's labels are a subset of n's: only n's side has a difference, so only it counts.
  _, _, diff_n = losses.pair_targets(same, other)
  np.testing.assert_allclose(
    on['contrastive'], losses.multilabel_soft_margin(jnp.full((2, 4), 0.3), diff_n), rtol=1e-6
  )
  assert off['contrastive'] == 0 and no_diff['contrastive'] == 0
  # Co-attention targets are the common classes: identical scores, different targets.
  assert not np.isclose(
    on['coattention'],
    losses.coattention_losses(_scores(0.3), other, other, jnp.asarray(True))['coattention'],
  )
