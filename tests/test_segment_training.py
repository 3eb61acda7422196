"""The segmenter's step: 10 accumulated micro-batches of 1 image equal one batch of 10."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tolerances import float32_sums

from cows_jax import losses, segment, training
from cows_jax.configs.defaults import paper_defaults


class TinySegmenter(nn.Module):
  """Two convs, logits at stride 2: the step's code path at a fraction of DeepLab's compile."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(8, (3, 3), strides=2, name='backbone')(x))
    return nn.Conv(3, (3, 3), name='head')(x)


def test_accumulating_10_micro_batches_equals_one_batch_of_10():
  cfg = paper_defaults()
  cfg.segment.base_lr = 0.1  # big enough that a wrong mean would show.
  model = TinySegmenter()
  rng = np.random.default_rng(0)
  images = rng.normal(size=(10, 24, 24, 3)).astype(np.float32)
  labels = rng.integers(0, 3, (10, 24, 24)).astype(np.int32)
  for i in range(10):  # unequal numbers of ignored pixels per image.
    labels[i, : 2 * i] = 255
  shapes = jax.eval_shape(model.init, jax.random.key(0), images[:1])
  variables = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(s.dtype), shapes)

  def run(k, batches):
    cfg.segment.accumulation_steps = k
    tx = segment.make_optimizer(cfg, variables['params'])
    loss_fn = functools.partial(segment.loss_fn, model=model, ignore_index=255, align_corners=True)
    step = jax.jit(functools.partial(training.train_step, loss_fn=loss_fn, tx=tx))
    state = training.TrainState.create(variables, tx.init(variables['params']))
    for b in batches:
      state, _ = step(state, b)
    return state.params

  micro = run(10, [{'image': images[i : i + 1], 'label': labels[i : i + 1]} for i in range(10)])
  whole = run(1, [{'image': images, 'label': labels}])
  changed = max(
    jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), whole, variables['params']))
  )
  assert changed > 1e-3
  # Both runs start from the same parameters and make one update: they differ only by the
  # float32 rounding of the mean gradient, summed in other orders over 10 images x 12 x 12
  # logits x 9 taps (~1e4 terms), so by float32_sums of the update. A wrong mean (a sum, or
  # the images weighted by their pixel counts) moves the update by 10% or more.
  bound = float32_sums(10 * 12 * 12 * 9, changed)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=bound), micro, whole)


def test_logits_upsampling_aligns_the_corners_as_caffe_interp():
  """Caffe's Interp: output i samples input i * (in - 1) / (out - 1); 41 -> 321 puts every
  8th output pixel exactly on an input pixel, the rest on the line between two."""
  rng = np.random.default_rng(0)
  small = rng.normal(size=(1, 41, 6, 2)).astype(np.float32)
  up = np.asarray(losses.upsample_logits(jnp.asarray(small), (321, 41), True))
  np.testing.assert_allclose(up[0, ::8, ::8], small[0], rtol=1e-6)
  np.testing.assert_allclose(up[0, 4, 0], (small[0, 0, 0] + small[0, 1, 0]) / 2, rtol=1e-5)
  np.testing.assert_allclose(up[0, 3, 8], (5 * small[0, 0, 1] + 3 * small[0, 1, 1]) / 8, rtol=1e-5)
  half = np.asarray(losses.upsample_logits(jnp.asarray(small), (321, 41), False))
  assert np.abs(half[0, ::8, ::8] - small[0]).max() > 1e-2  # half-pixel centres differ.
