"""List-file and folder-per-class layouts for any class list (LID-style data, extra images)."""

import os

import data_fixtures as fx
import numpy as np
import pytest

from cows_jax.data import image_lists, sources, voc

WNIDS = ('n01443537', 'n01503061', 'n02084071')


def _lid(tmp_path, train_lines=None):
  """A 3-class ILSVRC-style set: class list, train list with ids and keys, val with masks."""
  base = tmp_path / 'lid'
  fx.write_list(str(base / 'classes.txt'), [f'{w} class {k}' for k, w in enumerate(WNIDS)])
  for k, rel in enumerate(['train/a/1.JPEG', 'train/b/2.JPEG', 'train/3.jpg', 'val/4.jpg']):
    fx.write_jpeg(str(base / 'images' / rel), k)
  fx.write_list(
    str(base / 'train.txt'),
    train_lines or ['train/a/1.JPEG 0 2', 'train/b/2.JPEG n01503061', '', 'train/3 1'],
  )
  fx.write_list(str(base / 'val.txt'), ['val/4.jpg'])
  mask = np.zeros((fx.H, fx.W), np.uint8)
  mask[5:10, 5:10] = 3
  fx.write_palette_png(str(base / 'masks' / 'val' / '4.png'), mask)
  names = image_lists.read_class_list(str(base / 'classes.txt'))
  return image_lists.ListLayout(
    class_names=names,
    image_root=str(base / 'images'),
    lists=(('train', str(base / 'train.txt')), ('val', str(base / 'val.txt'))),
    mask_dir=str(base / 'masks'),
    masked_splits=('val',),
  )


def test_list_layout_with_ids_names_and_masks(tmp_path):
  splits = image_lists.load(_lid(tmp_path), str(tmp_path / 'built'), 0.0)
  train, val = splits['train'], splits['val']
  assert [train[i]['id'] for i in range(3)] == ['train__a__1', 'train__b__2', 'train__3']
  np.testing.assert_array_equal(train.labels(), [[1, 0, 1], [0, 1, 0], [0, 1, 0]])
  assert (train[0]['mask'] == 255).all()  # no masks for the train split
  assert val[0]['id'] == 'val__4' and val[0]['labels'].tolist() == [0, 0, 1]  # from the mask
  assert set(np.unique(val[0]['mask'])) == {0, 3}


@pytest.mark.parametrize(
  'line,match',
  [
    ('train/a/1.JPEG zebra', r"train.txt:1: class name 'zebra' is not in the class list"),
    ('train/a/1.JPEG 3', r'train.txt:1: class id 3 outside 0..2'),
  ],
)
def test_bad_class_in_a_list_is_an_error_naming_file_and_line(tmp_path, line, match):
  with pytest.raises(ValueError, match=match):
    image_lists.load(_lid(tmp_path, [line]), str(tmp_path / 'built'), 0.0)


def test_list_bad_lines_skip_missing_images_and_empty_label_sets(tmp_path):
  layout = _lid(tmp_path, ['train/a/1.JPEG 0', 'train/missing.jpg 1', 'train/b/2.JPEG'])
  train = image_lists.load(layout, str(tmp_path / 'built'), 0.7)['train']
  assert len(train) == 1
  reasons = {os.path.basename(path): reason for _, path, reason in train.metadata['skipped']}
  assert reasons['missing.jpg'].startswith('missing image; listed in')
  assert reasons['train.txt:3'] == 'empty label set'


def test_missing_list_file_and_class_list_are_errors(tmp_path):
  layout = _lid(tmp_path)
  os.remove(layout.lists[1][1])
  with pytest.raises(FileNotFoundError, match='list file .*val.txt not found'):
    image_lists.load(layout, str(tmp_path / 'built'), 0.0)
  with pytest.raises(FileNotFoundError, match='class list .*nothing.txt not found'):
    image_lists.read_class_list(str(tmp_path / 'nothing.txt'))


def test_folder_per_class_maps_names_to_class_ids(tmp_path):
  root = fx.make_class_folders(str(tmp_path / 'extra'), per_class=2, classes=('dog', 'cat'))
  (tmp_path / 'extra' / 'dog' / 'notes.txt').write_text('not an image')
  layout = image_lists.FolderLayout(voc.CLASS_NAMES, root)
  train = image_lists.load(layout, str(tmp_path / 'built'), 0.0)['train']
  assert [train[i]['id'] for i in range(4)] == ['cat__0', 'cat__1', 'dog__0', 'dog__1']
  assert [int(np.flatnonzero(train[i]['labels'])[0]) for i in range(4)] == [
    voc.CLASS_NAMES.index('cat')
  ] * 2 + [voc.CLASS_NAMES.index('dog')] * 2


def test_folder_with_an_unknown_class_name_is_an_error(tmp_path):
  root = fx.make_class_folders(str(tmp_path / 'extra'), classes=('dog', 'dinosaur'))
  with pytest.raises(ValueError, match="dinosaur: folder name 'dinosaur' is not a class name"):
    image_lists.FolderLayout(voc.CLASS_NAMES, root).entries()
  with pytest.raises(FileNotFoundError, match='image folder root .*nowhere not found'):
    image_lists.FolderLayout(voc.CLASS_NAMES, str(tmp_path / 'nowhere')).entries()


def test_lid20_config_reads_the_list_layout(tmp_path):
  from cows_jax.configs import lid20

  layout = _lid(tmp_path)
  cfg = lid20.get_config()
  cfg.data.num_classes = 3
  cfg.data.lists.class_list = str(tmp_path / 'lid' / 'classes.txt')
  cfg.data.lists.image_root, cfg.data.lists.mask_dir = layout.image_root, layout.mask_dir
  cfg.data.lists.train, cfg.data.lists.val = layout.lists[0][1], layout.lists[1][1]
  cfg.data.data_dir = str(tmp_path / 'built')
  data = sources.load(cfg)
  assert (len(data['train']), len(data['val'])) == (3, 1)
  assert sources.class_names(cfg) == WNIDS
  cfg.data.num_classes = 200
  with pytest.raises(ValueError, match="data.num_classes=200 but dataset 'image_lists' has 3"):
    sources.load(cfg)
