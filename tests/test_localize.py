"""Localization: the aggregation rule on hand-made maps, and the feature-reuse procedure
against the reference's naive one (a full pair forward for every pairing)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tolerances import float32_sums

from cows_jax import localize, maps, views
from cows_jax.models.coattention import CoAttentionNet

# Maps are scaled to 0..255. Where both sides compute the features (the naive procedure at
# batch 1 or 2, the fast one at batch 5, or the kept against the per-batch features), float32
# sums go in other orders through the backbone: FEATURES, float32_sums of ~1e4 terms (16
# layers of 3 x 3 x 64 taps, as in tests/test_torch_parity.py) of 255. Where they share the
# features and only the head's sums differ (co-attention over 16 positions x 64 channels, the
# 1x1 classifier): HEAD, ~1e3 terms. A wrong partner, view or class moves a map by tens of
# levels.
FEATURES = float32_sums(10_000, 255.0)  # 0.024
HEAD = float32_sums(1_000, 255.0)  # 0.008


def test_aggregate_rule():
  raw = np.zeros((3, 2, 2), np.float32)
  raw[0] = [[2.0, 1.0], [0.0, -1.0]]  # first map: always added.
  raw[1] = [[4.0, 0.0], [0.0, 0.0]]  # sigmoid(mean=1) > 0.1: added.
  raw[2] = [[1.0, -9.0], [-9.0, -9.0]]  # sigmoid(mean=-6.5) = 0.0015 < 0.1: dropped.
  out = np.asarray(maps.aggregate(jnp.asarray(raw), 0.1))
  expected = (np.array([[255.0, 127.5], [0, 0]]) + np.array([[255.0, 0], [0, 0]])) / 3
  np.testing.assert_allclose(out, expected, rtol=1e-6)


def _tiny_classifier(num_images: int):
  """(model, random images, its variables, the localize config) of the tests below."""
  model = CoAttentionNet(num_classes=4, width=0.125)
  images = np.random.default_rng(0).normal(size=(num_images, 32, 32, 3)).astype(np.float32)
  variables = model.init(jax.random.key(1), images[:1], images[:1])
  cfg = ml_collections.ConfigDict(
    {'localize': {'num_related': 2, 'gate': 0.1}, 'data': {'num_classes': 4}}
  )
  return model, images, variables, cfg


def test_feature_reuse_equals_naive_pair_forwards():
  model, images, variables, cfg = _tiny_classifier(5)
  self_views = ('flip', 0.75, 2.0)
  computer = localize.MapComputer(model, variables)
  queries = [0, 3]
  classes = [np.array([1, 2]), np.array([0])]
  related = [[[1, 2], [4, 1]], [[2, 4]]]

  all_feats = computer.features(images)
  view_feats = {
    v: computer.features(np.asarray(views.make_view(images[queries], v))) for v in self_views
  }
  fast = localize.image_maps(
    computer, all_feats[queries], all_feats, view_feats, related, classes, cfg
  )

  apply = lambda *a, **k: model.apply(variables, *a, **k)
  for qi, q in enumerate(queries):
    x_m = images[q : q + 1]
    for ci, c in enumerate(classes[qi]):
      cross = []
      for n in related[qi][ci]:  # full forward of the pair (m, n), as the reference does.
        f = apply(np.concatenate([x_m, images[n : n + 1]]), method=model.features)
        cross.append(apply(f[:1], f[1:], method=model.pair_maps)[0][0, :, :, c])
      stack = []
      for j, v in enumerate(self_views):  # a full forward of the self-pair (m, view).
        f = apply(x_m, method=model.features)
        f_v = apply(views.make_view(x_m, v), method=model.features)
        maps_m, maps_v = apply(f, f_v, method=model.pair_maps)
        if j == 0:  # the reference's first map: m's own side of the pair with the flip.
          stack.append(maps_m[0, :, :, c])
        stack.append(views.map_back(maps_v, v, f.shape[1:3])[0, :, :, c])
      stack.append(np.mean(cross, axis=0))
      assert len(stack) == 5  # the paper's 5 maps.
      naive = maps.aggregate(jnp.asarray(np.stack(stack)), 0.1)
      np.testing.assert_allclose(fast[qi][ci], naive, rtol=0, atol=FEATURES)


def test_cam_maps_are_the_scaled_single_image_class_maps():
  model = CoAttentionNet(num_classes=3, width=0.125)
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  variables = model.init(jax.random.key(0), images[:1], images[:1])
  # A positive bias so that every class map has a positive part to scale.
  variables['params']['classifier']['bias'] = jnp.full((3,), 1.0)
  computer = localize.MapComputer(model, variables)
  feats = computer.features(images)
  out = localize.cam_maps(computer, feats, [np.array([0, 2]), np.array([1])])
  cams = np.maximum(np.asarray(model.apply(variables, feats, method=model.cam)), 0)
  for i, cls in enumerate([[0, 2], [1]]):
    for j, c in enumerate(cls):
      expected = cams[i, :, :, c] / cams[i, :, :, c].max() * 255
      np.testing.assert_allclose(out[i][j], expected, rtol=0, atol=HEAD)


def test_cam_views_aggregate_each_views_cam_mapped_back_by_the_papers_rule():
  """localize.method='cam_views' (the ablation's multi-view control): per class, the image's
  CAM and each self view's CAM mapped back, one forward per view, aggregated by the rule."""
  model, images, variables, cfg = _tiny_classifier(2)
  self_views = ('flip', 0.75, 2.0)
  computer = localize.MapComputer(model, variables)
  feats = computer.features(images)
  view_feats = {v: computer.features(np.asarray(views.make_view(images, v))) for v in self_views}
  classes = [np.array([1, 3]), np.array([2])]
  out = localize.cam_maps(computer, feats, classes, view_feats=view_feats, gate=0.1)
  apply = lambda *a, **k: model.apply(variables, *a, **k)
  for i, cls in enumerate(classes):
    x = images[i : i + 1]
    f = apply(x, method=model.features)
    cams = [apply(f, method=model.cam)[0]]
    for v in self_views:
      f_v = apply(views.make_view(x, v), method=model.features)
      cams.append(views.map_back(apply(f_v, method=model.cam), v, f.shape[1:3])[0])
    for j, c in enumerate(cls):
      naive = maps.aggregate(jnp.stack([m[:, :, c] for m in cams]), 0.1)
      np.testing.assert_allclose(out[i][j], naive, rtol=0, atol=FEATURES)


def test_related_only_maps_are_the_mean_over_the_related_images():
  """localize.self_views=() (the ablation's related_only): the aggregation of one map, the
  mean of the query's co-attention maps with its K related images."""
  model, images, variables, cfg = _tiny_classifier(4)
  computer = localize.MapComputer(model, variables)
  feats = computer.features(images)
  related = [[[1, 2]], [[3, 3]]]
  out = localize.image_maps(computer, feats[:2], feats, {}, related, [[0], [2]], cfg)
  apply = lambda *a, **k: model.apply(variables, *a, **k)
  for q, c in ((0, 0), (1, 2)):
    cross = [
      apply(feats[q : q + 1], feats[n : n + 1], method=model.pair_maps)[0][0, :, :, c]
      for n in related[q][0]
    ]
    naive = maps.aggregate(jnp.mean(jnp.stack(cross), axis=0)[None], 0.1)
    np.testing.assert_allclose(out[q][0], naive, rtol=0, atol=HEAD)


def test_map_back_is_pytorch_bicubic():
  torch = __import__('pytest').importorskip('torch', reason='torch is not installed')
  rng = np.random.default_rng(0)
  for h in (24, 64):  # the 0.75x and 2x views of a 32 x 32 map.
    raw_maps = rng.normal(size=(2, h, h, 3)).astype(np.float32)
    expected = (
      torch.nn.functional.interpolate(
        torch.from_numpy(raw_maps.transpose(0, 3, 1, 2)),
        size=(32, 32),
        mode='bicubic',
        align_corners=False,
      )
      .numpy()
      .transpose(0, 2, 3, 1)
    )
    got = np.asarray(views.map_back(jnp.asarray(raw_maps), 2.0, (32, 32)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('scan', [False, True])
def test_kept_and_per_batch_related_features_give_the_same_maps(
  tiny_run, tmp_path, monkeypatch, scan
):
  """localize.feature_memory_mib=0 (features per batch, flat memory) writes the maps of the
  default (the training set's features kept). When the CPU computes each image alone
  (models/per_image.py: large images; here forced) they are equal to the bit, whatever batch
  an image is computed in."""
  import shutil

  from cows_jax import config, run_dir
  from cows_jax.models import per_image

  if scan:
    monkeypatch.setattr(per_image, 'MIN_PIXELS', 1)
  cfg, original = tiny_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(original, workdir, symlinks=True)
  run = run_dir.RunDir(workdir)
  ids = run_dir.read_json(run.maps_index(), 'localize')['ids']
  for mib, mode in ((4096, 'kept'), (0, 'per_batch')):
    shutil.rmtree(run.maps())
    localize.run(config.with_overrides(cfg, (('localize.feature_memory_mib', mib),)), workdir)
    shutil.copytree(run.maps(), tmp_path / mode)
  for i in ids:
    a, b = (run_dir.load_maps(tmp_path / mode / f'{i}.npz') for mode in ('kept', 'per_batch'))
    np.testing.assert_array_equal(a[1], b[1])
    if scan:
      np.testing.assert_array_equal(a[0], b[0])
    else:
      # float16 maps: values FEATURES apart may round to neighbouring float16 numbers,
      # 2^-10 of the value apart (0.125 near 255).
      np.testing.assert_allclose(a[0], b[0], rtol=2**-10, atol=FEATURES)


def _numpy_to_image_size(small, size, quantize):
  """The host procedure localize used before the device one: numpy, float64."""
  from cows_jax import tta

  x = np.moveaxis(np.asarray(small, np.float32), 0, -1)
  x = np.clip(x, 0, 255).astype(np.uint8) if quantize else x
  return np.moveaxis(tta.resize_cubic(x, size), -1, 0).astype(np.float32)


def test_batched_resize_to_image_sizes_equals_the_host_resize():
  """One device call for a batch of images of different sizes equals the per-image numpy
  resize: the uint8 path to the level (a float32 sum may round the other way at a rare x.5),
  the float path to float32 rounding."""
  rng = np.random.default_rng(0)
  small = (rng.random((3, 2, 32, 32)) ** 3 * 255).astype(np.float32)
  sizes = [(375, 500), (500, 281), (32, 32)]
  for quantize in (True, False):
    full = maps.resize_to_images(small, sizes, quantize)
    assert full.shape == (3, 2, 512, 512)  # padded to multiples of 32.
    for b, (h, w) in enumerate(sizes):
      want = _numpy_to_image_size(small[b], (h, w), quantize)
      got = full[b, :, :h, :w]
      if quantize:
        diff = np.abs(got - want)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-4
      else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
      np.testing.assert_array_equal(maps.to_image_size(small[b], (h, w), quantize), got)


def test_a_batch_is_one_device_call_with_any_number_of_classes():
  """image_maps: one jitted call for the whole batch (no call per image or class), images
  with 0, 1 or 3 classes, each image's maps those of the same image alone."""
  model, images, variables, cfg = _tiny_classifier(4)
  computer = localize.MapComputer(model, variables)
  feats = computer.features(images)
  view_feats = {'flip': computer.features(np.asarray(views.make_view(images[:3], 'flip')))}
  classes = [np.array([1, 2, 3]), np.array([], np.int64), np.array([0])]
  related = [[[1, 2], [3, 1], [0, 0]], [], [[2, 3]]]
  calls = []
  batch_maps = computer._maps
  computer._maps = lambda *a, **k: calls.append(1) or batch_maps(*a, **k)
  out = localize.image_maps(computer, feats[:3], feats, view_feats, related, classes, cfg)
  assert len(calls) == 1
  assert [m.shape for m in out] == [(3, 4, 4), (0, 4, 4), (1, 4, 4)]
  for i in (0, 2):  # the same image alone in its batch.
    alone = localize.image_maps(
      computer,
      feats[i : i + 1],
      feats,
      {'flip': view_feats['flip'][i : i + 1]},
      [related[i]],
      [classes[i]],
      cfg,
    )[0]
    np.testing.assert_allclose(out[i], alone, rtol=0, atol=HEAD)


def test_cam_method_writes_the_single_image_maps_at_image_size(tiny_run, tmp_path):
  """localize.method='cam' (the ablation's baseline) through the batched device path: each
  image's file holds its CAMs resized to its size, as cam_maps and to_image_size give them
  one image at a time."""
  import shutil

  from cows_jax import checkpoints, config, run_dir
  from cows_jax.data import sources
  from cows_jax.data.pairs import ClassIndex
  from cows_jax.models import from_config

  cfg, original = tiny_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(original, workdir, symlinks=True)
  run = run_dir.RunDir(workdir)
  shutil.rmtree(run.maps())
  cfg = config.finalize(config.with_overrides(cfg, (('localize.method', 'cam'),)))
  localize.run(cfg, workdir)
  model = from_config.classifier(cfg)
  step = run_dir.classifier_epoch_step(run, cfg.localize.after_epochs)
  like = from_config.abstract_variables(model, cfg)
  variables, _ = checkpoints.restore_variables(run.classifier(), step, like, 'classify')
  computer = localize.MapComputer(model, variables)
  train = sources.load(cfg)['train']
  index = ClassIndex(sources.all_labels(train))
  for i in range(3):
    classes = index.classes_of(i)
    feats = computer.features(localize.input_batch(train, [i], cfg))
    [small] = localize.cam_maps(computer, feats, [classes])
    want = maps.to_image_size(small, train[i]['image'].shape[:2], cfg.localize.quantize_maps)
    got, got_classes = run_dir.load_maps(run.map_file(str(train[i]['id'])))
    np.testing.assert_array_equal(got_classes, classes)
    np.testing.assert_allclose(got, want, atol=1.0)  # float16 files; batch of 1 vs of 16.
