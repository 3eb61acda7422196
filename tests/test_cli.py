"""The command line: a wrong --config is one line on stderr naming the problem, never a
traceback; library log noise is filtered, real warnings are not."""

import logging as std_logging
import os
import subprocess
import sys

import pytest

from cows_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  'args,message',
  [
    (
      ['--config', 'configs/missing.py'],
      '--config=configs/missing.py: cannot load the config file: [Errno 2] No such file',
    ),
    (['--config', 'configs/voc12.py:fast'], "unknown config argument 'fast' (known: runlocal)"),
    (
      ['--config', 'configs/synthetic.py', '--config.classify.epoch=3'],
      "unknown config field 'epoch', did you mean 'epochs'? (overrides given: "
      '--config.classify.epoch)',
    ),
    (
      ['--config', 'configs/synthetic.py', '--config.clasify.epochs=3'],
      "unknown config field 'clasify', did you mean 'classify'? (overrides given: "
      '--config.clasify.epochs)',
    ),
    (
      ['--config', 'configs/synthetic.py', '--config.classify.zzz=3'],
      "unknown config field 'zzz' (overrides given: --config.classify.zzz)",
    ),
  ],
)
def test_bad_config_is_one_line(tmp_path, args, message):
  cmd = [
    os.path.join(os.path.dirname(sys.executable), 'cows-jax'),
    'classify',
    '--workdir',
    str(tmp_path),
    *args,
  ]
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode != 0
  assert message in done.stderr, done.stderr
  assert 'Traceback' not in done.stderr, done.stderr
  assert not os.listdir(tmp_path)  # nothing ran.


def test_library_log_filter_keeps_our_records_and_real_library_warnings():
  quiet = cli._QuietLibraries()

  def record(path, level, msg):
    return std_logging.LogRecord('absl', level, path, 1, msg, None, None)

  tfds = '/venv/site-packages/tensorflow_datasets/core/dataset_builder.py'
  orbax = '/venv/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert quiet.filter(record('/src/cows_jax/classify.py', std_logging.INFO, 'step 1'))
  assert not quiet.filter(record(orbax, std_logging.INFO, 'Finished load'))
  assert not quiet.filter(record(tfds, std_logging.WARNING, 'Using custom data configuration: x'))
  assert not quiet.filter(record(orbax, std_logging.WARNING, 'Given directory is read only=/d'))
  assert quiet.filter(record(orbax, std_logging.WARNING, 'Checkpoint is corrupt'))


def _cows_jax(*args, env=None, script=None):
  """cows-jax ARGS in a subprocess; `script`: Python run before the CLI (to plant a fault)."""
  code = f'{script or ""}\nimport sys\nfrom cows_jax import cli\nsys.argv = {["cows-jax", *args]!r}\ncli.run()'
  return subprocess.run(
    [sys.executable, '-c', code],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, **(env or {})),
  )


def test_a_flag_the_command_does_not_take_is_an_error_naming_it(tmp_path):
  done = _cows_jax(
    'classify', '--split', 'val', '--config', 'synthetic:tiny', '--workdir', str(tmp_path)
  )
  assert done.returncode == 2
  assert (
    'cows-jax classify: error: --split is not a flag of classify (its flags: --config, --workdir'
    in done.stderr
  )
  assert not os.listdir(tmp_path)  # nothing ran.


FAULT = (
  'import numpy as np\n'
  'from cows_jax import cli as c\n'
  "c.STAGES['classify'] = lambda cfg, workdir: np.zeros(3).reshape(4)  # raises inside numpy.\n"
)


@pytest.mark.parametrize('show', [False, True])
def test_an_unexpected_error_is_one_line_and_its_traceback_goes_to_the_runs_logs(tmp_path, show):
  workdir = str(tmp_path / 'run')
  args = ('classify', '--config', 'synthetic:tiny', '--workdir', workdir)
  args += (f'--config.data.data_dir={tmp_path / "data"}',)
  done = _cows_jax(*args, script=FAULT, env={cli.TRACEBACK_ENV: '1'} if show else {})
  assert done.returncode == 1
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith('cows-jax classify: error: ValueError: cannot reshape array'), last
  assert '(unexpected; traceback in ' in last
  logs = os.listdir(os.path.join(workdir, 'logs'))
  [name] = [n for n in logs if n.startswith('traceback-classify-')]
  text = open(os.path.join(workdir, 'logs', name)).read()
  assert 'Traceback' in text and 'reshape' in text and name in last
  assert ('Traceback (most recent call last)' in done.stderr) == show


def test_an_input_problem_cows_jax_reports_stays_one_line_without_a_traceback(tmp_path):
  done = _cows_jax(
    'localize',
    '--config',
    'synthetic:tiny',
    '--workdir',
    str(tmp_path / 'run'),
    f'--config.data.data_dir={tmp_path / "data"}',
  )
  assert done.returncode == 1
  assert (
    'cows-jax localize: error: ' in done.stderr and 'run `cows-jax classify` first' in done.stderr
  )
  assert 'unexpected' not in done.stderr and 'Traceback' not in done.stderr


SHARED_PROBE = (
  'import os\n'
  'from cows_jax import cli\n'
  'def probe(cfg, workdir):\n'
  '  seed = os.path.dirname(os.path.dirname(workdir))\n'
  "  locks = [os.path.exists(os.path.join(d, '.lock')) for d in (workdir, seed, os.path.dirname(seed))]\n"
  "  print('locks held (classifier, seed, workdir):', *locks)\n"
  "  raise ValueError(f'the probe stops in {os.path.relpath(workdir, os.path.dirname(seed))}')\n"
  "cli.STAGES['classify'] = probe\n"
)


def test_ablate_locks_what_runs_so_jobs_with_other_classifiers_share_the_workdir(tmp_path):
  """Two `ablate --seeds` jobs on one WORKDIR (one per GPU or core): each locks only the
  classifier it trains (and the variant it runs), so one seed's variants of different
  classifiers go side by side, and a classifier two jobs need is one clear error."""
  from cows_jax import run_dir

  workdir = tmp_path / 'w'
  args = ('ablate', '--config', 'synthetic:tiny', '--workdir', str(workdir), '--seeds=0')
  args += (f'--config.data.data_dir={tmp_path / "data"}',)
  single = workdir / 'seed0' / 'train' / 'single'
  with run_dir.Lock(run_dir.RunDir(str(single))):  # a job training seed 0's baseline.
    alongside = _cows_jax(*args, '--variants=full_method', script=SHARED_PROBE)
    same = _cows_jax(*args, '--variants=baseline_views', script=SHARED_PROBE)
  assert 'locks held (classifier, seed, workdir): True False False' in alongside.stdout
  assert 'the probe stops in seed0/train/full' in alongside.stderr.strip().splitlines()[-1]
  assert not (workdir / 'seed0' / 'train' / 'full' / '.lock').exists()  # released.
  assert same.returncode == 1 and 'locks held' not in same.stdout
  assert f'{single} is in use by pid {os.getpid()}' in same.stderr
  assert 'Traceback' not in same.stderr
  unknown = _cows_jax(*args, '--variants=baseline_cam,nope')
  assert unknown.returncode == 1 and "unknown variant 'nope'" in unknown.stderr.splitlines()[-1]
