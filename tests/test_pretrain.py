"""`cows-jax pretrain`: the synthetic pretraining set, BatchNorm folding, and a tiny run whose
backbone the classifier and the VGG16 segmenter load through models/imported.py."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tolerances import FLOAT64

from cows_jax import config, validation
from cows_jax.configs.defaults import FIELDS
from cows_jax.data import synthetic
from cows_jax.imagenet_standin import backbones
from cows_jax.imagenet_standin import dataset as standin_dataset
from cows_jax.imagenet_standin import train as standin_train
from cows_jax.models import fold, from_config, imported
from cows_jax.models.vgg import VGG16LargeFOV

SMALL = standin_dataset.PretrainSpec(image_size=48, train_size=300, val_size=30)


# ----------------------------------------------------------------------------- the dataset


def test_more_than_100_classes_with_the_segmentation_classes_among_them():
  assert standin_dataset.MAX_CLASSES >= 100 and SMALL.num_classes >= 100
  assert len(set(standin_dataset.CLASSES)) == standin_dataset.MAX_CLASSES
  assert len(set(standin_dataset.CLASS_NAMES)) == standin_dataset.MAX_CLASSES
  for k, name in enumerate(synthetic.CLASS_NAMES):  # shape k with appearance k: class k.
    assert standin_dataset.segmentation_class(k) == k
    assert standin_dataset.CLASSES[k] == (k, k)
    assert standin_dataset.CLASS_NAMES[k].endswith(f'_{name}')
  # Every shape with every appearance: neither alone names a class.
  shapes = {s for s, _ in standin_dataset.CLASSES}
  appearances = {a for _, a in standin_dataset.CLASSES}
  assert len(shapes) * len(appearances) == standin_dataset.MAX_CLASSES


def test_examples_are_single_label_balanced_and_deterministic():
  a = [standin_dataset.generate_example(SMALL, 'train', i) for i in range(3)]
  b = [standin_dataset.generate_example(SMALL, 'train', i) for i in range(3)]
  for x, y in zip(a, b):
    assert np.array_equal(x['image'], y['image']) and x['label'] == y['label']
    assert x['image'].shape == (48, 48, 3) and x['image'].dtype == np.uint8
  assert [e['label'] for e in a] == [0, 1, 2]
  other = standin_dataset.generate_example(
    standin_dataset.PretrainSpec(image_size=48, train_size=300, val_size=30, seed=1), 'train', 0
  )
  assert not np.array_equal(a[0]['image'], other['image'])
  assert not np.array_equal(
    a[0]['image'], standin_dataset.generate_example(SMALL, 'val', 0)['image']
  )


@pytest.mark.parametrize(
  'kwargs, field',
  [
    ({'num_classes': 11}, 'num_classes'),
    ({'num_classes': standin_dataset.MAX_CLASSES + 1}, 'num_classes'),
    ({'image_size': 16}, 'image_size'),
    ({'train_size': 0}, 'train_size'),
    ({'seed': -1}, 'seed'),
  ],
)
def test_bad_spec_raises_naming_field(kwargs, field):
  with pytest.raises(ValueError, match=field):
    standin_dataset.PretrainSpec(**kwargs)


def _build_digest(spec, data_dir) -> str:
  """sha256 of every record of every split, as the build stores them."""
  h = hashlib.sha256()
  for split, source in standin_dataset.load_sources(spec, data_dir).items():
    for i in range(len(source)):
      record = source._source[i]
      h.update(split.encode() + bytes(record['image']) + bytes(record['id']))
      h.update(int(record['label']).to_bytes(8, 'little'))
  return h.hexdigest()


def test_builds_are_byte_identical_and_decode_to_the_generated_examples(tmp_path):
  spec = standin_dataset.PretrainSpec(
    num_classes=20, image_size=32, train_size=24, val_size=6, seed=3
  )
  first, second = _build_digest(spec, str(tmp_path / 'a')), _build_digest(spec, str(tmp_path / 'b'))
  assert first == second
  source = standin_dataset.load_sources(spec, str(tmp_path / 'a'))['val']
  assert len(source) == 6 and list(source.labels()) == list(range(6))
  example = standin_dataset.generate_example(spec, 'val', 5)
  assert np.array_equal(source[5]['image'], example['image']) and source[5]['label'] == 5


# ----------------------------------------------------------------------------- folding


def _randomized_batchnorm(variables, seed=0):
  """Non-trivial BatchNorm: scales around +-1 (some negative), shifts, means and variances."""
  rng = np.random.default_rng(seed)
  params = dict(variables['params'])
  stats = {}
  for name, norm in variables['batch_stats'].items():
    n = norm['mean'].shape[0]
    params[name] = {
      'scale': rng.normal(1.0, 0.5, n).astype(np.float32) * rng.choice([-1, 1], n),
      'bias': rng.normal(0.0, 0.5, n).astype(np.float32),
    }
    stats[name] = {
      'mean': rng.normal(0.0, 0.5, n).astype(np.float32),
      'var': rng.uniform(0.1, 3.0, n).astype(np.float32),
    }
  for name in params:
    if name.startswith('conv'):
      params[name] = {**params[name], 'bias': rng.normal(0, 0.2, params[name]['bias'].shape)}
  return {'params': params, 'batch_stats': stats}


def test_folding_preserves_the_outputs_in_eval_mode():
  # In float64 (fold computes in float64 and keeps the kernels' dtype): the folded and the
  # BatchNorm network differ by float64 rounding only, FLOAT64 of the outputs' magnitude.
  x = np.asarray(jax.random.normal(jax.random.key(1), (1, 40, 40, 3)), np.float64)
  with_bn = VGG16LargeFOV(width=0.125, norm='batch', dtype=jnp.float64)
  variables = _randomized_batchnorm(jax.tree.map(np.asarray, with_bn.init(jax.random.key(0), x)))
  variables = jax.tree.map(lambda v: np.asarray(v, np.float64), variables)
  with jax.enable_x64(True):
    expected = np.asarray(jax.jit(with_bn.apply)(variables, x))
    folded = fold.fold_vgg16_batchnorm(variables)
    assert set(folded) == {'params'} and set(folded['params']) == set(fold.conv_names())
    plain = VGG16LargeFOV(width=0.125, norm='none', dtype=jnp.float64)
    got = np.asarray(jax.jit(plain.apply)(folded, x))
  assert got.dtype == expected.dtype == np.float64
  assert 0.2 < np.mean(expected > 0) < 0.8  # the ReLUs cut: the shifts matter.
  np.testing.assert_allclose(got, expected, rtol=0, atol=FLOAT64 * np.abs(expected).max())


def test_folding_a_network_without_batchnorm_is_an_error():
  x = jnp.zeros((1, 32, 32, 3))
  variables = VGG16LargeFOV(width=0.125).init(jax.random.key(0), x)
  with pytest.raises((ValueError, KeyError), match='batch_stats|norm1_1'):
    fold.fold_vgg16_batchnorm(dict(variables))


# ----------------------------------------------------------------------------- the stage


@pytest.fixture(scope='module')
def tiny_pretrained(tmp_path_factory):
  """(config, weights directory, provenance) of configs/synthetic.py:tiny's pretrain run: 6
  steps at width 0.125, 32 px, 12 classes."""
  cfg = config.load('synthetic:tiny')
  cfg.data.data_dir = str(tmp_path_factory.mktemp('pretrain') / 'data')
  provenance = standin_train.run(cfg)
  return cfg, backbones.weights_dir(cfg), provenance


def test_pretrain_writes_a_weights_directory_with_its_provenance(tiny_pretrained):
  cfg, out, provenance = tiny_pretrained
  assert out == os.path.join(cfg.data.data_dir, 'pretrained', backbones.fingerprint(cfg))
  assert os.path.isdir(os.path.join(out, 'backbone'))
  assert json.load(open(os.path.join(out, 'provenance.json'))) == provenance
  assert provenance['arch'] == 'vgg16'
  assert provenance['input']['mean'] == list(imported.IMAGENET_MEAN)
  p = provenance['pretrain']
  assert p['steps'] == 6 and p['dataset']['num_classes'] == 12
  assert p['dataset']['fingerprint'] == backbones.dataset_spec(cfg).fingerprint()
  assert 0 <= p['accuracy']['train'] <= 1 and 0 <= p['accuracy']['val'] <= 1
  assert p['accuracy']['val_images'] == 12
  assert p['folding_max_logit_difference'] < 1e-3
  # Made once: a second call reuses it, and the log holds the 6 steps once.
  assert standin_train.run(cfg) == provenance
  log = [json.loads(line) for line in open(os.path.join(out, 'training/logs/pretrain.jsonl'))]
  assert [r['step'] for r in log] == [2, 4, 6] and 'accuracy' in log[0]


def test_the_fingerprint_follows_what_changes_the_weights(tiny_config):
  base = backbones.fingerprint(tiny_config)
  tiny_config.pretrain.log_every_steps = 7
  assert backbones.fingerprint(tiny_config) == base
  for field, value in (('model.width', 0.25), ('pretrain.epochs', 3), ('pretrain.seed', 1)):
    changed = config.load('synthetic:tiny')
    group, name = field.split('.')
    changed[group][name] = value
    assert backbones.fingerprint(changed) != base, field


def test_classifier_and_vgg_segmenter_load_the_backbone(tiny_pretrained):
  cfg, out, _ = tiny_pretrained
  cfg = config.load('synthetic:tiny')
  cfg.model.norm, cfg.segment.backbone = 'none', 'vgg16'
  cfg.model.init_from = cfg.segment.init_from = out
  cfg = config.finalize(cfg)
  assert tuple(cfg.input.mean) == imported.IMAGENET_MEAN
  assert tuple(cfg.segment.std) == imported.IMAGENET_STD
  stored = imported.load_backbone(
    out,
    'vgg16',
    {
      'params': from_config.abstract_variables(from_config.classifier(cfg), cfg)['params'][
        'backbone'
      ]
    },
  )
  for model in (from_config.classifier(cfg), from_config.segmenter(cfg)):
    variables = from_config.init_variables(model, cfg, jax.random.key(0))
    assert set(variables) == {'params'}  # a plain VGG16: no BatchNorm anywhere.
    jax.tree.map(np.testing.assert_array_equal, variables['params']['backbone'], stored['params'])


def test_a_width_other_than_the_backbone_is_a_one_line_error(tiny_pretrained):
  _, out, _ = tiny_pretrained
  cfg = config.load('synthetic:tiny')
  cfg.model.norm, cfg.model.width, cfg.model.init_from = 'none', 0.25, out
  cfg = config.finalize(cfg)
  with pytest.raises(imported.WeightsError, match='shape mismatch'):
    from_config.init_variables(from_config.classifier(cfg), cfg, jax.random.key(0))


def test_bad_pretrain_fields_are_listed(tiny_config):
  tiny_config.pretrain.num_classes, tiny_config.pretrain.momentum = 5, 2.0
  found = standin_train.problems(tiny_config)
  assert any('pretrain.num_classes' in f for f in found)
  assert any('pretrain.momentum' in f for f in found)


def test_cli_pretrain_reuses_and_prints_the_flags(tiny_pretrained, tmp_path):
  cfg, out, _ = tiny_pretrained
  exe = os.path.join(os.path.dirname(sys.executable), 'cows-jax')
  args = [
    exe,
    'pretrain',
    '--config',
    'synthetic:tiny',
    f'--config.data.data_dir={cfg.data.data_dir}',
  ]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
  assert done.returncode == 0, done.stderr
  assert f'--config.model.init_from={out}' in done.stdout
  done = subprocess.run(
    args + ['--workdir', str(tmp_path)], capture_output=True, text=True, timeout=300, env=env
  )
  assert done.returncode != 0 and '--workdir' in done.stderr


# ----------------------------------------------------------------------------- shipped backbones


def _shipped_dirs() -> list[str]:
  root = backbones.SHIPPED_ROOT
  return sorted(os.path.join(root, d) for d in os.listdir(root))


def test_the_shipped_tiny_backbone_is_what_the_command_makes(tiny_pretrained):
  """The backbones shipped with the package are made by `cows-jax pretrain`: at the tiny size
  the command, run here, makes the shipped one again (the demo's takes too long for CI; its
  provenance.json names the same command and code version)."""
  cfg, out, provenance = tiny_pretrained
  shipped = os.path.join(backbones.SHIPPED_ROOT, backbones.fingerprint(cfg))
  assert shipped in _shipped_dirs()
  with ocp.PyTreeCheckpointer() as ckptr:
    made, kept = (ckptr.restore(os.path.join(d, 'backbone')) for d in (out, shipped))
  assert jax.tree.structure(made) == jax.tree.structure(kept)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(made), jax.tree.leaves(kept)):
    # The command makes it bit-identically; the tests compile with other XLA options
    # (conftest.py), which round differently over the 6 steps and the folding: up to 0.14% of a
    # tensor's scale, where another seed or dataset differs by its whole scale.
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-2 * np.abs(a).max(), err_msg=str(path))
  shipped_provenance = json.load(open(os.path.join(shipped, 'provenance.json')))
  assert shipped_provenance['pretrain']['training'] == provenance['pretrain']['training']
  assert shipped_provenance['pretrain']['dataset'] == provenance['pretrain']['dataset']


def test_every_shipped_backbone_belongs_to_a_packaged_config_argument():
  fingerprints = {
    backbones.fingerprint(config.load(spec))
    for spec in ('synthetic', 'synthetic:tiny_pretrained', 'synthetic:parts')
  }
  for directory in _shipped_dirs():
    provenance = json.load(open(os.path.join(directory, 'provenance.json')))
    assert provenance['pretrain']['fingerprint'] == os.path.basename(directory)
    assert provenance['pretrain']['version'] == backbones.VERSION
    assert os.path.basename(directory) in fingerprints, directory


def test_init_from_standin_names_the_made_backbone_else_the_shipped_one(tmp_path):
  cfg = config.load('synthetic:tiny_pretrained')
  cfg.data.data_dir = str(tmp_path / 'data')
  shipped = os.path.join(backbones.SHIPPED_ROOT, backbones.fingerprint(cfg))
  final = config.finalize(cfg)
  assert final.model.init_from == final.segment.init_from == shipped
  assert tuple(final.input.mean) == imported.IMAGENET_MEAN  # its provenance's convention.
  made = backbones.weights_dir(cfg)
  os.makedirs(made)
  for name in ('backbone', 'provenance.json'):
    src, dst = os.path.join(shipped, name), os.path.join(made, name)
    (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, dst)
  assert config.finalize(cfg).model.init_from == made


def test_a_missing_backbone_is_one_line_for_a_stage_and_made_by_the_pipeline(tmp_path):
  cfg = config.load('synthetic:tiny_pretrained')
  cfg.data.data_dir, cfg.pretrain.seed = str(tmp_path / 'data'), 7  # nothing shipped or made.
  assert backbones.missing(cfg)
  found = validation.problems(cfg, 'classify')
  assert len(found) == 1 and "init_from='standin'" in found[0] and 'cows-jax pretrain' in found[0]
  assert validation.problems(cfg, 'pipeline') == []


def test_validation_runs_the_standin_sets_own_checks_before_it_is_made(tmp_path):
  """A class count the parts world's pretraining set cannot draw is a config problem, not
  an error an hour into `cows-jax pretrain`; without the stand-in it is not checked."""
  cfg = config.load('synthetic:parts,tiny_pretrained')
  cfg.data.data_dir, cfg.pretrain.num_classes = str(tmp_path / 'data'), 10
  found = validation.problems(cfg, 'pipeline')
  assert len(found) == 1 and found[0].startswith('pretrain.num_classes must be families^2 x 3')
  cfg.model.init_from = cfg.segment.init_from = ''
  assert validation.problems(cfg, 'pipeline') == []


@pytest.mark.parametrize(
  'fields, message',
  [
    ({'model.norm': 'batch'}, "model.norm='batch' with init_from='standin'"),
    ({'segment.backbone': 'resnet101'}, "segment.backbone='resnet101' with segment.init_from"),
  ],
)
def test_validation_names_a_model_the_standin_cannot_start(tmp_path, fields, message):
  """The stand-in is a plain VGG16: a BatchNorm model or a ResNet segmenter would fail to
  load it deep inside the weights' tree."""
  cfg = config.load('synthetic:tiny_pretrained')
  cfg.data.data_dir = str(tmp_path / 'data')
  config.set_fields(cfg, list(fields.items()))
  found = validation.problems(cfg, 'pipeline')
  assert len(found) == 1 and found[0].startswith(message), found


def test_the_old_value_pretrain_resolves_as_standin_with_a_warning(tmp_path, monkeypatch):
  """init_from='pretrain', the value's name before 'standin', works for one release."""
  cfg = config.load('synthetic:tiny_pretrained')
  cfg.data.data_dir = str(tmp_path / 'data')
  assert cfg.model.init_from == cfg.segment.init_from == backbones.STANDIN == 'standin'
  standin = config.finalize(cfg)
  cfg.model.init_from = cfg.segment.init_from = backbones.OLD_STANDIN
  assert validation.problems(cfg, 'classify') == []
  warnings = []
  monkeypatch.setattr(config.logging, 'warning', lambda fmt, *a: warnings.append(fmt % a))
  old = config.finalize(cfg)
  assert old.model.init_from == old.segment.init_from == standin.model.init_from
  assert old.to_dict() == standin.to_dict()
  assert len(warnings) == 2 and all(
    "init_from='pretrain' is renamed 'standin'" in w for w in warnings
  )
  cfg.pretrain.seed = 7  # nothing shipped or made: the pipeline makes it.
  assert backbones.missing(cfg)
  meaning = FIELDS['model.init_from'].meaning  # --help-fields and docs/configs.md
  assert f"'{backbones.STANDIN}'" in meaning and f"'{backbones.OLD_STANDIN}'" in meaning


def test_the_demo_recipe_runs_end_to_end_from_the_shipped_backbone(tmp_path):
  """configs/synthetic.py's recipe (no BatchNorm, self-pairs, the paper's multipliers, VGG16
  segmenter at batch 1 x 10) at the tiny size, through every stage from the shipped backbone."""
  from cows_jax import cli, run_dir

  cfg = config.load('synthetic:tiny_pretrained')
  cfg.data.data_dir = str(tmp_path / 'data')
  cfg.segment.iterations, cfg.segment.supervisions = 2, ('pseudo',)
  cfg.classify.epochs, cfg.classify.lr_decay_epochs, cfg.localize.after_epochs = 1, (), 1
  cfg.inference.scales = (1.0,)
  final = config.finalize(cfg)
  assert final.model.norm == 'none' and final.classify.self_views == ('flip', 0.75, 2.0)
  assert final.model.init_from.startswith(backbones.SHIPPED_ROOT)
  cli.run_stage('pipeline', final, str(tmp_path / 'run'))
  summary = json.loads(
    (run_dir.RunDir(str(tmp_path / 'run')).reports() / 'summary.json').read_text()
  )
  assert 0 <= summary['segmentation_miou'] <= 100 and 0 <= summary['cam_miou'] <= 100
