"""The whole pipeline on a tiny synthetic dataset through the CLI's stage runner, then the
stage-input errors a user meets when running stages out of order."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from tolerances import float32_sums

from cows_jax import cli, evaluate, predict, run_dir


def test_tiny_pipeline_end_to_end(tiny_run):
  tiny_config, workdir = tiny_run
  summary = json.load(open(os.path.join(workdir, 'reports', 'summary.json')))
  for key in (
    'cam_miou',
    'pseudo_label_miou',
    'segmentation_miou',
    'segmentation_miou_crf',
    'fully_supervised_miou',
    'fully_supervised_miou_crf',
    'all_background_miou',
  ):
    assert 0.0 <= summary[key] <= 100.0, (key, summary[key])
  # The CAM sweep's best threshold is flagged when it sits at an end of the sweep.
  ends = (min(tiny_config.evaluate.cam_thresholds), max(tiny_config.evaluate.cam_thresholds))
  assert summary['cam_bg_threshold_at_edge'] == (summary['cam_bg_threshold'] in ends)
  floor = summary['all_background_miou']
  below = [k for k in ('segmentation', 'fully_supervised') if summary[k + '_miou'] < floor]
  assert [k for k in summary['below_all_background'] if not k.endswith('_crf')] == below
  ids = json.load(open(os.path.join(workdir, 'pseudo_labels', 'index.json')))['ids']
  assert len(ids) == tiny_config.data.train_size
  label = run_dir.read_label_png(os.path.join(workdir, 'pseudo_labels', 'index', ids[0] + '.png'))
  assert label.shape == (tiny_config.data.image_size,) * 2
  assert set(np.unique(label)) <= set(range(tiny_config.data.num_classes + 1)) | {255}
  palette = Image.open(os.path.join(workdir, 'pseudo_labels', 'palette', ids[0] + '.png'))
  assert palette.mode == 'P'
  table = open(os.path.join(workdir, 'reports', 'per_class_iou.md')).read()
  assert 'background' in table and 'mIoU' in table
  assert 'fully supervised + CRF (val)' in table
  for name in ('train_pipeline.png', 'val_predictions.png', 'confusion_matrix.png'):
    assert os.path.isfile(os.path.join(workdir, 'reports', name))

  # predict-split: VOC-format palette PNGs of class indices, one per image, original sizes.
  out = predict.write_split(tiny_config, workdir, 'val')
  pngs = sorted(os.listdir(out))
  assert len(pngs) == tiny_config.data.val_size
  with Image.open(os.path.join(out, pngs[0])) as png:
    assert png.mode == 'P' and png.size == (tiny_config.data.image_size,) * 2
  with pytest.raises(ValueError, match="--split='test' is not a split"):
    predict.write_split(tiny_config, workdir, 'test')

  # Rerunning skips every stage and leaves the outputs as they were.
  before = os.path.getmtime(os.path.join(workdir, 'maps', 'index.json'))
  cli.run_stage('localize', tiny_config, workdir)
  assert os.path.getmtime(os.path.join(workdir, 'maps', 'index.json')) == before

  # The features' temporary store is gone.
  assert not [f for f in os.listdir(os.path.join(workdir, 'maps')) if f.startswith('.')]

  # A missing map file is reported by name with the command that makes it ...
  map_path = os.path.join(workdir, 'maps', ids[0] + '.npz')
  expected = run_dir.load_maps(map_path)
  os.remove(map_path)
  with pytest.raises(ValueError, match='cows-jax localize'):
    evaluate.run(tiny_config, workdir)
  # ... and an interrupted localize (no index yet) makes only the missing one, the same.
  os.remove(run_dir.RunDir(workdir).maps_index())
  cli.run_stage('localize', tiny_config, workdir)
  # The image's features now come from another batch: float32 sums in other orders through
  # the backbone (~1e4 terms) of maps up to 255, then stored as float16, where values that
  # close may round to neighbouring float16 numbers, 2^-10 of the value apart.
  maps_again, classes_again = run_dir.load_maps(map_path)
  np.testing.assert_array_equal(classes_again, expected[1])
  np.testing.assert_allclose(maps_again, expected[0], rtol=2**-10, atol=float32_sums(1e4, 255))


@pytest.mark.parametrize(
  'stage,missing',
  [('localize', 'classify'), ('label', 'localize'), ('segment', 'label'), ('evaluate', 'label')],
)
def test_stage_without_its_inputs_names_the_command(tiny_config, tmp_path, stage, missing):
  with pytest.raises(FileNotFoundError, match=f'cows-jax {missing}'):
    cli.run_stage(stage, tiny_config, str(tmp_path / 'empty'))


def _event_tags(directory) -> set[str]:
  """Summary tags in the TensorBoard event files of a directory (TFRecord framing: length,
  its crc, an Event proto, its crc)."""
  import struct

  from tensorboardX.proto import event_pb2

  tags = set()
  for name in os.listdir(directory):
    data = open(os.path.join(directory, name), 'rb').read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      tags |= {v.tag for v in event.summary.value}
      pos += 12 + length + 4
  return tags


def test_tensorboard_summaries_beside_the_logs(tiny_run):
  _, workdir = tiny_run
  board = os.path.join(workdir, 'tensorboard')
  assert {'loss', 'coattention', 'contrastive', 'learning_rate', 'steps_per_sec'} <= _event_tags(
    os.path.join(board, 'classify')
  )
  assert {'loss', 'learning_rate'} <= _event_tags(os.path.join(board, 'segment'))
  evaluate_tags = _event_tags(os.path.join(board, 'evaluate'))
  assert {'train_pipeline', 'val_predictions', 'confusion_matrix', 'segmentation_miou'} <= (
    evaluate_tags
  )
