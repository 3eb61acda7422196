"""The segmenter's step: 10 accumulated micro-batches of 1 image equal one batch of 10."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
  changed = jax.tree.map(lambda a, b: np.abs(a - b).max(), whole, variables['params'])
  assert max(jax.tree.leaves(changed)) > 1e-3
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), micro, whole)


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
