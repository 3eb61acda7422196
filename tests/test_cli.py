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
