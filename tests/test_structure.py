"""The seams the stages rely on: stages never import each other, configs come by name from the
installed package, and a finalized config is the same from Python as from the CLI."""

import ast
import os
import subprocess
import sys

import pytest

from cows_jax import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ('classify', 'localize', 'label', 'segment', 'evaluate', 'predict', 'ablate')


def _imported_modules(path: str) -> set[str]:
  """Every cows_jax module a file imports, as dotted names (`from cows_jax import x` -> x)."""
  tree = ast.parse(open(path).read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out |= {f'{node.module}.{a.name}' for a in node.names}
  return out


@pytest.mark.parametrize('stage', STAGES)
def test_no_stage_imports_another_stage(stage):
  imported = _imported_modules(os.path.join(ROOT, 'cows_jax', f'{stage}.py'))
  others = {f'cows_jax.{s}' for s in STAGES if s != stage}
  assert not imported & others, f'{stage}.py imports {sorted(imported & others)}'


def test_the_import_check_sees_a_stage_import(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text('from cows_jax import label, run_dir\nimport cows_jax.localize\n')
  assert {'cows_jax.label', 'cows_jax.localize'} <= _imported_modules(str(bad))


def test_packaged_config_by_name_equals_the_file():
  assert set(config.packaged_names()) == {
    'synthetic',
    'voc12',
    'voc12_single_label',
    'voc12_web',
    'lid20',
  }
  by_name = config.load('voc12:runlocal')
  assert by_name.data.max_per_split == 200
  path, _, arg = config.resolve('voc12:runlocal').partition(':')
  assert arg == 'runlocal' and os.path.samefile(path, os.path.join(ROOT, 'configs', 'voc12.py'))
  assert config.resolve('configs/voc12.py:runlocal') == 'configs/voc12.py:runlocal'


@pytest.mark.parametrize('spec', ['synthetic:runlocal', 'synthetic:tny', 'voc12:fast'])
def test_unknown_config_argument_is_an_error(spec):
  name, _, arg = spec.partition(':')
  with pytest.raises(ValueError, match=f"configs/{name}.py: unknown config argument '{arg}'"):
    config.load(spec)


def test_finalized_config_is_read_only_and_idempotent(tiny_config):
  cfg = config.finalize(tiny_config)
  with pytest.raises((AttributeError, TypeError, ValueError)):
    cfg.classify.epochs = 3
  assert config.finalize(cfg).to_dict() == cfg.to_dict() == tiny_config.to_dict()


def test_config_command_prints_the_resolved_config_by_name():
  cmd = [os.path.join(os.path.dirname(sys.executable), 'cows-jax'), 'config']
  args = ['--config', 'synthetic:tiny', '--config.classify.epochs=5']
  done = subprocess.run(cmd + args, cwd='/', capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert 'epochs: 5' in done.stdout and 'train_size: 32' in done.stdout


def test_help_lists_every_command_and_each_command_its_flags():
  exe = os.path.join(os.path.dirname(sys.executable), 'cows-jax')
  done = subprocess.run([exe, '--help'], capture_output=True, text=True, timeout=120)
  assert done.returncode == 0
  for command in (
    'classify',
    'pipeline',
    'ablate',
    'predict-split',
    'config',
    'data check',
    'summary',
    'weights import',
    'bench',
  ):
    assert f'  {command} ' in done.stdout, command
  done = subprocess.run(
    [exe, 'predict-split', '--help'], capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 0
  assert '--split:' in done.stdout and '--workdir:' in done.stdout
  done = subprocess.run([exe, 'clasify'], capture_output=True, text=True, timeout=120)
  assert done.returncode != 0 and "unknown command 'clasify'" in done.stderr
