"""`cows-jax STAGE --config FILE --workdir DIR [--config.a.b=value ...]`.

Stages run in order classify -> localize -> label -> segment -> evaluate; `pipeline` runs
them all. Each stage reads the previous stage's outputs from the workdir and skips work
whose complete outputs exist, so rerunning a stage or the pipeline resumes.
"""

import logging as std_logging
import os
import re
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from cows_jax import (
  ablate,
  bench,
  classify,
  evaluate,
  label,
  localize,
  model_summary,
  predict,
  segment,
  weights,
)
from cows_jax.data import check

STAGES = {
  'classify': classify.train,
  'localize': localize.run,
  'label': label.run,
  'segment': segment.train,
  'evaluate': evaluate.run,
}
# Commands that take --config and --workdir: the stages, the whole pipeline, the ablation,
# the segmenter's label maps of a split.
COMMANDS = [*STAGES, 'pipeline', 'ablate', 'predict-split']
USAGE = (
  f'usage: cows-jax {{{",".join(COMMANDS)}}} --config FILE '
  '--workdir DIR [--config.FIELD=VALUE ...]\n'
  '       cows-jax data check --config FILE [--config.FIELD=VALUE ...]\n'
  '       cows-jax summary --config FILE [--config.FIELD=VALUE ...]\n'
  '       cows-jax weights import --arch {vgg16,resnet101} --src FILE --out DIR\n'
  '       cows-jax bench {train-step,localize} --size S ... (see --help)'
)

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file (configs/*.py[:arg]).', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, "Directory of this run's outputs.")
_SPLIT = flags.DEFINE_string('split', 'test', 'predict-split: the dataset split to predict.')
_DISTRIBUTED = flags.DEFINE_bool(
  'distributed',
  False,
  'Call jax.distributed.initialize() first (multi-host, e.g. TPU pods; '
  'coordinator and process ids come from the environment).',
)


def run_stage(stage: str, cfg, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  names = list(STAGES) if stage == 'pipeline' else [stage]
  for name in names:
    logging.info('=== %s ===', name)
    start = time.time()
    STAGES[name](cfg, workdir)
    logging.info('=== %s: %.1f s ===', name, time.time() - start)


def data_check() -> None:
  """`cows-jax data check`: the data summary; exit status 1 on problems."""
  if _CONFIG.value is None:
    raise app.UsageError('--config is required\n' + USAGE)
  try:
    sys.exit(check.run(_CONFIG.value))
  except (FileNotFoundError, ValueError) as e:
    print(f'cows-jax data check: error: {e}', file=sys.stderr)
    sys.exit(1)


def summary() -> None:
  """`cows-jax summary`: every trained model with parameter counts and FLOPs per image."""
  if _CONFIG.value is None:
    raise app.UsageError('--config is required\n' + USAGE)
  try:
    print(model_summary.run(_CONFIG.value))
  except ValueError as e:
    print(f'cows-jax summary: error: {e}', file=sys.stderr)
    sys.exit(1)
  sys.exit(0)


def main(argv):
  if argv[1:] == ['data', 'check']:
    data_check()
  if argv[1:] == ['summary']:
    summary()
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(USAGE)
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError('--config and --workdir are required\n' + USAGE)
  if _DISTRIBUTED.value:
    import jax

    jax.distributed.initialize()
  try:
    weights.apply_input_convention(_CONFIG.value)
    if argv[1] == 'ablate':
      ablate.run(_CONFIG.value, _WORKDIR.value)
    elif argv[1] == 'predict-split':
      predict.write_split(_CONFIG.value, _WORKDIR.value, _SPLIT.value)
    else:
      run_stage(argv[1], _CONFIG.value, _WORKDIR.value)
  except (FileNotFoundError, ValueError) as e:
    logging.error('%s', e)
    print(f'cows-jax {argv[1]}: error: {e}', file=sys.stderr)
    sys.exit(1)


class _QuietLibraries:
  """Drops INFO records of orbax and tfds (dozens of lines per checkpoint) from the log, and
  their warnings about what this project does on purpose: building its datasets from a
  config, restoring checkpoints read-only."""

  NOISY = ('/orbax/', '/tensorflow_datasets/')
  EXPECTED = (
    'Using custom data configuration',
    'CheckpointManagerOptions.read_only=True',
    'Given directory is read only',
  )

  def filter(self, record):
    if not any(n in record.pathname for n in self.NOISY):
      return True
    return record.levelno >= std_logging.WARNING and not str(record.msg).startswith(self.EXPECTED)


def run():
  if sys.argv[1:2] == ['weights']:  # its own arguments: no config, no workdir.
    sys.exit(weights.main(sys.argv[2:]))
  if sys.argv[1:2] == ['bench']:  # its own arguments too.
    sys.exit(bench.main(sys.argv[2:]))
  logging.set_verbosity(logging.INFO)
  logging.get_absl_logger().addFilter(_QuietLibraries())
  try:
    app.run(main, flags_parser=_parse_flags)
  except _UnknownConfigField as e:
    sys.exit(f'cows-jax: error: {e}')


class _UnknownConfigField(Exception):
  pass


def _parse_flags(argv):
  """absl's parser, with its errors as one line (config_flags puts a config file's whole
  traceback in the message), and config_flags' AttributeError or KeyError for a misspelt
  `--config.a.b=...` turned into a one-line error naming the override."""
  try:
    argv = flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'cows-jax: error: {_one_line(e)}\n{USAGE}')
  except (AttributeError, KeyError) as e:  # a missing field, a missing parent of a field.
    overrides = [a.split('=')[0] for a in argv if a.startswith('--config.')]
    raise _UnknownConfigField(
      f'unknown config field {_field_error(e)} (overrides given: {", ".join(overrides)})'
    ) from None
  try:  # config_flags loads a missing or broken file lazily, on the first access.
    if _CONFIG.value is not None:
      _CONFIG.value.keys()
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()
    sys.exit(
      f'cows-jax: error: --config={flags.FLAGS["config"].config_filename}: '
      f'cannot load the config file: {reason}'
    )
  return argv


def _field_error(error: Exception) -> str:
  """'name' (and ml_collections' suggestion) from its quoted, escaped KeyError text."""
  text = str(error).replace('\\', '')
  name = re.search(r'[A-Za-z_]\w*', text)
  hint = re.search(r'Did you mean "(\w+)"', text)
  out = repr(name.group(0)) if name else text
  return f'{out}, did you mean {hint.group(1)!r}?' if hint else out


def _one_line(error: Exception) -> str:
  """The message without a traceback in it: its first line, and the traceback's last line
  (the exception that caused it) where it has one."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if len(lines) > 1 and any(line.startswith('Traceback') for line in lines):
    return f'{lines[0]} {lines[-1]}'
  return ' '.join(lines)
