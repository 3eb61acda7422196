"""Tests of the built-in synthetic weakly supervised segmentation dataset."""

import pickle
import shutil

import numpy as np
import pytest

from cows_jax.data import records, synthetic

SMALL = synthetic.SyntheticSpec(image_size=64, train_size=60, val_size=10)


@pytest.fixture(scope='module')
def examples():
  return [synthetic.generate_example(SMALL, 'train', i) for i in range(SMALL.train_size)]


@pytest.mark.parametrize(
  'kwargs, field',
  [
    ({'num_classes': len(synthetic.CLASS_NAMES) + 1}, 'num_classes'),
    ({'num_classes': 0}, 'num_classes'),
    ({'image_size': 16}, 'image_size'),
    ({'image_size': 1024}, 'image_size'),
    ({'train_size': 0}, 'train_size'),
    ({'val_size': 0}, 'val_size'),
    ({'max_objects': 0}, 'max_objects'),
    ({'seed': -1}, 'seed'),
  ],
)
def test_bad_spec_raises_naming_field(kwargs, field):
  with pytest.raises(ValueError, match=field):
    synthetic.SyntheticSpec(**kwargs)


def test_class_names_cover_twelve_classes():
  assert len(synthetic.CLASS_NAMES) >= 12
  assert len(set(synthetic.CLASS_NAMES)) == len(synthetic.CLASS_NAMES)


def test_fingerprint_is_stable_and_field_sensitive():
  assert (
    SMALL.fingerprint()
    == synthetic.SyntheticSpec(image_size=64, train_size=60, val_size=10).fingerprint()
  )
  assert (
    SMALL.fingerprint()
    != synthetic.SyntheticSpec(image_size=64, train_size=60, val_size=11).fingerprint()
  )


def test_generation_is_deterministic_per_seed_split_and_index():
  a = synthetic.generate_example(SMALL, 'train', 3)
  b = synthetic.generate_example(SMALL, 'train', 3)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  other_seed = synthetic.generate_example(
    synthetic.SyntheticSpec(image_size=64, seed=1), 'train', 3
  )
  assert not np.array_equal(a['image'], other_seed['image'])
  assert not np.array_equal(a['image'], synthetic.generate_example(SMALL, 'val', 3)['image'])
  # an example does not depend on the split sizes
  bigger = synthetic.generate_example(
    synthetic.SyntheticSpec(image_size=64, train_size=99), 'train', 3
  )
  assert np.array_equal(a['image'], bigger['image'])


def test_index_out_of_range_raises():
  with pytest.raises(IndexError):
    synthetic.generate_example(SMALL, 'val', SMALL.val_size)
  with pytest.raises(ValueError, match='split'):
    synthetic.generate_example(SMALL, 'test', 0)


def test_example_dtypes_and_shapes(examples):
  for ex in examples:
    assert ex['image'].dtype == np.uint8 and ex['image'].shape == (64, 64, 3)
    assert ex['mask'].dtype == np.uint8 and ex['mask'].shape == (64, 64)
    assert ex['saliency'].dtype == np.uint8 and ex['saliency'].shape == (64, 64)
    assert ex['labels'].dtype == np.uint8 and ex['labels'].shape == (SMALL.num_classes,)


def test_labels_match_visible_mask(examples):
  allowed = set(range(SMALL.num_classes + 1)) | {records.IGNORE_INDEX}
  counts = []
  for ex in examples:
    mask, labels = ex['mask'], ex['labels']
    assert set(np.unique(mask).tolist()) <= allowed
    assert 0 in mask and records.IGNORE_INDEX in mask  # background and boundary band
    for k in range(SMALL.num_classes):
      visible = np.sum(mask == k + 1)
      if labels[k]:
        assert visible >= synthetic.MIN_VISIBLE_FRACTION * mask.size
      else:
        assert visible == 0
    counts.append(int(labels.sum()))
  assert set(counts) == {1, 2, 3}


def test_ignore_band_is_thin(examples):
  ignore = np.mean([np.mean(ex['mask'] == records.IGNORE_INDEX) for ex in examples])
  foreground = np.mean([np.mean((ex['mask'] > 0) & (ex['mask'] < 255)) for ex in examples])
  assert 0 < ignore < 0.5 * foreground


def test_saliency_correlates_with_mask_but_has_errors(examples):
  fg = np.concatenate([ex['saliency'][(ex['mask'] > 0) & (ex['mask'] < 255)] for ex in examples])
  bg = np.concatenate([ex['saliency'][ex['mask'] == 0] for ex in examples])
  assert fg.mean() > bg.mean() + 100
  # errors: some foreground pixels missed, some background pixels strongly salient
  assert np.mean(fg < 64) > 0.03
  assert np.mean(bg > 128) > 0.002


def test_class_appearance_is_distinct(examples):
  means = []
  for k in range(SMALL.num_classes):
    pixels = np.concatenate([ex['image'][ex['mask'] == k + 1] for ex in examples])
    assert len(pixels) > 0, synthetic.CLASS_NAMES[k]
    means.append(pixels.astype(float).mean(axis=0))
  means = np.asarray(means)
  distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
  assert distances[~np.eye(len(means), dtype=bool)].min() > 25


def test_twelve_classes_are_supported():
  spec = synthetic.SyntheticSpec(num_classes=12, image_size=64)
  seen = np.zeros(12, int)
  for i in range(80):
    ex = synthetic.generate_example(spec, 'train', i)
    assert ex['labels'].shape == (12,) and ex['mask'][ex['mask'] != 255].max() <= 12
    seen += ex['labels']
  assert np.all(seen > 0)


TINY = synthetic.SyntheticSpec(image_size=64, train_size=12, val_size=4)


def _assert_matches_generator(sources):
  assert len(sources['train']) == TINY.train_size and len(sources['val']) == TINY.val_size
  for split, index in (('train', 0), ('train', 11), ('val', 3)):
    record = sources[split][index]
    assert record['id'] == f'{split}_{index:06d}'
    expected = synthetic.generate_example(TINY, split, index)
    for key, value in expected.items():
      assert record[key].dtype == np.uint8 and np.array_equal(record[key], value), key


def test_build_and_load_round_trip(tmp_path):
  sources = synthetic.load_sources(TINY, str(tmp_path))
  _assert_matches_generator(sources)
  assert 'RecordSource' in repr(sources['train'])
  assert pickle.loads(pickle.dumps(sources['val']))[1]['id'] == 'val_000001'


def test_build_reuses_complete_dataset(tmp_path, monkeypatch):
  path = synthetic.build(TINY, str(tmp_path))

  def fail(*args):
    raise AssertionError('dataset regenerated instead of reused')

  monkeypatch.setattr(synthetic, 'generate_example', fail)
  assert synthetic.build(TINY, str(tmp_path)) == path
  other = synthetic.SyntheticSpec(image_size=64, train_size=12, val_size=4, seed=5)
  with pytest.raises(AssertionError, match='regenerated'):
    synthetic.build(other, str(tmp_path))  # a different spec never reuses another build


def test_rebuild_after_deletion_and_leftover_incomplete_dir(tmp_path):
  path = synthetic.build(TINY, str(tmp_path))
  shutil.rmtree(path)
  # a half-written build left by an interrupted run must not count as complete
  (tmp_path / 'cows_synthetic' / TINY.fingerprint() / 'incomplete.ABC123_1.0.0').mkdir(parents=True)
  assert synthetic.build(TINY, str(tmp_path)) == path
  _assert_matches_generator(synthetic.load_sources(TINY, str(tmp_path)))
