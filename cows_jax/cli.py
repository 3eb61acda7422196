"""`cows-jax STAGE --config FILE --workdir DIR [--config.a.b=value ...]`.

Stages run in order classify -> localize -> label -> segment -> evaluate; `pipeline` runs
them all. Each stage reads the previous stage's outputs from the workdir and skips work
whose complete outputs exist, so rerunning a stage or the pipeline resumes.
"""

import logging as std_logging
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from cows_jax import ablate, classify, evaluate, label, localize, segment

STAGES = {
    'classify': classify.train,
    'localize': localize.run,
    'label': label.run,
    'segment': segment.train,
    'evaluate': evaluate.run,
}
# Commands that take --config and --workdir: the stages, the whole pipeline, the ablation.
COMMANDS = [*STAGES, 'pipeline', 'ablate']
USAGE = (f'usage: cows-jax {{{",".join(COMMANDS)}}} --config FILE '
         '--workdir DIR [--config.FIELD=VALUE ...]')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:arg]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of this run\'s outputs.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() first (multi-host, e.g. TPU pods; '
    'coordinator and process ids come from the environment).')


def run_stage(stage: str, cfg, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  names = list(STAGES) if stage == 'pipeline' else [stage]
  for name in names:
    logging.info('=== %s ===', name)
    start = time.time()
    STAGES[name](cfg, workdir)
    logging.info('=== %s: %.1f s ===', name, time.time() - start)


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(USAGE)
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError('--config and --workdir are required\n' + USAGE)
  if _DISTRIBUTED.value:
    import jax
    jax.distributed.initialize()
  try:
    if argv[1] == 'ablate':
      ablate.run(_CONFIG.value, _WORKDIR.value)
    else:
      run_stage(argv[1], _CONFIG.value, _WORKDIR.value)
  except (FileNotFoundError, ValueError) as e:
    logging.error('%s', e)
    print(f'cows-jax {argv[1]}: error: {e}', file=sys.stderr)
    sys.exit(1)


class _QuietLibraries:
  """Drops INFO records of orbax and tfds (dozens of lines per checkpoint) from the log."""
  NOISY = ('/orbax/', '/tensorflow_datasets/')

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(
        n in record.pathname for n in self.NOISY)


def run():
  logging.set_verbosity(logging.INFO)
  logging.get_absl_logger().addFilter(_QuietLibraries())
  try:
    app.run(main, flags_parser=_parse_flags)
  except _UnknownConfigField as e:
    sys.exit(f'cows-jax: error: {e}')


class _UnknownConfigField(Exception):
  pass


def _parse_flags(argv):
  """absl's parser, with config_flags' AttributeError for a misspelt `--config.a.b=...`
  turned into a one-line error naming the override."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'cows-jax: error: {e}\n{USAGE}')
  except AttributeError as e:
    overrides = [a.split('=')[0] for a in argv if a.startswith('--config.')]
    name = str(e).strip('"\'')
    raise _UnknownConfigField(f'unknown config field {name!r} (overrides given: '
                              f'{", ".join(overrides)})') from None
