"""The paper's data settings in the synthetic world: the extra splits (single-label images,
web images with wrong labels), the extra layout that reads them, and `ablate --settings`."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cows_jax import ablate, classify, config, run_dir, validation
from cows_jax.data import sources, synthetic

SPEC = synthetic.SyntheticSpec(
  image_size=48, train_size=32, val_size=8, single_label_size=6, web_size=10
)
GEN = synthetic.SyntheticSpec(image_size=48)  # default split sizes, for generate_example


def _digest(example: dict) -> str:
  h = hashlib.sha256()
  for key in sorted(example):
    h.update(key.encode())
    h.update(example[key].tobytes())
  return h.hexdigest()[:16]


def test_train_and_val_unchanged_by_the_extra_splits():
  """Digests and fingerprints computed before the extra splits existed (commit 5d84648)."""
  before = {
    ('train', 0): 'cf5c91ab3e931204',
    ('train', 1): '0e962809ee5ec269',
    ('train', 2): 'ba6b1557c201255d',
    ('val', 0): 'e3a591a596953d23',
    ('val', 7): '6474c081bfb0654c',
  }
  for (split, index), digest in before.items():
    assert _digest(synthetic.generate_example(SPEC, split, index)) == digest, (split, index)
  # the train/val build keeps its name, whatever the extra splits' fields
  assert SPEC.fingerprint() == '098e777d4f2f'
  assert synthetic.SyntheticSpec().fingerprint() == 'fa470677fec0'
  # each extra split's build depends on its own fields only
  other_web = dataclasses.replace(SPEC, web_noise_rate=0.5)
  assert other_web.fingerprint() == SPEC.fingerprint()
  assert other_web.fingerprint(('single_label',)) == SPEC.fingerprint(('single_label',))
  assert other_web.fingerprint(('web',)) != SPEC.fingerprint(('web',))


def test_single_label_split_holds_one_object_on_a_plain_background():
  for i in range(30):
    example = synthetic.generate_example(GEN, 'single_label', i)
    classes = set(np.unique(example['mask'])) - {0, 255}
    assert example['labels'].sum() == 1 and classes == {np.flatnonzero(example['labels'])[0] + 1}

  # plainer: no clutter and a smoother field than train's (mean gradient magnitude)
  def roughness(split):
    images = [synthetic.generate_example(GEN, split, i)['image'] for i in range(20)]
    return np.mean([np.abs(np.diff(im.astype(float), axis=0)).mean() for im in images])

  assert roughness('single_label') < 0.8 * roughness('train')


def test_web_split_labels_are_wrong_at_the_stated_rate():
  spec = synthetic.SyntheticSpec(image_size=32, web_size=200, web_noise_rate=0.3)
  examples = [synthetic.generate_example(spec, 'web', i) for i in range(200)]
  wrong = [not np.array_equal(e['labels'], e['true_labels']) for e in examples]
  assert abs(np.mean(wrong) - 0.3) < 0.1  # 3 standard deviations of a 200-image rate
  for e, w in zip(examples, wrong):
    assert e['labels'].sum() == e['true_labels'].sum()  # as many labels as the image holds
    if w:  # every wrong label names a class the image lacks
      assert not np.any(e['labels'] & e['true_labels'])
    assert set(np.unique(e['mask'])) - {0, 255} == set(np.flatnonzero(e['true_labels']) + 1)
  clean = synthetic.SyntheticSpec(image_size=32, web_size=20, web_noise_rate=0.0)
  for i in range(20):
    e = synthetic.generate_example(clean, 'web', i)
    assert np.array_equal(e['labels'], e['true_labels'])


def test_extra_splits_are_deterministic_and_new_images():
  for split in synthetic.EXTRA_SPLITS:
    a, b = (synthetic.generate_example(SPEC, split, 3) for _ in range(2))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a['image'], synthetic.generate_example(SPEC, 'train', 3)['image'])
  with pytest.raises(IndexError):
    synthetic.generate_example(SPEC, 'web', SPEC.web_size)


@pytest.mark.parametrize(
  'kwargs, field',
  [({'web_noise_rate': 1.5}, 'web_noise_rate'), ({'single_label_size': 0}, 'single_label_size')],
)
def test_bad_extra_split_fields_raise_naming_them(kwargs, field):
  with pytest.raises(ValueError, match=field):
    synthetic.SyntheticSpec(**kwargs)


def test_web_split_needs_a_class_each_image_lacks():
  spec = synthetic.SyntheticSpec(num_classes=3, max_objects=3, image_size=32)
  with pytest.raises(ValueError, match='num_classes > max_objects'):
    synthetic.generate_example(spec, 'web', 0)


def test_extra_split_builds_alone_and_matches_the_generator(tmp_path):
  web = synthetic.load_split(SPEC, 'web', str(tmp_path))
  assert len(web) == SPEC.web_size
  assert SPEC.fingerprint(('web',)) in web.build_dir
  for index in (0, SPEC.web_size - 1):
    expected = synthetic.generate_example(SPEC, 'web', index)
    record = web[index]
    assert record['id'] == f'web_{index:06d}'
    for key in ('image', 'mask', 'saliency', 'labels'):
      assert np.array_equal(record[key], expected[key]), key
  assert np.array_equal(web.labels()[0], synthetic.generate_example(SPEC, 'web', 0)['labels'])
  with pytest.raises(ValueError, match='extra split'):
    synthetic.load_split(SPEC, 'train', str(tmp_path))


def _setting_config(tmp_path, arg):
  cfg = config.load(f'synthetic:tiny,{arg}')
  cfg.data.data_dir = str(tmp_path / 'data')
  cfg.data.single_label_size, cfg.data.web_size = 6, 10
  return cfg


def test_config_arguments_set_the_extra_split():
  for arg, split, noisy in (('setting2', 'single_label', False), ('setting3', 'web', True)):
    e = config.load(f'synthetic:{arg}').data.extra
    assert (e.layout, e.split, e.is_noisy_source, e.mixing) == ('split', split, noisy, 'plain')
  assert config.load('synthetic:tiny,setting3').data.train_size == 32
  assert config.load('synthetic').data.extra.layout == 'none'


def test_split_layout_joins_the_classifier_pool(tmp_path):
  cfg = _setting_config(tmp_path, 'setting3')
  extra = sources.load_extra(cfg)['train']
  assert len(extra) == 10 and extra[0]['id'] == 'web_000000'
  pool = sources.classifier_pool(cfg)
  assert len(pool.source) == cfg.data.train_size + 10
  assert pool.noisy.sum() == 10 and pool.noisy[-10:].all()
  assert pool.plan.extra_per_epoch == round(0.25 * cfg.data.train_size)
  single = sources.load_extra(_setting_config(tmp_path, 'setting2'))['train']
  assert len(single) == 6 and (single.labels().sum(1) == 1).all()


@pytest.mark.parametrize(
  'name, split', [('synthetic', 'train'), ('synthetic', 'bogus'), ('voc12', 'web')]
)
def test_split_layout_rejects_a_split_the_dataset_lacks(tmp_path, name, split):
  cfg = _setting_config(tmp_path, 'setting3')
  cfg.data.name, cfg.data.extra.split = name, split
  with pytest.raises(ValueError, match=f"data.extra.split='{split}'") as error:
    sources.load_extra(cfg)
  assert '\n' not in str(error.value)


def _fake_stages(calls: list):
  """The pipeline's stages as stubs: evaluate writes a summary.json whose numbers encode the
  run's setting, variant and seed."""

  def stage(name):
    def run(cfg, workdir):
      calls.append((name, workdir))
      if name == 'evaluate':
        setting = {'none': 1, 'single_label': 2, 'web': 3}[cfg.data.extra.split or 'none']
        full = cfg.localize.method == 'coattention'
        assert cfg.localize.seed == cfg.seed and cfg.segment.supervisions == ('pseudo',)
        summary = {
          'cam_miou': 10.0 * setting + cfg.seed,
          'pseudo_label_miou': 20.0 + full,
          'segmentation_miou': 30.0 + 2 * cfg.seed,
        }
        run_dir.write_json(run_dir.RunDir(workdir).summary(), summary)

    return run

  return {name: stage(name) for name in ('classify', 'localize', 'label', 'segment', 'evaluate')}


def test_settings_runs_every_cell_once_and_tables_mean_and_std(tiny_config, tmp_path):
  calls = []
  workdir = str(tmp_path / 'ablation')
  rows = ablate.run_settings(tiny_config, workdir, _fake_stages(calls), seeds=[0, 2])
  assert len(calls) == 3 * 2 * 2 * 5  # settings x variants x seeds x stages
  assert os.path.isdir(os.path.join(workdir, 'settings', 'setting3', 'seed2', 'full_method'))
  assert [(r['setting'][0], r['variant']) for r in rows] == [
    (s, v) for s in '123' for v in ('CAM baseline', 'full method')
  ]
  web_full = rows[5]
  assert web_full['cam_miou'] == {'mean': 31.0, 'std': pytest.approx(2**0.5), 'values': [30, 32]}
  assert web_full['pseudo_label_miou']['mean'] == 21.0 and web_full['num_seeds'] == 2
  assert 'segmentation_miou_crf' not in web_full  # no run reported it: no column
  table = open(os.path.join(workdir, 'reports', 'settings.md')).read()
  assert table.splitlines()[0].count('|') == 7 and '+ CRF' not in table
  assert (
    '| 3: + noisy web images | full method | 31.0 ± 1.4 | 21.0 ± 0.0 | 32.0 ± 2.8 | 2 |' in table
  )
  saved = json.load(open(os.path.join(workdir, 'reports', 'settings.json')))
  assert saved['rows'] == json.loads(json.dumps(rows)) and 'web images' in saved['notes'][1]
  # finished runs are read back, not redone; a new seed runs only its own cells
  ablate.run_settings(tiny_config, workdir, _fake_stages(calls), seeds=[0, 2, 5])
  assert len(calls) == 60 + 3 * 2 * 5


def test_settings_configs_differ_in_extra_images_variant_and_seed(tiny_config):
  base = config.load('synthetic:tiny,setting2')  # setting 1 drops the config's extra images
  cfgs = {
    (s.slug, v.slug): ablate.settings_config(base, s, v, 7)
    for s in ablate.SETTINGS
    for _, v in ablate.SETTING_VARIANTS
  }
  assert cfgs['setting1', 'baseline_cam'].data.extra.layout == 'none'
  assert cfgs['setting2', 'full_method'].data.extra.split == 'single_label'
  web = cfgs['setting3', 'full_method'].data.extra
  assert (web.layout, web.split, web.is_noisy_source) == ('split', 'web', True)
  assert cfgs['setting3', 'baseline_cam'].localize.method == 'cam'
  assert cfgs['setting3', 'baseline_cam'].classify.loss_weight_coattention == 0.0
  assert all(c.seed == c.localize.seed == 7 and c.data.seed == 0 for c in cfgs.values())


def test_settings_table_marks_one_seed_and_a_missing_value():
  """One seed has no standard deviation; the CRF column is there when some run reported it."""
  rows = [
    {'setting': '1', 'variant': 'v', **ablate.aggregate([{'cam_miou': 12.34}])},
    {'setting': '2', 'variant': 'v', **ablate.aggregate([{'segmentation_miou_crf': 5.0}] * 2)},
  ]
  table = ablate.settings_table(rows, ['a note'])
  assert '+ CRF' in table and 'pseudo-label' not in table
  assert '| 1 | v | 12.3 | – | 1 |' in table and '| 2 | v | – | 5.0 ± 0.0 | 2 |' in table
  assert table.endswith('- a note\n')


@pytest.mark.parametrize(
  'seeds, name, message', [([0, 0], 'synthetic', 'distinct'), ([0], 'voc12', 'data.name')]
)
def test_settings_rejects_bad_seeds_and_real_datasets(tiny_config, tmp_path, seeds, name, message):
  tiny_config.data.name = name
  with pytest.raises(ValueError, match=message):
    ablate.run_settings(tiny_config, str(tmp_path), _fake_stages([]), seeds)


def test_setting3_trains_the_classifier_with_web_images(tmp_path):
  """One real run of the new data path: the tiny classifier on train + noisy web images."""
  cfg = _setting_config(tmp_path, 'setting3')
  cfg.classify.epochs, cfg.classify.lr_decay_epochs, cfg.localize.after_epochs = 1, (), 1
  _, full = ablate.SETTING_VARIANTS[1]
  rcfg = ablate.settings_config(cfg, ablate.SETTINGS[2], full, 0)
  workdir = tmp_path / 'run'
  classify.train(rcfg, str(workdir))
  steps = run_dir.read_json(run_dir.RunDir(workdir).classifier_epochs(), 'classify')
  plan = sources.classifier_plan(rcfg)
  assert plan.num_extra == 10 and plan.extra_per_epoch == 8
  # an epoch holds the 32 train anchors and 8 web ones, in batches of 8 pairs
  assert steps['steps_per_epoch'] == (32 + 8) // rcfg.classify.batch_pairs


def test_cli_settings_flags_reject_bad_seeds_in_one_line(tmp_path):
  exe = os.path.join(os.path.dirname(sys.executable), 'cows-jax')
  args = ['--config', 'synthetic:tiny', '--workdir', str(tmp_path / 'w'), '--seeds=0,x']
  done = subprocess.run(
    [exe, 'ablate', '--settings', *args], capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 1 and 'Traceback' not in done.stderr, done.stderr
  assert '--seeds=0,x: expected comma-separated integers' in done.stderr
  assert not os.path.exists(tmp_path / 'w' / 'settings')  # nothing ran


def test_validation_names_a_bad_extra_split_before_anything_runs():
  cfg = config.load('synthetic:tiny,setting3')
  assert validation.problems(cfg, 'classify') == []
  cfg.data.extra.split = 'webb'
  (problem,) = validation.problems(cfg, 'classify')
  assert problem.startswith("data.extra.split='webb'") and 'single_label, web' in problem


def test_the_table_notes_count_the_images_the_runs_read():
  cfg = config.load('synthetic:tiny')
  assert '32 train, 8 val images' in ablate._settings_notes(cfg, [0])[0]
  cfg.data.max_per_split = 5  # an evenly spaced sample of each split.
  assert '5 train, 5 val images' in ablate._settings_notes(cfg, [0])[0]
