"""`cows-jax data check` and one classifier step on the real-data configs, on tiny fixtures."""

import importlib
import json
import os
import subprocess
import sys

import data_fixtures as fx
import pytest

from cows_jax import classify
from cows_jax.configs import voc12, voc12_web
from cows_jax.data import check, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def voc_config(tmp_path):
  fx.make_voc(str(tmp_path / 'voc'))
  cfg = voc12.get_config()
  cfg.data.manual_dir = str(tmp_path / 'voc')
  cfg.data.saliency_dir = str(tmp_path / 'voc' / 'saliency')
  cfg.data.data_dir = str(tmp_path / 'built')
  return cfg


def test_cli_data_check_prints_the_summary_and_exits_zero(voc_config, tmp_path):
  cmd = [
    os.path.join(os.path.dirname(sys.executable), 'cows-jax'),
    'data',
    'check',
    '--config',
    os.path.join(ROOT, 'configs', 'voc12.py'),
  ]
  cmd += [
    f'--config.data.{k}={voc_config.data[k]}' for k in ('manual_dir', 'saliency_dir', 'data_dir')
  ]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout + done.stderr
  out = done.stdout
  assert 'stages: classifier <- train_aug; maps, pseudo labels, segmenter <- train_aug' in out
  assert 'images per class (train_aug): aeroplane 2, bicycle 2' in out
  assert 'mask values (val, 2 images): 0: ' in out and 'no problems found' in out
  row = next(line.split() for line in out.splitlines() if line.startswith('train_aug '))
  assert row[:5] == ['train_aug', '6', '0', '0', '0']  # images, skipped, no saliency, no mask


def test_data_check_fails_on_skipped_files_and_missing_saliency(voc_config, tmp_path, capsys):
  image = tmp_path / 'voc' / 'VOCdevkit' / 'VOC2012' / 'JPEGImages' / (fx.VOC_VAL[0] + '.jpg')
  image.write_bytes(b'not a jpeg')
  voc_config.data.saliency_dir = ''
  voc_config.data.max_skipped_fraction = 0.5
  assert check.run(voc_config) == 1
  out = capsys.readouterr().out
  assert f'val: 1 image(s) skipped by the build: {image}: corrupt or truncated image' in out
  assert 'train_aug: ~6 image(s) without a saliency map but label.use_saliency=True' in out
  voc_config.label.use_saliency = False
  voc_config.data.eval_split = 'test'
  assert check.run(voc_config) == 1
  assert 'test: ~2 image(s) without a ground-truth mask' in capsys.readouterr().out


def test_data_check_names_a_split_that_does_not_exist(voc_config):
  voc_config.data.voc.aug_layout = 'none'
  with pytest.raises(ValueError, match="data.classify_split='train_aug' is not a split"):
    check.run(voc_config)


def test_one_classifier_step_on_voc_with_web_images(tmp_path):
  """configs/voc12_web.py:runlocal on the fixture, robust mixing: one step, a checkpoint."""
  fx.make_voc(str(tmp_path / 'voc'))
  fx.make_class_folders(str(tmp_path / 'web'))
  cfg = voc12_web.get_config('runlocal')
  cfg.data.manual_dir = str(tmp_path / 'voc')
  cfg.data.data_dir = str(tmp_path / 'built')
  cfg.data.extra.root = str(tmp_path / 'web')
  cfg.data.extra.mixing = 'clean_partners'
  cfg.data.image_size, cfg.input.size = 32, 32
  pool = sources.classifier_pool(cfg)
  assert pool.plan.epoch_length == 6 + 3 and len(pool.source) == 6 + 20
  cfg.classify.epochs, cfg.classify.lr_decay_epochs, cfg.localize.after_epochs = 1, (), 1
  cfg.classify.batch_pairs, cfg.classify.log_every_steps = 9, 1
  classify.train(cfg, str(tmp_path / 'run'))
  assert os.path.isdir(tmp_path / 'run' / 'classifier' / '1')
  with open(tmp_path / 'run' / 'logs' / 'classify.jsonl') as f:
    [logged] = [json.loads(line) for line in f]
  assert logged['step'] == 1 and logged['loss'] > 0


@pytest.mark.parametrize('name', ['voc12', 'voc12_single_label', 'voc12_web', 'lid20'])
def test_configs_take_runlocal_and_nothing_else(name):
  module = importlib.import_module(f'cows_jax.configs.{name}')
  full, local = module.get_config(), module.get_config('runlocal')
  assert full.data.max_per_split == 0 and local.data.max_per_split > 0
  assert local.model.width < full.model.width and local.input.size < full.input.size
  with pytest.raises(ValueError, match=f"configs/{name}.py: unknown config argument 'fast'"):
    module.get_config('fast')


def test_stages_see_a_sample_of_resized_records(voc_config):
  voc_config.data.max_per_split, voc_config.data.image_size = 4, 16
  train = sources.load(voc_config)['train']
  assert len(train) == 4 and [train[i]['id'] for i in range(4)] == [
    fx.TRAIN_AUG[i] for i in (0, 2, 3, 5)
  ]
  record = train[1]
  assert record['image'].shape == (16, 16, 3) and record['mask'].shape == (16, 16)
  assert record['saliency'].shape == (16, 16)
  assert sources.all_labels(train)[1].tolist() == record['labels'].tolist()
