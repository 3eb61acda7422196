"""The config fields described once (configs/defaults.py through configs/schema.py): the
defaults unchanged, validation's choices and ranges, the renamed fields' aliases,
`cows-jax config --help-fields` and docs/configs.md's "All fields" from the same declarations."""

import hashlib
import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from cows_jax import config, inference, tta, validation
from cows_jax.configs import schema
from cows_jax.configs.defaults import FIELDS, SCHEMA, paper_defaults
from cows_jax.data import mixing, sources, synthetic, synthetic_parts, voc
from cows_jax.models import deeplab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXE = os.path.join(os.path.dirname(sys.executable), 'cows-jax')


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {prefix + k: v})
  return out


def test_defaults_are_the_values_before_the_schema():
  """sha256 of {field: repr(default)} of paper_defaults() at commit 900ecfc (before the
  schema); a renamed field's value is read under its new name, and the fields added since
  (the parts world's) are left out."""
  now = _flat(paper_defaults().to_dict())
  new_fields = {
    'data.world',
    'data.unlabelled_rate',
    'data.part_offset',
    'data.body_aspect',
    'data.body_hues',
  } | set(SCHEMA.renamed.values())
  old = {k: repr(now[SCHEMA.renamed.get(k, k)]) for k in now if k not in new_fields}
  digest = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
  assert digest == '0d12caa1cab88d27'
  assert len(old) == 161 and all(now[k] is None for k in SCHEMA.renamed)


def test_every_field_has_a_meaning_and_the_config_dict_has_every_field():
  assert set(_flat(paper_defaults().to_dict())) == set(FIELDS)
  assert all(f.meaning and '\n' not in f.meaning for f in FIELDS.values())
  with pytest.raises(ValueError, match='declared twice'):
    s = schema.Section()
    s.a = schema.field(1, 'a')
    s.a = schema.field(2, 'a')


def test_the_parts_worlds_ranges_are_the_generators():
  """The schema checks them before anything runs, the specs when a world is drawn."""
  for name, (default, bounds) in {
    'data.part_offset': (synthetic_parts.PART_OFFSET, synthetic_parts.PART_OFFSET_RANGE),
    'data.body_aspect': (synthetic_parts.BODY_ASPECT, synthetic_parts.BODY_ASPECT_RANGE),
    'data.body_hues': (synthetic_parts.BODY_HUES_DEFAULT, None),
  }.items():
    f = FIELDS[name]
    assert f.default == default and (bounds is None or (f.low, f.high) == bounds), name


def test_choices_are_the_ones_the_code_implements():
  choices = {n: f.choices for n, f in FIELDS.items() if f.choices}
  assert choices == {
    'data.name': sources.DATASETS,
    'data.world': sources.WORLDS,
    'data.body_hues': tuple(synthetic_parts.BODY_HUES),
    'data.voc.aug_layout': voc.AUG_LAYOUTS,
    'data.extra.layout': sources.EXTRA_LAYOUTS,
    'data.extra.mixing': mixing.MIXINGS,
    'model.norm': ('none', 'batch'),
    'model.dtype': ('float32', 'bfloat16', 'float16'),
    'localize.method': ('coattention', 'cam', 'cam_views'),
    'label.thresholds': ('cam_sweep', 'fixed'),
    'segment.backbone': ('resnet101', 'vgg16'),
    'segment.scale_sampling': ('discrete', 'uniform'),
    'segment.head': deeplab.HEADS,
    'segment.head_init': tuple(deeplab.HEAD_INITS),
    'segment.dtype': ('float32', 'bfloat16', 'float16'),
    'inference.pad': tta.PADDINGS,
    'inference.interpolation': tta.INTERPOLATIONS,
  }


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('label.score_threshold', 1.5, 'label.score_threshold=1.5: expected a value in [0, 1]'),
    ('classify.batch_pairs', 0, 'classify.batch_pairs=0: expected a value >= 1'),
    ('classify.base_lr', 0.0, 'classify.base_lr=0.0: expected a value > 0'),
    ('classify.momentum', 'x', "classify.momentum='x': expected a number"),
    ('inference.window_stride', 0.0, 'expected a value in (0, 1]'),
    ('inference.scales', (1.0, 0.0), 'inference.scales=(1.0, 0.0): expected values > 0'),
    ('inference.scales', (), 'inference.scales=(): expected values > 0'),
    ('evaluate.cam_thresholds', (0.5, 1.5), 'expected values in [0, 1]'),
    ('segment.head', 'fcn', "segment.head='fcn': expected one of largefov, aspp"),
    ('localize.after_epochs', 16, 'localize.after_epochs=16: expected 1..classify.epochs=15'),
  ],
)
def test_validation_reports_the_schemas_choices_and_ranges(field, value, message):
  cfg = ml_collections.ConfigDict(paper_defaults().to_dict(), type_safe=False)
  section, leaf = field.rsplit('.', 1)
  cfg[section][leaf] = value
  assert [p for p in validation.problems(cfg, 'classify') if message in p], message


def test_stages_called_from_python_check_their_section():
  cfg = paper_defaults()
  cfg.inference.pad = 'left'
  with pytest.raises(ValueError, match="inference.pad='left': expected one of bottom_right"):
    inference.Settings.from_config(cfg)
  with pytest.raises(ValueError, match='SyntheticSpec.web_noise_rate=1.5: expected a value'):
    synthetic.SyntheticSpec(web_noise_rate=1.5)
  assert synthetic.SyntheticSpec() == sources.synthetic_spec(paper_defaults())


def test_an_old_name_moves_to_the_new_field_with_a_warning(monkeypatch):
  cfg = paper_defaults()
  cfg.classify.localize_after_epochs = 7
  assert validation.problems(cfg, 'classify') == []
  cfg.classify.localize_after_epochs = 16  # checked as localize.after_epochs.
  assert any('localize.after_epochs=16' in p for p in validation.problems(cfg, 'classify'))
  cfg.classify.localize_after_epochs = 7
  warnings = []
  monkeypatch.setattr(config.logging, 'warning', lambda fmt, *a: warnings.append(fmt % a))
  done = config.finalize(cfg)
  assert done.localize.after_epochs == 7 and done.classify.localize_after_epochs is None
  assert len(warnings) == 1
  assert 'classify.localize_after_epochs is renamed localize.after_epochs' in warnings[0]
  assert config.finalize(done) == done  # idempotent
  assert config.finalize(paper_defaults()).localize.after_epochs == 11


def test_old_name_and_help_fields_on_the_command_line():
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  cmd = [EXE, 'config', '--config', 'synthetic:tiny', '--config.classify.localize_after_epochs=1']
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
  assert done.returncode == 0, done.stderr[-2000:]
  localize = re.split(r'\n\S', done.stdout.split('\nlocalize:\n')[1])[0]
  assert '  after_epochs: 1\n' in localize and 'is renamed localize.after_epochs' in done.stderr
  done = subprocess.run([EXE, 'config', '--help-fields'], capture_output=True, text=True, env=env)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == SCHEMA.text()
  for name, f in FIELDS.items():
    assert name in done.stdout and (f.renamed_to or f'{f.meaning}\n' in done.stdout), name
  assert 'classify.localize_after_epochs -> localize.after_epochs' in done.stdout


def test_docs_list_every_field_as_declared():
  with open(os.path.join(ROOT, schema.DOCS_PATH)) as f:
    text = f.read()
  assert schema.replace_docs_section(text, SCHEMA.docs_section()) == text, (
    f'docs/configs.md\'s "All fields" differs from configs/defaults.py; run `{schema.WRITE_DOCS}`'
  )
  for name in FIELDS:
    assert f'`{name}`' in text
