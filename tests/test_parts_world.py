"""The parts world (data/synthetic_parts.py): its builder, its rules (siblings never share an
image, parts small and on the rim, unique part palettes), the shapes world left unchanged,
`part_body_recall`, and the gate (tools/parts_gate.py) on `synthetic:parts,tiny`."""

import colorsys
import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest

from cows_jax import config, map_metrics
from cows_jax.data import sources, synthetic, synthetic_parts
from cows_jax.imagenet_standin import backbones
from cows_jax.imagenet_standin import dataset as standin_dataset
from cows_jax.tools import parts_gate

SPEC = synthetic_parts.PartsSpec(train_size=60, val_size=4)  # 112 px, 9 classes


def _digest(example: dict) -> str:
  h = hashlib.sha256()
  for key in sorted(example):
    h.update(key.encode())
    h.update(np.asarray(example[key]).tobytes())
  return h.hexdigest()[:16]


@pytest.fixture(scope='module')
def examples():
  return [synthetic_parts.generate_example(SPEC, 'train', i) for i in range(SPEC.train_size)]


def test_the_shapes_world_is_unchanged():
  """Digests and fingerprints computed with the code before the parts world (commit 41d496b)."""
  s = synthetic.SyntheticSpec(image_size=64, train_size=8, val_size=4)
  for (split, index), digest in {
    ('train', 0): 'bccf97cb693f3c8b',
    ('train', 5): 'e71b096d25334c58',
    ('val', 3): '6a035b6f53a586c8',
  }.items():
    assert _digest(synthetic.generate_example(s, split, index)) == digest, (split, index)
  s12 = synthetic.SyntheticSpec(image_size=48, num_classes=12)
  assert _digest(synthetic.generate_example(s12, 'web', 2)) == '0d547aa29ebcfb03'
  assert _digest(synthetic.generate_example(s12, 'single_label', 1)) == '95e7d5e9223253fb'
  p = standin_dataset.PretrainSpec(image_size=48, train_size=20, val_size=5)
  assert _digest(standin_dataset.generate_example(p, 'train', 7)) == 'cfe6df220a4fe38c'
  assert (s.fingerprint(), synthetic.SyntheticSpec().fingerprint()) == (
    '7af17e1494c3',
    'fa470677fec0',
  )
  assert standin_dataset.PretrainSpec().fingerprint() == '6e1ada286907'
  # the shipped backbones of the shapes world keep their names
  assert backbones.fingerprint(config.load('synthetic')) == '59cdbe6eb23d'
  assert backbones.fingerprint(config.load('synthetic:tiny_pretrained')) == '0ac52ddbebfb'
  assert isinstance(sources.synthetic_spec(config.load('synthetic')), synthetic.SyntheticSpec)


def test_examples_are_deterministic():
  a = synthetic_parts.generate_example(SPEC, 'train', 3)
  b = synthetic_parts.generate_example(SPEC, 'train', 3)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert set(a) == {'image', 'mask', 'saliency', 'labels', 'part_mask'}
  assert not np.array_equal(a['image'], synthetic_parts.generate_example(SPEC, 'val', 3)['image'])
  other_seed = synthetic_parts.PartsSpec(train_size=60, seed=1)
  assert not np.array_equal(
    a['image'], synthetic_parts.generate_example(other_seed, 'train', 3)['image']
  )
  # an example does not depend on the split sizes
  bigger = synthetic_parts.PartsSpec(train_size=99, val_size=4)
  assert _digest(synthetic_parts.generate_example(bigger, 'train', 3)) == _digest(a)
  assert SPEC.fingerprint() != synthetic_parts.PartsSpec(train_size=61, val_size=4).fingerprint()
  with pytest.raises(IndexError):
    synthetic_parts.generate_example(SPEC, 'val', 4)
  with pytest.raises(ValueError, match='multiple of 3'):
    synthetic_parts.PartsSpec(num_classes=8)


def test_siblings_never_share_an_image_and_half_hold_two(examples):
  counts = [int(e['labels'].sum()) for e in examples]
  assert set(counts) <= {1, 2}
  assert 0.3 <= np.mean(np.asarray(counts) == 2) <= 0.7
  for e in examples:
    families = [synthetic_parts.family(k) for k in np.flatnonzero(e['labels'])]
    assert len(families) == len(set(families))


def test_parts_are_small_on_the_rim_and_at_least_two_map_cells(examples):
  fractions = []
  for e in examples:
    mask, part = e['mask'], e['part_mask']
    labelled = set(np.flatnonzero(e['labels']) + 1)
    assert set(np.unique(part)) - {0} == labelled  # every labelled object shows its part
    assert np.all((mask[part > 0] == part[part > 0]) | (mask[part > 0] == 255))
    for k in labelled:
      obj, p = mask == k, (part == k) & (mask == k)
      fractions.append(p.sum() / obj.sum())
      ys, xs = np.nonzero(part == k)
      # at least 2 x 2 cells of a stride-8 map at 112 px
      assert min(np.ptp(ys), np.ptp(xs)) + 1 >= 16
      # on the rim: the part's centre lies in the outer part of the object's radius (0.45: a
      # part of 15% of the object pulls the object's centroid toward itself)
      region = np.stack(np.nonzero(obj | (part == k)), 1)
      centre = region.mean(0)
      reach = np.hypot(*(region - centre).T).max()
      assert np.hypot(*(np.array([ys.mean(), xs.mean()]) - centre)) >= 0.45 * reach
  assert 0.12 <= np.median(fractions) <= 0.19
  assert max(fractions) < 0.25


def test_unlabelled_bodies_are_background_and_leave_the_world_without_them_unchanged():
  # Without unlabelled bodies the world is generator version 3's, image for image and by
  # name (digests and fingerprint from commit c201f6c), so its builds and backbone are reused.
  before = synthetic_parts.PartsSpec(image_size=64, train_size=8, val_size=4)
  assert before.fingerprint() == '231e716ef543'
  for (split, index), digest in {
    ('train', 0): 'ec9747bceec70072',
    ('train', 5): '3f60e225278c9d65',
    ('val', 3): '61c127747946cdb6',
  }.items():
    assert _digest(synthetic_parts.generate_example(before, split, index)) == digest
  with_bodies = dataclasses.replace(SPEC, unlabelled_rate=1.0)
  assert with_bodies.fingerprint() != SPEC.fingerprint()
  # an unlabelled body: a family's body with no part, drawn after the labelled objects
  rng = np.random.default_rng(0)
  drawn = synthetic_parts._objects(rng, with_bodies)
  assert drawn[-1][1] is None and all(k is not None for _, k in drawn[:-1])
  image, instances, classes, owner, _ = synthetic_parts._scene(rng, SPEC, [(1, None)])
  assert classes == [None] and (instances == 0).sum() > 0.05 * 112**2 and (owner < 0).all()
  for i in range(12):
    plain = synthetic_parts.generate_example(SPEC, 'train', i)
    e = synthetic_parts.generate_example(with_bodies, 'train', i)
    # the labels are drawn first, so both worlds hold the same labelled classes ...
    np.testing.assert_array_equal(e['labels'], plain['labels'])
    labelled = set(np.flatnonzero(e['labels']) + 1)
    assert set(np.unique(e['part_mask'])) - {0} == labelled
    assert set(np.unique(e['mask'])) - {0, 255} <= labelled
    # ... and the extra body changes the image, not the mask's classes
    assert not np.array_equal(e['image'], plain['image'])
  with pytest.raises(ValueError, match='unlabelled_rate'):
    synthetic_parts.PartsSpec(unlabelled_rate=1.5)


def test_part_offset_moves_parts_out_of_the_body_and_leaves_the_world_without_it_unchanged():
  """data.part_offset places a part's centre that many part radii outside its body's rim: at
  the default (-0.3) about 70% of the part's disc lies on the body, at 0.5 about 20% (half
  planes' shares of a disc: 0.69 and 0.20), attached either way. The default keeps version
  3's names: the datasets' fingerprints (the stand-in's: that of the backbone shipped
  before body_aspect, c575653cd127)."""
  assert synthetic_parts.PartsPretrainSpec().fingerprint() == 'db4cf92dd7fc'
  moved = dataclasses.replace(SPEC, part_offset=0.5)
  assert moved.fingerprint() != SPEC.fingerprint()
  pretrain = synthetic_parts.PartsPretrainSpec()
  assert dataclasses.replace(pretrain, part_offset=0.5).fingerprint() != pretrain.fingerprint()
  for offset, low, high in ((synthetic_parts.PART_OFFSET, 0.55, 0.85), (0.5, 0.05, 0.4)):
    shares = []
    spec = dataclasses.replace(SPEC, part_offset=offset)
    for seed in range(20):
      # the same draws make the body alone and the body with its part
      body = synthetic_parts._draw_object(np.random.default_rng(seed), 0, spec, False)
      drawn = synthetic_parts._draw_object(np.random.default_rng(seed), 0, spec)
      if drawn is not None:
        np.testing.assert_array_equal(drawn[0], body[0] | drawn[1])
        shares.append((drawn[1] & body[0]).sum() / drawn[1].sum())
    assert len(shares) >= 15 and low < np.median(shares) < high, (offset, shares)
  for bad in (-1.5, 0.9):
    with pytest.raises(ValueError, match='part_offset'):
      synthetic_parts.PartsSpec(part_offset=bad)
    with pytest.raises(ValueError, match='part_offset'):
      synthetic_parts.PartsPretrainSpec(part_offset=bad)


def test_body_aspect_stretches_bodies_and_puts_the_part_at_an_end():
  """data.body_aspect draws bodies that many times longer than wide (the area kept, a +-0.15
  log jitter), with the part at one end of the long axis: the part's centre lies further from
  the body's centroid than on round bodies, along the body's principal axis. The default
  (round bodies) keeps version 3's names."""

  def shape(mask):
    """(length over width, unit principal axis, centroid) of a mask, from its moments."""
    yx = np.argwhere(mask).astype(np.float64)
    values, vectors = np.linalg.eigh(np.cov(yx.T))
    return np.sqrt(values[1] / values[0]), vectors[:, 1], yx.mean(0)

  long = dataclasses.replace(SPEC, body_aspect=2.0)
  assert long.fingerprint() != SPEC.fingerprint()
  pretrain = synthetic_parts.PartsPretrainSpec()
  assert dataclasses.replace(pretrain, body_aspect=2.0).fingerprint() != pretrain.fingerprint()
  for spec, aspects, reach, along in (
    (SPEC, (1.0, 1.15), (0.8, 1.0), None),
    (long, (1.6, 2.4), (1.1, 1.4), 0.95),
  ):
    measured = []
    for seed in range(20):
      body = synthetic_parts._draw_object(np.random.default_rng(seed), 0, spec, False)[0]
      drawn = synthetic_parts._draw_object(np.random.default_rng(seed), 0, spec)
      if drawn is None:
        continue
      aspect, axis, centroid = shape(body)
      to_part = np.argwhere(drawn[1]).mean(0) - centroid
      # the part's distance from the centroid over the radius of a disc of the body's area
      measured.append(
        (
          aspect,
          np.linalg.norm(to_part) / np.sqrt(body.sum() / np.pi),
          abs(axis @ to_part) / np.linalg.norm(to_part),
        )
      )
    aspect, distance, cosine = np.median(measured, axis=0)
    assert len(measured) >= 15
    assert aspects[0] < aspect < aspects[1] and reach[0] < distance < reach[1], (spec, measured)
    assert along is None or cosine > along, measured
  for bad in (0.5, 3.5):
    with pytest.raises(ValueError, match='body_aspect'):
      synthetic_parts.PartsSpec(body_aspect=bad)
    with pytest.raises(ValueError, match='body_aspect'):
      synthetic_parts.PartsPretrainSpec(body_aspect=bad)


@pytest.mark.parametrize('hues', sorted(synthetic_parts.BODY_HUES))
def test_body_hues_paint_each_family_in_its_hue(hues):
  """data.body_hues: the median hue of each family's body pixels (its texture shifts the hue
  by 0.05 to 0.08 turn on part of it) lies within 0.06 turn of the palette's; with
  'between_parts' every body is at least 0.1 turn from every part hue, with 'version3' two
  are not (the reason for the choice). The default keeps version 3's names."""
  spec = dataclasses.replace(SPEC, body_hues=hues, unlabelled_rate=1.0)
  with_bodies = dataclasses.replace(SPEC, unlabelled_rate=1.0)
  assert (spec.fingerprint() == with_bodies.fingerprint()) == (hues == 'version3')
  body_hue = {}
  for i in range(12):
    record = synthetic_parts.generate_example(spec, 'train', i)
    hsv = np.array([colorsys.rgb_to_hsv(*px) for px in record['image'].reshape(-1, 3) / 255])
    hue = hsv[:, 0].reshape(record['mask'].shape)
    objects = (record['mask'] > 0) & (record['mask'] < 255) & (record['part_mask'] == 0)
    for k in np.unique(record['mask'][objects]):
      body_hue.setdefault(synthetic_parts.family(int(k) - 1), []).append(
        hue[objects & (record['mask'] == k)]
      )

  def gap(a, b):
    d = abs(a - b) % 1
    return min(d, 1 - d)

  palette = synthetic_parts.BODY_HUES[hues]
  assert len(body_hue) == spec.num_families
  for f, pixels in body_hue.items():
    values = np.concatenate(pixels)
    # the circular median: the hue that minimizes the mean gap, on a 0.01 grid
    median = min(np.arange(0, 1, 0.01), key=lambda h: np.mean([gap(h, v) for v in values[::7]]))
    assert gap(median, palette[f]) < 0.06, (f, median, palette[f])
  nearest = [min(gap(h, p) for p in synthetic_parts.PART_HUES) for h in palette[:3]]
  assert (min(nearest) >= 0.1) == (hues == 'between_parts'), nearest
  with pytest.raises(ValueError, match='data.body_hues'):
    synthetic_parts.PartsPretrainSpec(body_hues='pastel')


def test_part_palettes_are_unique_and_survive_the_jitter():
  n = synthetic_parts.MAX_CLASSES
  looks = {
    (synthetic_parts._part_appearance(k).hue, synthetic_parts._part_appearance(k).texture)
    for k in range(n)
  }
  assert len(looks) == n
  for k in range(n):
    for j in range(n):
      a, b = synthetic_parts._part_appearance(k), synthetic_parts._part_appearance(j)
      if k != j and synthetic_parts.family(k) == synthetic_parts.family(j):
        gap = abs(a.hue - b.hue) % 1
        assert min(gap, 1 - gap) > 0.2 + 0.06  # the jitter +-0.1 twice, the instance +-0.03
        assert a.texture is not b.texture
  # parts are saturated, bodies and clutter are not: a part keeps more saturation after the
  # jitter's x0.7 than any body or clutter has (the jitter scales a whole image alike)
  part_sat = min(synthetic_parts._part_appearance(k).sat[0] for k in range(n))
  assert part_sat * 0.7 > max(b.sat[1] for b in synthetic_parts._BODIES) == 0.45
  rng = np.random.default_rng(0)
  every_family = dataclasses.replace(SPEC, num_classes=synthetic_parts.MAX_CLASSES)
  for _ in range(200):
    color = np.clip(synthetic_parts._clutter_color(rng, every_family), 0, 1)
    assert colorsys.rgb_to_hsv(*color)[1] <= 0.45 + 1e-6


def test_pretraining_classes_hold_every_body_with_every_part():
  table = synthetic_parts.pretrain_classes(3)
  assert len(table) == len(set(table)) == 27
  # the segmentation classes first, in order; then bodies with another family's part
  assert table[:9] == tuple((k // 3, k) for k in range(9))
  assert all(synthetic_parts.family(p) != f for f, p in table[9:])
  spec = synthetic_parts.PartsPretrainSpec(image_size=64, train_size=30, val_size=3)
  a = synthetic_parts.generate_pretrain_example(spec, 'train', 13)
  assert a['label'] == 13 and a['image'].shape == (64, 64, 3)
  assert _digest(a) == _digest(synthetic_parts.generate_pretrain_example(spec, 'train', 13))
  with pytest.raises(ValueError, match='families'):
    synthetic_parts.PartsPretrainSpec(num_classes=10)


def test_build_stores_the_part_mask(tmp_path):
  spec = synthetic_parts.PartsSpec(image_size=48, train_size=5, val_size=2)
  loaded = synthetic_parts.load_sources(spec, str(tmp_path))
  for split, source in loaded.items():
    assert len(source) == spec.split_size(split)
    for i in range(len(source)):
      record, expected = source[i], synthetic_parts.generate_example(spec, split, i)
      for key in ('image', 'mask', 'part_mask', 'saliency', 'labels'):
        np.testing.assert_array_equal(record[key], expected[key])
  assert 'cows_synthetic_parts' in synthetic_parts.build(spec, str(tmp_path))


def test_part_body_recall_on_a_hand_made_example():
  # class 1 (mask value 2) fills columns 0..5 of a 4 x 8 image, its part columns 4..5.
  mask = np.zeros((4, 8), np.uint8)
  mask[:, :6] = 2
  mask[0, 0] = 255  # ignored
  part = np.zeros_like(mask)
  part[:, 4:6] = 2
  cam = np.zeros((1, 4, 8))
  cam[0, :, 4:6] = 1.0  # the whole part
  cam[0, :2, 3] = 0.6  # 2 of the 15 body pixels, at 0.6 of the peak
  cam[0, :, 6] = 0.9  # background
  out = map_metrics.part_body_recall([(cam, np.array([1]), mask, part)], (0.5, 0.7), 3)
  assert [r['threshold'] for r in out] == [0.5, 0.7]
  assert out[0]['part_recall'] == 1.0 and out[0]['body_recall'] == pytest.approx(2 / 15)
  assert out[1]['part_recall'] == 1.0 and out[1]['body_recall'] == 0.0
  assert np.isnan(out[0]['part_recall_per_class'][0])  # class 0 is absent
  # a map of another class over the part takes its pixels
  other = np.zeros((1, 4, 8))
  other[0, :, 5] = 1.0
  weaker = cam.copy()
  weaker[0, :, 5] = 0.8
  two = map_metrics.part_body_recall(
    [(np.concatenate([weaker, other]), np.array([1, 2]), mask, part)], (0.5,), 3
  )
  assert two[0]['part_recall'] == 0.5


def test_parts_config_names_the_world_and_its_backbone(tmp_path):
  cfg = config.load('synthetic:parts')
  cfg.data.data_dir = str(tmp_path)  # nothing made there: the shipped backbone is used.
  assert isinstance(sources.synthetic_spec(cfg), synthetic_parts.PartsSpec)
  assert sources.class_names(cfg) == synthetic_parts.CLASS_NAMES[:9]
  assert cfg.data.image_size >= 112 and cfg.input.size >= 112
  spec = backbones.dataset_spec(cfg)
  assert isinstance(spec, synthetic_parts.PartsPretrainSpec) and spec.num_classes == 27
  where = backbones.location(cfg)
  assert where == os.path.join(backbones.SHIPPED_ROOT, backbones.fingerprint(cfg))
  provenance = json.loads(open(os.path.join(where, 'provenance.json')).read())
  assert (
    '/tmp' not in json.dumps(provenance) and provenance['pretrain']['dataset']['num_classes'] == 27
  )
  # the shipped stand-in's objects are the configured world's (the gate's attempt 18)
  made_on = provenance['pretrain']['dataset']
  assert made_on['fingerprint'] == spec.fingerprint()
  assert (made_on['body_aspect'], made_on['part_offset']) == (2.0, 0.5)
  assert config.finalize(cfg).model.init_from == where


def test_parts_gate_on_parts_tiny_reports_the_sweep_and_resumes(tmp_path, capsys):
  """The gate's command (tools/parts_gate.py) on synthetic:parts,tiny_pretrained: from the
  world's stand-in backbone, as the gate runs: the backbone made first (none exists), variant 1's
  classifier, its CAMs, the recall sweep; the figures at the best threshold and the verdict
  follow from the sweep, and a rerun reuses the finished stages and reports the same."""
  args = [
    '--config',
    'synthetic:parts,tiny_pretrained',
    '--workdir',
    str(tmp_path / 'gate'),
    f'data.data_dir={tmp_path / "data"}',
    'classify.epochs=1',
    'classify.lr_decay_epochs=[]',
    'localize.after_epochs=1',
  ]
  result = parts_gate.main(args)
  cfg = config.load('synthetic:parts,tiny_pretrained')
  cfg.data.data_dir = str(tmp_path / 'data')
  assert os.path.isfile(os.path.join(backbones.weights_dir(cfg), 'provenance.json'))
  assert [r['threshold'] for r in result['sweep']] == list(cfg.evaluate.cam_thresholds)
  best = max(result['sweep'], key=lambda r: r['miou'])
  assert (result['best_bg_threshold'], result['cam_miou']) == (best['threshold'], best['miou'])
  assert (result['part_recall'], result['body_recall']) == (
    best['part_recall'],
    best['body_recall'],
  )
  assert all(0 <= r['part_recall'] <= 1 and 0 <= r['body_recall'] <= 1 for r in result['sweep'])
  assert len(result['part_recall_per_class']) == cfg.data.num_classes
  assert result['passed'] == (
    result['part_recall'] >= 0.8 and result['body_recall'] <= 0.3 and best['threshold'] <= 0.5
  )
  occluded = result['raw_cam_means']
  assert occluded['objects'] > 0 and all(
    v is not None and np.isfinite(v) for v in occluded.values()
  )
  by_distance = result['body_cam_by_distance']
  assert [r['cells'] for r in by_distance] == sorted({r['cells'] for r in by_distance})
  assert all(r['body_cells'] > 0 and np.isfinite(r['body_over_part']) for r in by_distance)
  saved = json.loads((tmp_path / 'gate' / 'reports' / 'parts_gate.json').read_text())
  assert saved == json.loads(json.dumps(result))
  capsys.readouterr()
  assert parts_gate.main(args) == result
  assert 'part_recall' in capsys.readouterr().out


@pytest.mark.parametrize(
  'override, message',
  [
    ('data.nosuch=1', "unknown config field 'data.nosuch'"),
    ('nosuch.x=1', "unknown config field 'nosuch.x'"),
    ('data.num_classes=10', 'data.num_classes must be a multiple of 3'),
    ('data.body_aspect=5', 'data.body_aspect'),
    ('pretrain.num_classes=10', 'pretrain.num_classes must be families^2 x 3'),
  ],
)
def test_parts_gate_names_a_bad_override_in_one_line(tmp_path, capsys, override, message):
  """Before anything runs or is made, as `cows-jax ablate` does."""
  with pytest.raises(SystemExit) as exit_:
    parts_gate.main(['--workdir', str(tmp_path / 'gate'), override])
  assert exit_.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert message in err[-1] and 'Traceback' not in '\n'.join(err)
  assert not (tmp_path / 'gate').exists()


def test_paint_over_parts_replaces_only_part_pixels_by_the_body_median():
  record = synthetic_parts.generate_example(SPEC, 'train', 3)
  image, mask, parts = record['image'], record['mask'], record['part_mask']
  painted = parts_gate.paint_over_parts(image, mask, parts)
  np.testing.assert_array_equal(painted[parts == 0], image[parts == 0])
  for k in np.unique(parts[parts > 0]):
    body = (mask == k) & (parts != k)
    want = np.median(image[body], axis=0).round()
    assert (painted[parts == k] == want).all()
