"""models.conv.Conv: the kernel gradient by taps equals XLA's, for the convolutions the
models use (3x3 padded, dilated, strided, 1x1, the 7x7 stride-2 stem), and only large
outputs take it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cows_jax.models import conv


@pytest.mark.parametrize(
  'size,stride,dilation,padding',
  [
    (3, 1, 1, 1),
    (3, 1, 2, 2),
    (3, 2, 1, 1),
    (1, 1, 1, 0),
    (1, 2, 1, 0),
    (7, 2, 1, 3),
    (3, 1, 4, 4),
    (3, 1, 1, 'SAME'),
  ],
)
def test_taps_give_xla_gradients(size, stride, dilation, padding, monkeypatch):
  monkeypatch.setattr(conv, 'TAPS_MIN_OUTPUT_PIXELS', 0)  # tiny images take the taps too.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 13, 11, 5)), jnp.float32)
  kw = dict(
    features=6, kernel_size=(size, size), strides=stride, kernel_dilation=dilation, padding=padding
  )
  ours, ref = conv.Conv(**kw), nn.Conv(**kw)
  params = ref.init(jax.random.key(0), x)
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  (g_ours, gx_ours), (g_ref, gx_ref) = [
    jax.jit(jax.grad(loss(m), argnums=(0, 1)))(params, x) for m in (ours, ref)
  ]
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-6)
  taps_used = 'custom_vjp' in str(jax.make_jaxpr(jax.grad(loss(ours)))(params, x))
  assert taps_used == (padding != 'SAME')  # a string padding goes to lax unchanged.
  np.testing.assert_allclose(gx_ours, gx_ref, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_kernel_grad_by_taps_against_numbers_by_hand():
  # 1x1 input channel, 2x2 kernel, no padding: dW[i, j] = sum_hw x[h + i, w + j] * g[h, w].
  x = jnp.arange(9, dtype=jnp.float32).reshape(1, 3, 3, 1)
  g = jnp.asarray([[1.0, 0.0], [0.0, 2.0]]).reshape(1, 2, 2, 1)
  dw = conv.kernel_grad_by_taps(x, g, (2, 2), (1, 1), ((0, 0), (0, 0)), (1, 1))
  np.testing.assert_array_equal(dw[:, :, 0, 0], [[0 + 2 * 4, 1 + 2 * 5], [3 + 2 * 7, 4 + 2 * 8]])


def _uses_taps(x, **kw) -> bool:
  m = conv.Conv(features=2, **kw)
  params = jax.eval_shape(m.init, jax.random.key(0), x)
  grad = jax.grad(lambda p, x: jnp.sum(m.apply(p, x)))
  return 'custom_vjp' in str(jax.make_jaxpr(grad)(params, x))


def test_only_large_outputs_take_the_taps():
  big = jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32)
  assert _uses_taps(big, kernel_size=(3, 3), padding=1)
  assert not _uses_taps(big, kernel_size=(3, 3), padding=0)  # 126 x 126 out
  assert not _uses_taps(big, kernel_size=(3, 3), strides=2, padding=1)  # 64 x 64 out
  assert _uses_taps(
    jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32), kernel_size=(7, 7), strides=2, padding=3
  )  # 128 x 128 out
