"""Test-time inference: sliding windows, scales and flips against whole-image forwards."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import EPS32, FLOAT64

from cows_jax import inference, losses, tta
from cows_jax.configs.defaults import paper_defaults
from cows_jax.data import transforms
from cows_jax.models.deeplab import DeepLab

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope='module')
def tiny_model():
  model = DeepLab(num_classes=3, width=1 / 16, head_channels=64, head_dilation=2)
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  variables = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), shapes)
  return model, variables


def _image(h, w, seed=1):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _whole(model, variables, x):
  """Single-scale probabilities of a normalized [H,W,3] image, one plain forward."""
  logits = model.apply(variables, x[None])
  return jax.nn.softmax(losses.upsample_logits(logits, x.shape[:2], True), -1)[0]


def test_one_scale_no_flip_equals_single_scale(tiny_model):
  model, variables = tiny_model
  image = _image(40, 56)
  probs_fn = functools.partial(inference.window_probabilities(model, False, True), variables)
  got = tta.predict(image, probs_fn, (1.0,), 0, 2 / 3, MEAN, STD)
  want = jax.jit(functools.partial(_whole, model))(
    variables, transforms.normalize(image, MEAN, STD)
  )
  np.testing.assert_allclose(got, want, atol=1e-6)
  twice = tta.predict(image, probs_fn, (1.0, 1.0), 0, 2 / 3, MEAN, STD)
  np.testing.assert_allclose(twice, want, atol=1e-6)


def test_window_covering_the_image_equals_whole_padded_image(tiny_model):
  """A 64 px window over a 40x56 image: one forward of the image padded with the mean colour
  at the bottom/right (the reference), or centred."""
  model, variables = tiny_model
  image = _image(40, 56)
  probs_fn = functools.partial(inference.window_probabilities(model, False, True), variables)
  x = transforms.normalize(image, MEAN, STD)
  got = tta.predict(image, probs_fn, (1.0,), 64, 2 / 3, MEAN, STD)
  want = np.asarray(probs_fn(np.pad(x, ((0, 24), (0, 8), (0, 0)))[None]))[0, :40, :56]
  np.testing.assert_allclose(got, want, atol=1e-6)
  got = tta.predict(image, probs_fn, (1.0,), 64, 2 / 3, MEAN, STD, pad='centre')
  want = np.asarray(probs_fn(np.pad(x, ((12, 12), (4, 4), (0, 0)))[None]))[0, 12:52, 4:60]
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_reference_test_time_procedure(tiny_model):
  """The authors' procedure written out for one image: per scale a cubic resize of the image
  and of its mirror image, each padded bottom/right and cut into windows stepping 26 px
  (int(40 * 2 / 3)), probabilities resized back with the cubic, all averaged."""
  cv2 = pytest.importorskip('cv2')
  model, variables = tiny_model
  image = _image(50, 70)
  net = jax.jit(functools.partial(inference.window_probabilities(model, False, True), variables))
  scales, win = (0.75, 1.25), 40
  total = 0
  for mirrored in (False, True):
    src = image[:, ::-1] if mirrored else image
    for s in scales:
      h, w = round(50 * s), round(70 * s)
      x = transforms.normalize(
        cv2.resize(np.ascontiguousarray(src), (w, h), interpolation=cv2.INTER_CUBIC), MEAN, STD
      )
      ph, pw = max(win - h, 0), max(win - w, 0)
      x = np.pad(x, ((0, ph), (0, pw), (0, 0)))
      acc = np.zeros((*x.shape[:2], 3), np.float32)
      cnt = np.zeros(x.shape[:2] + (1,), np.float32)
      ys = sorted({min(y, x.shape[0] - win) for y in range(0, x.shape[0] - win + 26, 26)})
      xs = sorted({min(c, x.shape[1] - win) for c in range(0, x.shape[1] - win + 26, 26)})
      for y in ys:
        for c in xs:
          acc[y : y + win, c : c + win] += np.asarray(net(x[None, y : y + win, c : c + win]))[0]
          cnt[y : y + win, c : c + win] += 1
      p = (acc / cnt)[:h, :w]
      p = cv2.resize(p, (70, 50), interpolation=cv2.INTER_CUBIC)
      total = total + (p[:, ::-1] if mirrored else p)
  want = total / (2 * len(scales))
  got = tta.predict(
    image, net, scales, win, 2 / 3, MEAN, STD, flip_image=True, interpolation='cubic'
  )
  # cv2's resized uint8 image can differ from ours by one level at a few pixels (see
  # test_fidelity), which moves this random network's output around those pixels only.
  assert np.isclose(got, want, atol=1e-5).mean() > 0.98
  assert (np.argmax(got, -1) == np.argmax(want, -1)).mean() > 0.99


def test_overlapping_windows_stitch_back_exactly():
  """A per-pixel model gives the same probabilities whatever the windows: 16 px windows with
  overlaps over 40x56 (and 10x56: padded rows) equal one whole-image pass."""
  w = np.random.default_rng(0).normal(size=(3, 4))
  # The model in float64 (numpy), so crops and the whole image give the same probabilities
  # whatever order BLAS sums in; stitch averages up to 4 windows in float32: a few roundings
  # of values up to 1, at most 8 eps32.
  pixelwise = lambda x: np.asarray(jax.nn.softmax(x.astype(np.float64) @ w, -1))
  for h in (40, 10):
    image = transforms.normalize(_image(h, 56), MEAN, STD)
    crops, boxes, shape, pad = tta.tile(image, 16, 2 / 3)
    assert len(boxes) == (4 if h == 40 else 1) * 5
    np.testing.assert_allclose(
      tta.stitch(pixelwise(crops), boxes, shape, pad, (h, 56)), pixelwise(image), atol=8 * EPS32
    )


@pytest.fixture(scope='module')
def tiny_model64(tiny_model):
  """tiny_model in float64 (use under jax.enable_x64), three 16x24 windows, and the bound on
  two of its probabilities from sums in other orders: the softmax moves a probability by at
  most half the largest change of a logit, and the logits of float64 runs agree to FLOAT64
  of their magnitude (this random network's reach 1e5: in float32, rounding alone moves a
  probability near a tie by up to 1)."""
  model, variables = tiny_model
  x = transforms.normalize(np.stack([_image(16, 24, seed) for seed in (1, 2, 3)]), MEAN, STD)
  with jax.enable_x64(True):
    model = model.clone(dtype=jnp.float64)
    variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), variables)
    x = jnp.asarray(x, jnp.float64)
    scale = float(jnp.abs(jax.jit(model.apply)(variables, x)).max())
  return model, variables, x, FLOAT64 * scale


def test_flip_averages_the_mirrored_prediction(tiny_model64):
  model, variables, x, atol = tiny_model64
  with jax.enable_x64(True):
    one_way = inference.window_probabilities(model, False, True)
    plain = np.asarray(one_way(variables, x[:1]))
    mirrored = np.asarray(one_way(variables, x[:1, :, ::-1]))
    both = inference.window_probabilities(model, True, True)(variables, x[:1])
  assert both.dtype == jnp.float64
  np.testing.assert_allclose(both, (plain + mirrored[:, :, ::-1]) / 2, atol=atol, rtol=0)


def test_one_window_at_a_time_equals_the_batch(tiny_model64, monkeypatch):
  """The CPU's scan over windows (models/per_image.py, here for small windows too) gives the
  batched call's probabilities, flipped windows included."""
  from cows_jax.models import per_image

  monkeypatch.setattr(per_image, 'MIN_PIXELS', 1)
  model, variables, x, atol = tiny_model64
  # Convolutions at batch 1 and 6 sum in other orders: in float64 (see tiny_model64).
  with jax.enable_x64(True):
    scanned = inference.window_probabilities(model, True, True)(variables, x)
    batched = inference.window_probabilities(model, True, True, one_at_a_time=False)(variables, x)
  assert scanned.dtype == jnp.float64
  np.testing.assert_allclose(scanned, batched, atol=atol, rtol=0)


def test_resize_and_settings():
  x = np.random.default_rng(0).normal(size=(6, 9, 2)).astype(np.float32)
  for size in ((12, 18), (4, 5), (6, 9), (13, 7)):
    want = jax.image.resize(x, (*size, 2), 'linear', antialias=False)
    np.testing.assert_allclose(tta.resize_bilinear(x, size), want, atol=1e-5)
  assert [tta.bucket(n) for n in (1, 3, 8, 9, 17)] == [1, 4, 8, 16, 24]
  assert tta.window_starts(401, 401, 267) == [0]
  assert tta.window_starts(750, 401, 267) == [0, 267, 349]
  # The reference's step: int(401 * 2 / 3) = 267.
  _, boxes, _, _ = tta.tile(np.zeros((401, 700, 3), np.float32), 401, 2 / 3)
  assert [x for _, x in boxes] == [0, 267, 299]
  cfg = paper_defaults()
  assert inference.Settings.from_config(cfg) == inference.Settings(
    (0.5, 0.75, 1.0, 1.25, 1.5), True, True, 401, 2 / 3, 'bottom_right', 'cubic'
  )
  cfg.inference.window_stride = 0.0
  with pytest.raises(ValueError, match='inference.window_stride'):
    inference.Settings.from_config(cfg)


@pytest.mark.parametrize(
  'kwargs',
  [
    dict(scales=(0.75, 1.25), window=40, stride=2 / 3, flip_image=True),
    dict(scales=(1.0, 0.5), window=24, stride=0.5, pad='centre'),
    dict(scales=(0.75, 1.0), window=40, stride=2 / 3, flip_image=True, interpolation='bilinear'),
    dict(scales=(0.75, 1.0, 1.5), window=0, stride=2 / 3, flip_image=True),
    dict(scales=(1.0,), window=0, stride=2 / 3, interpolation='bilinear'),
  ],
)
def test_device_procedure_equals_the_numpy_one(tiny_model, kwargs):
  """inference.predict_on_device (stitching, resize back, mirror and mean on the device: the
  in-process predictor) equals tta.predict (numpy: what exports run) within 1e-5."""
  model, variables = tiny_model
  probs_fn = jax.jit(
    functools.partial(inference.window_probabilities(model, False, True), variables)
  )
  for image in (_image(50, 70), _image(37, 29, seed=2)):
    want = tta.predict(image, probs_fn, mean=MEAN, std=STD, **kwargs)
    got = inference.predict_on_device(image, probs_fn, mean=MEAN, std=STD, **kwargs)
    assert got.shape == want.shape == (*image.shape[:2], 3)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_device_procedure_compiles_once_for_nearby_sizes(tiny_model):
  """With windows, images whose padded sizes fall in the same buckets share one compiled
  combination step (window positions and resize taps are arguments)."""
  model, variables = tiny_model
  probs_fn = jax.jit(
    functools.partial(inference.window_probabilities(model, False, True), variables)
  )
  kwargs = dict(scales=(1.0, 1.25), window=40, stride=2 / 3, flip_image=True, mean=MEAN, std=STD)
  inference.predict_on_device(_image(50, 70), probs_fn, **kwargs)
  before = inference._combine._cache_size()
  inference.predict_on_device(_image(48, 68, seed=3), probs_fn, **kwargs)
  assert inference._combine._cache_size() == before


def test_bench_test_time_smoke(capsys):
  from cows_jax.bench import tta as bench_tta

  args = ['--stages', '1,1,1,1', '--width', '0.0625', '--image', '40x30', '--window', '24']
  bench_tta.main(args + ['--scales', '1.0', '--images', '1', '--classes', '2'])
  out = capsys.readouterr().out
  assert 'host / device' in out and '"bench": "test-time"' in out
