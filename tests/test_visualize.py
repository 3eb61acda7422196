"""Label PNG round trips, atomic writes, palette, grid layout and the IoU table."""

import os

import numpy as np
import pytest
from PIL import Image

from cows_jax.run_dir import read_label_png, save_label_png, save_png
from cows_jax.visualize import colorize, heatmap, make_grid, per_class_iou_markdown, voc_palette

LABEL = np.array([[0, 1, 2], [15, 20, 255]], np.uint8)


def test_voc_palette_known_entries():
  pal = voc_palette()
  assert pal.shape == (256, 3) and pal.dtype == np.uint8
  np.testing.assert_array_equal(
    pal[[0, 1, 2, 3, 4, 15, 255]],
    [
      [0, 0, 0],
      [128, 0, 0],
      [0, 128, 0],
      [128, 128, 0],
      [0, 0, 128],
      [192, 128, 128],
      [224, 224, 192],
    ],
  )


@pytest.mark.parametrize('palette, mode', [(True, 'P'), (False, 'L')])
def test_label_png_round_trip_gives_indices(tmp_path, palette, mode):
  path = tmp_path / 'sub' / 'a.png'
  save_label_png(path, LABEL, palette=palette)
  with Image.open(path) as im:
    assert im.mode == mode
  out = read_label_png(path)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, LABEL)
  assert os.listdir(path.parent) == ['a.png']


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
  save_label_png(tmp_path / 'a.png', LABEL)

  def broken_save(self, fp, format=None, **params):
    fp.write(b'partial')
    raise OSError('disk full')

  monkeypatch.setattr(Image.Image, 'save', broken_save)
  with pytest.raises(OSError, match='disk full'):
    save_label_png(tmp_path / 'a.png', np.zeros((2, 3), np.uint8))
  monkeypatch.undo()
  assert os.listdir(tmp_path) == ['a.png']
  np.testing.assert_array_equal(read_label_png(tmp_path / 'a.png'), LABEL)


def test_read_label_png_errors_name_the_file(tmp_path):
  bad = tmp_path / 'bad.png'
  bad.write_bytes(b'not a png')
  with pytest.raises(OSError, match='bad.png'):
    read_label_png(bad)
  rgb = tmp_path / 'rgb.png'
  save_png(rgb, np.zeros((2, 2, 3), np.uint8))
  with pytest.raises(ValueError, match='rgb.png'):
    read_label_png(rgb)


def test_colorize_and_heatmap():
  np.testing.assert_array_equal(colorize(LABEL)[1, 2], [224, 224, 192])
  hm = heatmap(np.array([[0.0, 0.5, 1.0, 2.0]]))
  np.testing.assert_array_equal(hm[0], [[0, 0, 128], [128, 255, 128], [128, 0, 0], [128, 0, 0]])
  blended = heatmap(np.array([[1.0]]), image=np.full((1, 1, 3), 100, np.uint8), alpha=0.5)
  np.testing.assert_array_equal(blended[0, 0], [114, 50, 50])


def test_grid_shape():
  im = np.zeros((8, 10, 3), np.uint8)
  grid = make_grid([[im, im, im], [im, im]], gap=2)
  assert grid.shape == (2 * 8 + 2, 3 * 10 + 2 * 2, 3)
  assert (grid[8:10] == 255).all()  # the gap between rows
  titled = make_grid([[im, np.zeros((12, 4, 3), np.uint8)]], titles=['image', 'CAM'], gap=2)
  assert titled.shape[1] == 2 * 10 + 2 and titled.shape[0] > 12


def test_per_class_iou_markdown():
  table = per_class_iou_markdown(
    ['background', 'aeroplane', 'bicycle'],
    {'CAM': np.array([0.8, 0.5, np.nan]), 'pseudo label': np.array([0.9, 0.6, 0.3])},
  )
  assert table == (
    '| class | CAM | pseudo label |\n'
    '|---|---:|---:|\n'
    '| background | 80.0 | 90.0 |\n'
    '| aeroplane | 50.0 | 60.0 |\n'
    '| bicycle | - | 30.0 |\n'
    '| mIoU | 65.0 | 60.0 |\n'
  )
