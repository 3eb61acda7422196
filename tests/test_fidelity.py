"""The reference's input and output procedures (paper.md, "Details read from the reference
code"), pinned on small hand-made inputs: the checkpoint `localize` uses, self views made from
the original image, and uint8 maps resized with OpenCV's cubic."""

import jax
import numpy as np
import pytest
from PIL import Image
from tolerances import EPS32

from cows_jax import localize, maps, run_dir, views
from cows_jax.configs.defaults import paper_defaults
from cows_jax.data import input_pipeline
from cows_jax.data.pairs import ClassIndex
from cows_jax.models.coattention import CoAttentionNet


def test_localize_uses_the_state_the_reference_calls_epoch_10(tmp_path):
  # The reference saves 'epoch_10' with the 0-based epoch index: the state after 11 epochs.
  run = run_dir.RunDir(str(tmp_path))
  run_dir.write_classifier_epochs(run, 7, 15)
  after = paper_defaults().localize.after_epochs
  assert run_dir.classifier_epoch_step(run, after) == 7 * 11


def _originals(n=3, shape=(37, 53)):
  rng = np.random.default_rng(0)
  return [
    {'image': rng.integers(0, 256, (*shape, 3), dtype=np.uint8), 'labels': np.array([1, 0])}
    for _ in range(n)
  ]


def _normalized_pil(image, side, cfg):
  """The reference's view: a square PIL bilinear resize of the original, then ToTensor and
  Normalize (written here without cows_jax's helpers)."""
  x = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), np.float32) / 255
  return (x - np.asarray(cfg.input.mean)) / np.asarray(cfg.input.std)


def _cfg(size=16):
  c = paper_defaults()
  c.input.size, c.input.color_jitter = size, (0.3, 0.3, 0.3, 0.1)
  return c


def test_training_views_are_resizes_of_the_original_without_jitter():
  source, cfg = _originals(), _cfg()
  index = ClassIndex(np.stack([r['labels'] for r in source]))
  ds = input_pipeline.pair_dataset(source, index, cfg, 1, 3, seed=0)
  batch = ds[0]
  # Every anchor's views: 12 px (x0.75) and 32 px (x2), from the 37x53 original.
  assert batch['view_x0.75'].shape == (3, 12, 12, 3)
  assert batch['view_x2.0'].shape == (3, 32, 32, 3)
  assert 'view_flip' not in batch  # the flip of the 16 px resize is the same image.
  for b in range(3):
    # Find which original the anchor was from its plain (unjittered) input.
    match = [
      i
      for i, r in enumerate(source)
      if np.allclose(batch['image_m_plain'][b], _normalized_pil(r['image'], 16, cfg), atol=1e-5)
    ]
    assert len(match) == 1
    original = source[match[0]]['image']
    np.testing.assert_allclose(batch['view_x2.0'][b], _normalized_pil(original, 32, cfg), atol=1e-5)
    np.testing.assert_allclose(
      batch['view_x0.75'][b], _normalized_pil(original, 12, cfg), atol=1e-5
    )
  # The 2x view has detail that an upsampled 16 px input has not.
  upsampled = np.asarray(views.make_view(batch['image_m_plain'], 2.0))
  assert np.abs(upsampled - batch['view_x2.0']).mean() > 0.1

  cfg.input.views_from_original = False
  assert not [k for k in input_pipeline.pair_dataset(source, index, cfg, 1, 3, 0)[0] if 'view' in k]


def test_localize_views_are_resizes_of_the_original():
  source, cfg = _originals(), _cfg()
  images = np.stack([_normalized_pil(r['image'], 16, cfg) for r in source])
  for view, side in ((0.75, 12), (2.0, 32)):
    got = localize._view_batch(source, [2, 0], images[[2, 0]], view, cfg)
    want = np.stack([_normalized_pil(source[i]['image'], side, cfg) for i in (2, 0)])
    np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_array_equal(
    localize._view_batch(source, [1], images[1:2], 'flip', cfg), images[1:2, :, ::-1]
  )
  cfg.input.views_from_original = False
  np.testing.assert_allclose(
    localize._view_batch(source, [1], images[1:2], 2.0, cfg), views.make_view(images[1:2], 2.0)
  )


def test_training_uses_the_given_views():
  model = CoAttentionNet(num_classes=2, width=0.125)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
  given = {'x2.0': rng.normal(size=(2, 32, 32, 3)).astype(np.float32)}
  variables = model.init(jax.random.key(0), x, x)
  run = lambda **k: (
    model.apply(variables, x, x, (2.0,), train=False, method=model.training_scores, **k)[1][
      'x2.0'
    ].single_n
  )
  resampled = run()
  np.testing.assert_allclose(
    run(view_images={'x2.0': np.asarray(views.make_view(x, 2.0))}), resampled, rtol=1e-5
  )
  assert np.abs(np.asarray(run(view_images=given)) - np.asarray(resampled)).max() > 1e-3


def test_maps_are_truncated_to_uint8_before_the_resize():
  small = np.full((1, 4, 4), 100.9, np.float32)
  np.testing.assert_array_equal(maps.to_image_size(small, (9, 7), quantize=True), 100.0)
  # A float32 cubic of a constant: per axis 4 rounded weights summed in float32, a few
  # roundings each, so at most 16 eps32 relative; truncation would be 100.0 (9e-3 off).
  np.testing.assert_allclose(
    maps.to_image_size(small, (9, 7), quantize=False), 100.9, rtol=16 * EPS32
  )
  # A 0 / 255 step overshoots under the cubic kernel: saturated to 0..255 as OpenCV does.
  step = np.zeros((1, 4, 4), np.float32)
  step[:, :, 2:] = 255
  quantized = maps.to_image_size(step, (4, 16), quantize=True)
  assert quantized.min() == 0 and quantized.max() == 255
  floats = maps.to_image_size(step, (4, 16), quantize=False)
  assert floats.min() < 0 and floats.max() > 255


@pytest.mark.parametrize(
  'small,size',
  [
    ((32, 32), (375, 500)),
    ((32, 32), (500, 281)),
    ((41, 41), (321, 321)),
    ((7, 5), (13, 29)),
    ((40, 40), (17, 23)),
  ],
)
def test_map_resize_matches_opencv_inter_cubic(small, size):
  cv2 = pytest.importorskip('cv2')
  rng = np.random.default_rng(0)
  # Aggregated maps: 0..255 floats, mostly dark with a bright region.
  m = (rng.random((1, *small)) ** 3 * 255.0).astype(np.float32)
  ours = maps.to_image_size(m, size, quantize=True)[0]
  want = cv2.resize(m[0].astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
  diff = np.abs(ours.astype(int) - want.astype(int))
  # OpenCV rounds its float sums itself: at most one level apart, almost always equal.
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_segmenter_crops_take_scales_from_the_discrete_set():
  from cows_jax.data import transforms

  rng = np.random.default_rng(0)
  image = np.zeros((100, 100, 3), np.uint8)
  label = np.zeros((100, 100), np.uint8)
  scales = paper_defaults().segment.scales
  assert scales == (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
  seen = set()
  for _ in range(200):
    # Crop 200 px of a 100 px image: the padding (label 255) gives away the scaled size.
    _, lab = transforms.random_scale_crop(image, label, rng, scales, True, 200, False, (0, 0, 0))
    seen.add(int((lab[:, 0] != 255).sum()))
  assert seen == {70, 80, 90, 100, 110, 120, 130}
  sizes = set()
  for _ in range(200):
    _, lab = transforms.random_scale_crop(image, label, rng, scales, False, 200, False, (0, 0, 0))
    sizes.add(int((lab[:, 0] != 255).sum()))
  assert len(sizes) > 30 and min(sizes) >= 70 and max(sizes) <= 130


def test_largefov_head_init_is_caffes_xavier_and_msra():
  from cows_jax.models.deeplab import LargeFOVHead

  head = LargeFOVHead(num_classes=21, channels=256, dilation=2)
  params = head.init(jax.random.key(0), np.zeros((1, 8, 8, 128), np.float32))['params']
  fc6, fc7, fc8 = (np.asarray(params[k]['kernel']) for k in ('fc6', 'fc7', 'fc8'))
  # Caffe's xavier: uniform in +-sqrt(3 / fan_in); msra: Gaussian with variance 2 / fan_in.
  bound = np.sqrt(3 / (9 * 128))
  assert np.abs(fc6).max() <= bound and np.abs(fc6).max() > 0.95 * bound
  np.testing.assert_allclose(fc6.std(), bound / np.sqrt(3), rtol=0.02)
  np.testing.assert_allclose(fc7.std(), np.sqrt(1 / 256), rtol=0.02)
  assert np.abs(fc7).max() <= np.sqrt(3 / 256)
  np.testing.assert_allclose(fc8.std(), np.sqrt(2 / 256), rtol=0.05)
  assert np.abs(fc8).max() > np.sqrt(3 / 256)  # Gaussian tails, not uniform.


def test_crf_unary_is_normalized_and_floored():
  from cows_jax import crf

  # Cubic resizes leave probabilities that do not sum to 1 and may dip below 0.
  probs = np.array([[[0.6, 0.6, -0.01], [0.2, 0.2, 0.0]]], np.float32)
  got = crf.unary_probabilities(probs, 1e-4)
  want = np.array([[[0.6 / 1.19, 0.6 / 1.19, 1e-4], [0.5, 0.5, 1e-4]]])
  np.testing.assert_allclose(got, want, rtol=1e-6)
