"""VOC 2012 builder on tiny fixtures in the real formats: both augmented-set layouts, splits
and labels, saliency, and every bad input of issue 4 with a hand-made bad file."""

import logging
import os
import re
import shutil

import data_fixtures as fx
import numpy as np
import pytest

from cows_jax.data import voc


def _layout(base, aug='seg_class_aug', **kw):
  return voc.VocLayout(
    manual_dir=str(base), aug_layout=aug, saliency_dir=str(base / 'saliency'), **kw
  )


def _load(base, tmp_path, aug='seg_class_aug', max_skipped=0.5, **kw):
  return voc.load(_layout(base, aug, **kw), str(tmp_path / 'built'), max_skipped)


@pytest.mark.parametrize('aug', ['seg_class_aug', 'sbd'])
def test_both_augmented_layouts_give_the_same_splits(tmp_path, aug):
  base = tmp_path / 'voc'
  fx.make_voc(str(base), aug)
  splits = _load(base, tmp_path, aug)
  assert {s: len(v) for s, v in splits.items()} == {'train': 3, 'val': 2, 'train_aug': 6, 'test': 2}
  train_aug = splits['train_aug']
  assert [train_aug[i]['id'] for i in range(6)] == fx.TRAIN_AUG
  for i, image_id in enumerate(fx.TRAIN_AUG):
    record = train_aug[i]
    assert record['image'].shape == (fx.H, fx.W, 3) and record['image'].dtype == np.uint8
    assert sorted(np.flatnonzero(record['labels'])) == sorted(fx.classes_of(image_id))
    # Palette PNG, grayscale PNG and SBD .mat all decode to class ids, not colours.
    expected = fx.mask_of(image_id)
    if aug == 'sbd' and image_id in fx.SBD_ONLY:
      expected = np.where(expected == 255, 0, expected)
    np.testing.assert_array_equal(record['mask'], expected)
    assert record['saliency'].shape == (fx.H, fx.W)
  assert train_aug.labels().sum(0).min() >= 1  # the labels-only read covers all 20 classes
  np.testing.assert_array_equal(
    train_aug.labels(), np.stack([train_aug[i]['labels'] for i in range(6)])
  )
  # val: masks, no saliency; test: labels from the XML where present, no mask.
  assert splits['val'][0]['saliency'].shape == (0, 0)
  test = splits['test']
  assert [voc.CLASS_NAMES[c] for c in np.flatnonzero(test[0]['labels'])] == ['dog', 'person']
  assert not test[1]['labels'].any()
  assert (test[0]['mask'] == 255).all()


def test_sbd_train_aug_excludes_voc_val(tmp_path):
  base = tmp_path / 'voc'
  fx.make_voc(str(base), 'sbd')
  entries = _layout(base, 'sbd').entries()['train_aug']
  assert [e.id for e in entries] == fx.TRAIN_AUG  # SBD val's VOC-val image left out
  masks = {e.id: os.path.basename(e.mask) for e in entries}
  assert masks[fx.VOC_TRAIN[0]].endswith('.png') and masks[fx.SBD_ONLY[0]].endswith('.mat')


def test_manual_dir_may_be_voc2012_itself_and_a_rebuild_follows_list_changes(tmp_path):
  base = tmp_path / 'voc'
  root = fx.make_voc(str(base))
  a = voc.VocLayout(manual_dir=root, aug_layout='none')
  assert set(a.entries()) == {'train', 'val', 'test'}
  first = voc.load(a, str(tmp_path / 'built'), 0.0)
  fx.write_list(os.path.join(root, 'ImageSets', 'Segmentation', 'val.txt'), fx.VOC_VAL[:1])
  second = voc.load(a, str(tmp_path / 'built'), 0.0)
  assert len(first['val']) == 2 and len(second['val']) == 1


@pytest.mark.parametrize(
  'remove,match',
  [
    ('', 'data.manual_dir is not set'),
    ('VOCdevkit', 'no VOC 2012 layout found'),
    ('VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt', 'split list .*val.txt not found'),
    ('VOCdevkit/VOC2012/SegmentationClassAug', 'SegmentationClassAug directory .* not found'),
    (
      'VOCdevkit/VOC2012/ImageSets/SegmentationAug/train_aug.txt',
      'split list .*train_aug.txt not found',
    ),
    ('saliency', 'saliency directory .* not found'),
  ],
)
def test_missing_directory_or_list_is_an_error_naming_it(tmp_path, remove, match):
  base = tmp_path / 'voc'
  fx.make_voc(str(base))
  path = base / remove
  if path.is_dir():
    shutil.rmtree(path)
  elif remove:
    path.unlink()
  layout = _layout(base) if remove else voc.VocLayout(manual_dir='')
  with pytest.raises((FileNotFoundError, ValueError), match=match):
    voc.load(layout, str(tmp_path / 'built'), 0.5)
  assert not (tmp_path / 'built').exists()


def _break(base, what):
  """Spoils one train_aug image; returns (id, file, reason pattern)."""
  root = base / 'VOCdevkit' / 'VOC2012'
  victim = fx.VOC_TRAIN[1]
  aug_mask = root / 'SegmentationClassAug' / (victim + '.png')
  if what == 'missing image':
    fx.write_list(
      str(root / 'ImageSets' / 'SegmentationAug' / 'train_aug.txt'), fx.TRAIN_AUG + ['2010_999999']
    )
    return '2010_999999', root / 'JPEGImages' / '2010_999999.jpg', 'missing image'
  if what == 'truncated jpeg':
    image = root / 'JPEGImages' / (victim + '.jpg')
    image.write_bytes(image.read_bytes()[:300])
    return victim, image, 'corrupt or truncated image'
  if what == 'mask size':
    fx.write_gray_png(str(aug_mask), np.zeros((fx.H + 2, fx.W), np.uint8))
    return victim, aug_mask, r'mask is 32x26, its image .* 32x24'
  if what == 'mask values':
    mask = fx.mask_of(victim)
    mask[0, 0] = 30
    fx.write_gray_png(str(aug_mask), mask)
    return victim, aug_mask, r'mask values \[30\] outside the class ids 0..20 and 255'
  if what == 'empty label set':
    fx.write_gray_png(str(aug_mask), np.zeros((fx.H, fx.W), np.uint8))
    return victim, aug_mask, 'empty label set'
  if what == 'rgb mask':
    fx.write_jpeg(str(aug_mask.with_suffix('.tmp.png')), 0)
    os.replace(aug_mask.with_suffix('.tmp.png'), aug_mask)
    return victim, aug_mask, 'mask has mode RGB'
  raise ValueError(what)


BAD = ['missing image', 'truncated jpeg', 'mask size', 'mask values', 'empty label set', 'rgb mask']


@pytest.mark.parametrize('what', BAD)
def test_bad_image_is_skipped_counted_and_reported(tmp_path, what):
  base = tmp_path / 'voc'
  fx.make_voc(str(base))
  image_id, path, reason = _break(base, what)
  train_aug = _load(base, tmp_path)['train_aug']
  ids = [train_aug[i]['id'] for i in range(len(train_aug))]
  assert ids == [i for i in fx.TRAIN_AUG if i != image_id]
  [(skipped_id, skipped_path, skipped_reason)] = train_aug.metadata['skipped']
  assert (skipped_id, skipped_path) == (image_id, str(path))
  assert re.search(reason, skipped_reason), skipped_reason


@pytest.mark.parametrize('what', ['truncated jpeg', 'mask values'])
def test_too_many_bad_images_fail_the_build_and_leave_nothing_complete(tmp_path, what):
  base = tmp_path / 'voc'
  fx.make_voc(str(base))
  _, path, _ = _break(base, what)
  with pytest.raises(ValueError, match=rf"split '\w+': 1 of \d images unusable.*{path}"):
    _load(base, tmp_path, max_skipped=0.1)
  built = tmp_path / 'built' / 'cows_voc'
  assert not any((d / '1.0.0' / 'dataset_info.json').exists() for d in built.iterdir())
  # A larger allowance builds the rest (a fresh build: nothing half-written was kept).
  assert len(_load(base, tmp_path, max_skipped=0.5)['train_aug']) == 5


def test_saliency_of_the_wrong_size_is_resized_with_a_warning(tmp_path, caplog):
  base = tmp_path / 'voc'
  fx.make_voc(str(base))
  path = base / 'saliency' / (fx.TRAIN_AUG[0] + '.png')
  fx.write_gray_png(str(path), np.full((fx.H // 2, fx.W // 2), 200, np.uint8))
  with caplog.at_level(logging.WARNING):
    record = _load(base, tmp_path)['train_aug'][0]
  assert record['saliency'].shape == (fx.H, fx.W) and (record['saliency'] == 200).all()
  assert any(str(path) in r.getMessage() and 'resized' in r.getMessage() for r in caplog.records)


def test_unknown_class_in_an_annotation_is_an_error_naming_the_file(tmp_path):
  base = tmp_path / 'voc'
  root = fx.make_voc(str(base))
  xml = os.path.join(root, 'Annotations', fx.TEST[0] + '.xml')
  fx.write_xml(xml, ['dog', 'unicorn'])
  with pytest.raises(ValueError, match=f"{xml} names classes \\['unicorn'\\]"):
    _load(base, tmp_path)
