"""models.conv: the CPU input and kernel gradients equal XLA's for every convolution shape the
models use (at tiny spatial sizes), whatever the plan; the table's shapes take their plan;
GPU and TPU keep XLA's own gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export as jax_export
from tolerances import FLOAT64

from cows_jax.bench import conv as bench_conv
from cows_jax.configs.defaults import paper_defaults
from cows_jax.models import conv

# (kernel, stride, dilation, padding) of every convolution in the models: VGG16 (3x3, conv5
# dilated 2), LargeFOV fc6 (dilation 12), ASPP (6, 12, 18, 24), ResNet (7x7 stride-2 stem, 1x1,
# 1x1 stride 2, 3x3 stride 2 in the torchvision layout, 3x3 dilated 2 and 4).
CONFIGS = [
  (3, 1, 1, 1),
  (3, 1, 2, 2),
  (3, 1, 4, 4),
  (3, 1, 6, 6),
  (3, 1, 12, 12),
  (3, 1, 24, 24),
  (1, 1, 1, 0),
  (1, 2, 1, 0),
  (3, 2, 1, 1),
  (7, 2, 1, 3),
]


def _xla_grads(x, w, g, strides, padding, dilation):
  _, vjp = jax.vjp(lambda x, w: conv._lax_conv(x, w, strides, padding, dilation), x, w)
  return vjp(g)


def _arrays(x_shape, w_shape, strides, padding, dilation, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=x_shape), dtype)
  w = jnp.asarray(rng.normal(size=w_shape), dtype)
  y = conv._lax_conv(x, w, strides, padding, dilation)
  return x, w, jnp.asarray(rng.normal(size=y.shape), dtype)


def _close(a, b, rtol=1e-5):
  """Agreement to rtol of b's largest magnitude. Float32 gradients here sum up to ~300
  terms (2 x 13 x 11 pixels for a kernel gradient, 7 x 7 x 6 taps for an input gradient) in
  other orders: about eps32 * sqrt(300) = 2e-6, so 1e-5 (bfloat16 inputs: 2e-2, eps16 4e-3)."""
  scale = float(jnp.max(jnp.abs(b)))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize('size,stride,dilation,pad', CONFIGS)
@pytest.mark.parametrize('hw', [(13, 11), (8, 9)])
def test_kernel_and_input_grads_equal_xla(size, stride, dilation, pad, hw):
  s, p, d = (stride, stride), ((pad, pad), (pad, pad)), (dilation, dilation)
  x, w, g = _arrays((2, *hw, 5), (size, size, 5, 6), s, p, d)
  dx_xla, dw_xla = _xla_grads(x, w, g, s, p, d)
  for layout in ('cf', 'cl'):
    for rows in (0, 1, 2, 5):
      _close(conv.kernel_grad(x, g, (size, size), s, p, d, rows, layout), dw_xla)
  assert conv.input_grad_supported(s, d)
  _close(conv.input_grad(g, w, x.shape, s, p, d), dx_xla)


def test_kernel_grad_keeps_float64():
  """Float64 inputs accumulate in float64 (the float64 runs of tests/test_parallel.py): XLA's
  kernel gradient to FLOAT64 of its magnitude, which a float32 accumulation misses by 1e3."""
  s, p, d = (2, 2), ((1, 1), (1, 1)), (1, 1)
  with jax.enable_x64(True):
    x, w, g = _arrays((2, 13, 11, 5), (3, 3, 5, 6), s, p, d, dtype=jnp.float64)
    _, dw_xla = _xla_grads(x, w, g, s, p, d)
    for layout, rows in (('cf', 0), ('cl', 2)):
      dw = conv.kernel_grad(x, g, (3, 3), s, p, d, rows, layout)
      assert dw.dtype == jnp.float64
      np.testing.assert_allclose(dw, dw_xla, rtol=0, atol=FLOAT64 * np.abs(dw_xla).max())


def test_kernel_grad_against_numbers_by_hand():
  # 1 input channel, 2x2 kernel, no padding: dW[i, j] = sum_hw x[h + i, w + j] * g[h, w].
  x = jnp.arange(9, dtype=jnp.float32).reshape(1, 3, 3, 1)
  g = jnp.asarray([[1.0, 0.0], [0.0, 2.0]]).reshape(1, 2, 2, 1)
  want = [[0 + 2 * 4, 1 + 2 * 5], [3 + 2 * 7, 4 + 2 * 8]]
  for layout, rows in (('cf', 0), ('cl', 1)):
    dw = conv.kernel_grad(x, g, (2, 2), (1, 1), ((0, 0), (0, 0)), (1, 1), rows, layout)
    np.testing.assert_array_equal(dw[:, :, 0, 0], want)


def _model_keys() -> list[tuple]:
  """The shape of every convolution of the classifier (a training step with the three self
  views) and of the segmenters (VGG16 and ResNet-101 in both layouts, LargeFOV and ASPP), at a
  tiny width and size."""
  cfg = paper_defaults()
  cfg.model.width, cfg.input.size, cfg.data.num_classes = 1 / 16, 32, 3
  keys = bench_conv.classifier_shapes(cfg, 1, ('flip', 0.75, 2.0))
  cfg.segment.crop_size, cfg.segment.head_channels = 33, 64
  for backbone, head, stride_in_1x1 in (
    ('resnet101', 'largefov', True),
    ('resnet101', 'aspp', False),
    ('vgg16', 'largefov', True),
  ):
    cfg.segment.backbone, cfg.segment.head = backbone, head
    cfg.segment.resnet_stride_in_1x1 = stride_in_1x1
    keys += bench_conv.segmenter_shapes(cfg, 2)
  return list(dict.fromkeys(keys))


def _loss_grads(x, w, strides, padding, dilation, plan):
  def loss(x, w):
    if plan is None:
      y = conv._lax_conv(x, w, strides, padding, dilation)
    else:
      y = conv._conv(x, w, strides, padding, dilation, plan)
    return jnp.sum(jnp.sin(y.astype(jnp.float32)))

  return jax.grad(loss, argnums=(0, 1))(x, w)


def test_every_model_convolution_under_every_plan():
  keys = _model_keys()
  assert len(keys) > 40 and len({k[5:] for k in keys}) >= 10  # 3x3, 1x1, 7x7; strides, dilations
  # Fewer channels where there are many (the gradient's arithmetic does not change), each
  # reduced shape once: XLA's gradients and every plan's in one compiled function.
  reduced = {}
  for key in keys:
    x_shape, w_shape, s, p, d = bench_conv.unpack(key)
    x_shape = (*x_shape[:3], min(x_shape[3], 24))
    w_shape = (*w_shape[:2], x_shape[3], min(w_shape[3], 16))
    reduced.setdefault((x_shape, w_shape, s, p, d), key)
  for x_shape, w_shape, s, p, d in reduced:
    x, w, _ = _arrays(x_shape, w_shape, s, p, d)
    plans = [None, conv.Plan('xla', 'cf', 0), conv.Plan('xla', 'cl', 2)]
    if conv.input_grad_supported(s, d):
      plans.append(conv.Plan('conv', 'cf', 1))
    (dx_xla, dw_xla), *ours = jax.jit(
      lambda x, w: [_loss_grads(x, w, s, p, d, plan) for plan in plans]
    )(x, w)
    for dx, dw in ours:
      _close(dx, dx_xla)
      _close(dw, dw_xla)


def test_table_plans_on_their_configurations():
  """Each TABLE entry's plan, applied to its convolution (kernel, strides, dilation, padding)
  at a tiny size, gives XLA's gradients (rows above the tiny output height: one block)."""
  assert len(conv.TABLE) > 70
  configs = {}
  for key, plan in conv.TABLE.items():
    assert plan.dx in conv.DX_METHODS and plan.dw in conv.DW_METHODS
    configs.setdefault((key[5:], plan), key)
  for key in configs.values():
    plan = conv.TABLE[key]
    _, (kh, kw, cin, cout), s, p, d = bench_conv.unpack(key)
    x, w, _ = _arrays((2, 9, 10, min(cin, 8)), (kh, kw, min(cin, 8), min(cout, 8)), s, p, d)
    (dx_xla, dw_xla), (dx, dw) = jax.jit(
      lambda x, w: [_loss_grads(x, w, s, p, d, q) for q in (None, plan)]
    )(x, w)
    _close(dx, dx_xla)
    _close(dw, dw_xla)


def test_default_plan_follows_the_table():
  """The rule for shapes not in the table gives the table's XLA-or-not for most of its
  shapes (the exceptions: 3-channel input convs, and one shape at the margin)."""
  agree = [(conv.default_plan(k) == conv.XLA) == (p == conv.XLA) for k, p in conv.TABLE.items()]
  assert np.mean(agree) > 0.9
  small = conv.shape_key((16, 64, 64, 8), (3, 3, 8, 8), (1, 1), ((1, 1), (1, 1)), (1, 1))
  assert conv.default_plan(small) == conv.XLA
  big = conv.shape_key((2, 200, 200, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), (1, 1))
  assert conv.default_plan(big) == conv.Plan('xla', 'cf', 10)


def _uses_custom_vjp(x, **kw) -> bool:
  m = conv.Conv(**kw)
  params = jax.eval_shape(m.init, jax.random.key(0), x)
  grad = jax.grad(lambda p, x: jnp.sum(m.apply(p, x)))
  return 'custom_vjp' in str(jax.make_jaxpr(grad)(params, x))


def test_conv_module_takes_the_plan_of_its_shape(monkeypatch):
  x = jax.ShapeDtypeStruct((2, 13, 11, 5), jnp.float32)
  key = conv.shape_key(x.shape, (3, 3, 5, 6), (1, 1), ((1, 1), (1, 1)), (1, 1))
  monkeypatch.setattr(conv, 'TABLE', {key: conv.Plan('xla', 'cf', 4)})
  monkeypatch.setattr(conv, 'default_plan', lambda key: conv.XLA)
  assert _uses_custom_vjp(x, features=6, kernel_size=(3, 3), padding=1)
  assert not _uses_custom_vjp(x, features=6, kernel_size=(3, 3), padding=0)  # another shape.
  assert not _uses_custom_vjp(x, features=6, kernel_size=(3, 3), padding='SAME')  # lax's.


def test_conv_module_gradients_equal_nn_conv(monkeypatch):
  """Through flax: the same parameters, outputs and gradients as nn.Conv, in float32 and in
  bfloat16 compute (the gradient in the kernel's dtype, to bfloat16 rounding)."""
  monkeypatch.setattr(conv, 'default_plan', lambda key: conv.Plan('conv', 'cf', 3))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 13, 11, 5)), jnp.float32)
  for dtype, rtol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
    kw = dict(features=6, kernel_size=(3, 3), strides=2, padding=1, dtype=dtype)
    ours, ref = conv.Conv(**kw), nn.Conv(**kw)
    params = ref.init(jax.random.key(0), x)
    loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x).astype(jnp.float32)))
    (g_ours, gx_ours), (g_ref, gx_ref) = [
      jax.jit(jax.grad(loss(m), argnums=(0, 1)))(params, x) for m in (ours, ref)
    ]
    _close(ours.apply(params, x), ref.apply(params, x), 1e-6)
    _close(gx_ours, gx_ref, rtol)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
      assert a.dtype == b.dtype == jnp.float32
      _close(a, b, rtol)


@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
def test_accelerators_keep_xla_gradients(platform):
  """Lowered for a GPU or a TPU, the gradient has no scan of kernel_grad (no while loop) and
  as many convolutions as XLA's own."""
  s, p, d = (1, 1), ((1, 1), (1, 1)), (1, 1)
  x = jax.ShapeDtypeStruct((2, 16, 16, 4), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 4, 8), jnp.float32)

  def text(plan):
    loss = lambda x, w: jnp.sum(
      conv._lax_conv(x, w, s, p, d) if plan is None else conv._conv(x, w, s, p, d, plan)
    )
    fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return jax_export.export(fn, platforms=[platform])(x, w).mlir_module()

  ours, xla = text(conv.Plan('conv', 'cf', 4)), text(None)
  assert 'while' not in ours
  assert ours.count('convolution') == xla.count('convolution')
  cpu = jax_export.export(
    jax.jit(
      jax.grad(
        lambda x, w: jnp.sum(conv._conv(x, w, s, p, d, conv.Plan('xla', 'cf', 4))), argnums=(0, 1)
      )
    ),
    platforms=['cpu'],
  )(x, w).mlir_module()
  assert 'while' in cpu  # the CPU does take the blocked kernel gradient.


def test_bench_conv_smoke(capsys):
  """`cows-jax bench conv` at a tiny size: a line per shape, then the TABLE literal."""
  bench_conv.main(
    ['--models', 'classify', '--size', '16', '--width', '0.03', '--views', 'pair', '--rounds', '1']
  )
  out = capsys.readouterr().out
  assert 'bench conv:' in out and 'TABLE = {' in out and '"bench": "conv"' in out
