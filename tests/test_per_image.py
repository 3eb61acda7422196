"""models.per_image: on the CPU a batched network run one image (per device) at a time gives the
batched outputs, in the batch's order; small images and GPUs and TPUs keep the batch.

The scan and the batch run the convolutions at other batch sizes, so their sums may go in
other orders: the comparisons run in float64, to tolerances.FLOAT64 of the outputs' magnitude
(in float32 they differ by up to 1e-5 of outputs near 60, more than any fixed atol that still
checks the entries near zero)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export as jax_export
from jax import lax
from tolerances import FLOAT64

from cows_jax.models import per_image


def _net(x):
  """Two convolutions with a ReLU: each image's output depends on its own pixels only."""
  w1 = jnp.linspace(-1.0, 1.0, 3 * 3 * 3 * 4).reshape(3, 3, 3, 4)
  w2 = jnp.linspace(1.0, -0.5, 3 * 3 * 4 * 2).reshape(3, 3, 4, 2)
  conv = lambda x, w: lax.conv_general_dilated(
    x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  return conv(jax.nn.relu(conv(x, w1) + 0.1), w2)


@pytest.fixture
def scan_tiny_images(monkeypatch):
  """Scan the tests' 8x8 images as the CPU scans large ones."""
  monkeypatch.setattr(per_image, 'MIN_PIXELS', 1)


def _close64(got, want):
  assert got.dtype == want.dtype == jnp.float64
  np.testing.assert_allclose(got, want, rtol=0, atol=FLOAT64 * np.abs(want).max())


@pytest.mark.parametrize('batch,devices', [(4, 1), (4, 2), (6, 3), (3, 2)])
def test_one_image_at_a_time_equals_the_batch(batch, devices, scan_tiny_images):
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(batch).normal(size=(batch, 8, 8, 3)), jnp.float64)
    got = jax.jit(lambda x: per_image.on_cpu(_net, x, devices))(x)
    _close64(got, _net(x))


@pytest.mark.parametrize('platform,scans', [('cpu', True), ('cuda', False), ('tpu', False)])
def test_only_the_cpu_scans(platform, scans, scan_tiny_images):
  x = jax.ShapeDtypeStruct((4, 8, 8, 3), jnp.float32)
  fn = jax.jit(lambda x: per_image.on_cpu(_net, x, 2))
  text = jax_export.export(fn, platforms=[platform])(x).mlir_module()
  assert ('while' in text) == scans


def test_images_below_the_size_keep_the_batch():
  small = jax.ShapeDtypeStruct((4, 16, 16, 3), jnp.float32)
  fn = jax.jit(lambda x: per_image.on_cpu(_net, x))
  assert 'while' not in jax_export.export(fn, platforms=['cpu'])(small).mlir_module()
  assert per_image.scans(256, 256) and not per_image.scans(192, 192)
  assert per_image.scans(*jax_export.symbolic_shape('h, w'))


def test_an_export_for_every_platform_takes_any_batch(scan_tiny_images):
  """Exports have a symbolic batch and may name several platforms (cows-jax export
  --platforms cpu,cuda,tpu): the scan lowers for each, and the CPU one runs any batch."""
  shape = jax_export.symbolic_shape('b, 8, 8, 3')
  fn = jax.jit(lambda x: per_image.on_cpu(_net, x))
  with jax.enable_x64(True):
    exported = jax_export.export(fn, platforms=['cpu', 'cuda', 'tpu'])(
      jax.ShapeDtypeStruct(shape, jnp.float64)
    )
    for batch in (1, 3):
      x = jnp.asarray(np.random.default_rng(batch).normal(size=(batch, 8, 8, 3)), jnp.float64)
      _close64(exported.call(x), _net(x))
