"""Self-pairs in the training step: reusing the anchor's features (and batching the flip view
with the pair) gives the gradients of the reference's naive procedure, one full pair forward
per pairing (the anchor through the backbone four times)."""

import jax
import jax.numpy as jnp
import numpy as np
from tolerances import float32_sums

from cows_jax import classify, losses
from cows_jax.bench import train_step
from cows_jax.models.coattention import CoAttentionNet

VIEWS = ('flip', 0.75, 2.0)
# The two procedures batch the same convolutions differently: float32 sums in other orders.
# The longest are the kernel gradients' sums over the pixels of every image of the step: 2
# anchors, partners and flips at 32 px, the 24 and 64 px views, the naive procedure's anchor
# four times: about 2e4 terms. Each value (the loss, each gradient leaf) agrees to
# float32_sums(2e4, its largest magnitude): 1.4e-4 of it, while a self-pair term left out,
# doubled or paired with the wrong view moves the gradients by several percent.
REDUCTION = 20_000


def test_shared_anchor_features_give_the_naive_gradients():
  model = CoAttentionNet(num_classes=6, width=0.125)
  rng = np.random.default_rng(0)
  batch = {
    'image_m': jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32),
    'image_n': jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32),
    'image_m_plain': jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32),
    'labels_m': jnp.asarray([[1, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0]], jnp.float32),
    'labels_n': jnp.asarray([[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 1]], jnp.float32),
  }
  params = model.init(jax.random.key(0), batch['image_m'], batch['image_n'])['params']
  weights = {
    k: 1.0 for k in ('single', 'coattention', 'contrastive', 'self_single', 'self_coattention')
  }

  def fast(p):
    return classify.loss_fn(
      p, {}, batch, jnp.asarray(True), model=model, weights=weights, self_views=VIEWS
    )[0]

  loss_fast, g_fast = jax.jit(jax.value_and_grad(fast))(params)
  loss_naive, g_naive = jax.jit(
    jax.value_and_grad(
      lambda p: train_step.reference_procedure_loss(
        p, model, batch, jnp.asarray(True), weights, VIEWS
      )
    )
  )(params)
  np.testing.assert_allclose(
    loss_fast, loss_naive, atol=float32_sums(REDUCTION, abs(float(loss_naive))), rtol=0
  )
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_naive)):
    np.testing.assert_allclose(a, b, atol=float32_sums(REDUCTION, np.abs(b).max()), rtol=0)
  # The self-pair terms are really in the loss.
  no_views = classify.loss_fn(
    params, {}, batch, jnp.asarray(True), model=model, weights=weights, self_views=()
  )[0]
  assert loss_fast > no_views


def test_self_pair_targets_are_the_anchor_labels():
  from cows_jax.models.coattention import PairScores

  logits = jnp.zeros((1, 3))
  scores = {'flip': PairScores(*[logits] * 6)}
  terms = losses.self_pair_losses(scores, jnp.asarray([[1.0, 0.0, 1.0]]))
  # One loss over both sides of the pair (the reference's mean over the 2B scores).
  np.testing.assert_allclose(terms['self_single'], np.log(2), rtol=1e-6)
  np.testing.assert_allclose(terms['self_coattention'], np.log(2), rtol=1e-6)
  assert losses.self_pair_losses({}, jnp.ones((1, 3)))['self_single'] == 0
