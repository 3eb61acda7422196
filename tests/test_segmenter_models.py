"""DeepLab segmenters: ResNet-101 layout and size, frozen batch norm really frozen by a train
step, ASPP and LargeFOV heads, mixed precision."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from cows_jax import segment, training
from cows_jax.configs.defaults import paper_defaults
from cows_jax.models import from_config
from cows_jax.models.deeplab import ASPPHead, DeepLab
from cows_jax.models.resnet import FROZEN_BN, ResNet

TINY = dict(
  num_classes=3,
  backbone='resnet101',
  width=1 / 16,
  resnet_stages=(1, 1, 1, 1),
  head_channels=64,
  head_dilation=2,
)


def _random_variables(module, x, seed=0):
  """Variables of `module` drawn with numpy: no compiled init (slow on a busy CPU)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.1, s.shape), s.dtype), shapes)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_resnet101_largefov_size_and_torchvision_layout():
  cfg = paper_defaults()
  cfg.data.num_classes, cfg.segment.backbone = 20, 'resnet101'
  v = from_config.abstract_variables(from_config.segmenter(cfg), cfg)
  params = traverse_util.flatten_dict(v['params'], sep='/')
  # torchvision's 42.5 M (no fc) + LargeFOV head 19.9 M; frozen BN affine counted with it.
  total = _count(v['params']) + _count(v[FROZEN_BN]) // 2
  assert 61.5e6 < total < 63e6, total
  assert params['backbone/conv1/kernel'].shape == (7, 7, 3, 64)
  assert params['backbone/layer1/0/downsample/0/kernel'].shape == (1, 1, 64, 256)
  assert params['backbone/layer3/22/conv2/kernel'].shape == (3, 3, 256, 256)
  assert params['head/fc8/kernel'].shape == (1, 1, 1024, 21)
  bn = traverse_util.flatten_dict(v[FROZEN_BN], sep='/')
  assert set(k for k in bn if k.startswith('backbone/layer4/2/bn3/')) == {
    f'backbone/layer4/2/bn3/{n}' for n in ('scale', 'bias', 'mean', 'var')
  }


@pytest.mark.parametrize('stride_in_1x1', [True, False])
def test_output_stride_8_and_where_the_stride_sits(stride_in_1x1):
  model = ResNet((1, 1, 1, 1), width=1 / 16, stride_in_1x1=stride_in_1x1)
  x = jnp.zeros((1, 64, 64, 3))
  v = jax.eval_shape(model.init, jax.random.key(0), x)
  out, inter = jax.eval_shape(lambda v: model.apply(v, x, capture_intermediates=True), v)
  assert out.shape == (1, 8, 8, 128)
  conv1 = inter['intermediates']['layer2']['0']['conv1']['__call__'][0]
  assert conv1.shape[1] == (8 if stride_in_1x1 else 16)


def test_frozen_batch_norm_unchanged_by_a_train_step():
  model = DeepLab(**TINY)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  v = _random_variables(model, x)
  frozen = jax.tree.map(lambda a: 1.0 + a, v[FROZEN_BN])  # var > 0, scale near 1.
  v = {'params': v['params'], FROZEN_BN: frozen}
  tx = optax.sgd(0.1)
  batch = {'image': x, 'label': jax.random.randint(jax.random.key(3), (2, 32, 32), 0, 3)}
  loss_fn = functools.partial(segment.loss_fn, model=model, ignore_index=255, align_corners=True)
  state, m = jax.jit(functools.partial(training.train_step, loss_fn=loss_fn, tx=tx))(
    training.TrainState.create(v, tx.init(v['params'])), batch
  )
  new = state.variables
  assert np.isfinite(m['loss'])
  assert not np.allclose(
    new['params']['head']['fc8']['kernel'], v['params']['head']['fc8']['kernel']
  )
  jax.tree.map(np.testing.assert_array_equal, new[FROZEN_BN], frozen)


def test_aspp_sums_branch_logits_and_heads_by_name():
  feats = jax.random.normal(jax.random.key(0), (1, 8, 8, 16))
  head = ASPPHead(3, (1, 2))
  p = _random_variables(head, feats)['params']
  conv = lambda name, r: (
    jax.lax.conv_general_dilated(
      feats,
      p[name]['kernel'],
      (1, 1),
      [(r, r)] * 2,
      rhs_dilation=(r, r),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )
    + p[name]['bias']
  )
  np.testing.assert_allclose(
    jax.jit(head.apply)({'params': p}, feats), conv('c0', 1) + conv('c1', 2), atol=1e-5
  )
  x = jnp.zeros((1, 32, 32, 3))
  v = jax.eval_shape(DeepLab(**{**TINY, 'head': 'aspp'}).init, jax.random.key(0), x)
  assert set(v['params']['head']) == {'c0', 'c1', 'c2', 'c3'}
  for field, value in (('head', 'psp'), ('backbone', 'resnet50')):
    with pytest.raises(ValueError, match=f'segment.{field}'):
      jax.eval_shape(DeepLab(**{**TINY, field: value}).init, jax.random.key(0), x)


def test_bfloat16_compute_keeps_float32_params():
  model = DeepLab(**TINY, dtype=jnp.bfloat16)
  x = jnp.ones((1, 32, 32, 3))
  v = jax.eval_shape(model.init, jax.random.key(0), x)
  assert {a.dtype for a in jax.tree.leaves(v)} == {jnp.dtype(jnp.float32)}
  out, inter = jax.eval_shape(lambda v: model.apply(v, x, capture_intermediates=True), v)
  assert inter['intermediates']['backbone']['layer4']['__call__'][0].dtype == jnp.bfloat16
  assert out.dtype == jnp.float32
