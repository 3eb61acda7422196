"""`cows-jax COMMAND ...`: the one entry point. `cows-jax --help` lists the commands.

Stages run in order classify -> localize -> label -> segment -> evaluate; `pipeline` runs
them all. Each stage reads the previous stage's outputs from the workdir and skips work
whose complete outputs exist, so rerunning a stage or the pipeline resumes. `--config` takes a
file (`configs/voc12.py:runlocal`) or the name of a packaged config (`voc12:runlocal`).
"""

import contextlib
import logging as std_logging
import re
import sys
import time

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cows_jax import (
  ablate,
  classify,
  config,
  evaluate,
  export,
  inference,
  label,
  localize,
  predict,
  preemption,
  pretrain,
  run_dir,
  segment,
  synthetic_backbones,
  validation,
)

STAGES = {
  'classify': classify.train,
  'localize': localize.run,
  'label': label.run,
  'segment': segment.train,
  'evaluate': evaluate.run,
}
# Each command with its one-line description; the first group takes --config and --workdir.
RUN_COMMANDS = {
  'classify': 'stage 1: train the co-attention classifier on pairs of images',
  'localize': 'stage 2a: localization maps with cross-image context -> WORKDIR/maps',
  'label': 'stage 2b: pseudo labels from the maps (+ saliency) -> WORKDIR/pseudo_labels',
  'segment': 'stage 3: train the DeepLab segmenter on the pseudo labels (and on GT masks)',
  'evaluate': 'stage 4: mIoU of maps, pseudo labels and segmenters -> WORKDIR/reports',
  'pipeline': 'every stage in order; a rerun resumes where a killed run stopped',
  'ablate': 'the four-variant ablation of the co-attention losses and inference; --settings: '
  "the paper's data settings 1-3 x {CAM baseline, full method} over --seeds",
  'predict-split': "VOC-format PNGs of a split's predictions -> WORKDIR/predictions/SPLIT",
  'export': 'the trained segmenter (or classifier maps) as a jax.export artifact -> --out DIR',
}
PREDICT = {  # --export E, or --config and --workdir; image files or directories after the flags.
  'predict': 'label maps of image files, from an export or a run -> --out DIR',
}
CONFIG_COMMANDS = {
  'config': 'print the resolved config a run would use (after finalizing)',
  'data check': 'build the configured dataset and report its images, labels and problems',
  'summary': 'each model of the config: parameters and FLOPs per image',
  'pretrain': "the synthetic world's VGG16 backbone -> DATA_DIR/pretrained/<fingerprint>",
}
TOOL_COMMANDS = {  # their own arguments: `cows-jax weights import --help`, `cows-jax bench --help`.
  'weights import': "ImageNet weights into DIR, or the authors' trained models into WORKDIR",
  'bench': 'time train-step, segment-step, localize, inference, input (FLOP/s, MFU, --json)',
}
USAGE = (
  'usage: cows-jax COMMAND [--config NAME[:ARG] | FILE[:ARG]] [--workdir DIR] '
  '[--config.FIELD=VALUE ...]\n'
  '       cows-jax --help | cows-jax COMMAND --help'
)

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  'The config: a file (configs/voc12.py[:ARG]) or a packaged config by name '
  f'({", ".join(config.packaged_names())}[:ARG]).',
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string('workdir', None, "Directory of this run's outputs (local or gs://).")
_SPLIT = flags.DEFINE_string('split', 'test', 'predict-split: the dataset split to predict.')
_DISTRIBUTED = flags.DEFINE_bool(
  'distributed',
  False,
  'Call jax.distributed.initialize() first (several processes: TPU pod slices, several GPU '
  'hosts); the coordinator and process ids are detected (Cloud TPU) unless given below.',
)
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address', None, 'With --distributed: HOST:PORT of process 0.'
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'With --distributed: processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, "With --distributed: this process's id.")
_OUT = flags.DEFINE_string(
  'out',
  None,
  'export: the export directory; predict: the output directory; pretrain: the weights '
  'directory (default: DATA_DIR/pretrained/<fingerprint>).',
)
_PLATFORMS = flags.DEFINE_string(
  'platforms',
  None,
  f'export: comma list of platforms to lower for ({", ".join(export.PLATFORMS)}; gpu is cuda, '
  "or rocm on an AMD machine, as jax.export names them). Default: this machine's platform "
  'only; list the others an export should run on, e.g. --platforms=cpu,cuda for CPUs and '
  'NVIDIA GPUs.',
)
_MODEL = flags.DEFINE_enum(
  'model', 'segmenter', ['segmenter', 'classifier'], 'export: which trained model.'
)
_EXPORT = flags.DEFINE_string('export', None, 'predict: an export directory (`cows-jax export`).')
_OVERLAY = flags.DEFINE_bool('overlay', False, 'predict: also write <name>_overlay.png.')
_CRF = flags.DEFINE_bool('crf', False, 'predict: refine with the dense CRF (extra cows_jax[crf]).')
_SETTINGS = flags.DEFINE_bool(
  'settings',
  False,
  "ablate: the paper's data settings 1/2/3 (configs/synthetic.py, setting2, setting3) x "
  '{CAM baseline, full method}, each through the whole pipeline once per seed -> '
  'WORKDIR/reports/settings.{md,json}',
)
_SEEDS = flags.DEFINE_list(
  'seeds', ['0', '1', '2'], 'ablate --settings: the seeds (seed and localize.seed) of each run.'
)
_DISTRIBUTED_FLAGS = ('distributed', 'coordinator_address', 'num_processes', 'process_id')
_FLAGS_OF = {name: ('config', 'workdir', *_DISTRIBUTED_FLAGS) for name in RUN_COMMANDS}
_FLAGS_OF['predict-split'] += ('split',)
_FLAGS_OF['ablate'] += ('settings', 'seeds')
_FLAGS_OF['export'] += ('out', 'model', 'platforms')
_FLAGS_OF['predict'] = ('export', 'config', 'workdir', 'out', 'overlay', 'crf')
_FLAGS_OF.update({name: ('config',) for name in CONFIG_COMMANDS})
_FLAGS_OF['pretrain'] = ('config', 'out', *_DISTRIBUTED_FLAGS)


_COMMAND = ['']  # the command `run` parsed, for `main`.


def run_stage(stage: str, cfg, workdir: str) -> None:
  """One stage, or every stage for 'pipeline'."""
  names = list(STAGES) if stage == 'pipeline' else [stage]
  for name in names:
    logging.info('=== %s ===', name)
    start = time.time()
    STAGES[name](cfg, workdir)
    logging.info('=== %s: %.1f s ===', name, time.time() - start)


def _fail(command: str, error: Exception) -> None:
  """One line on stderr; exit 1, or preemption.EXIT_CODE when the job was told to stop."""
  if isinstance(error, preemption.Preempted):
    logging.warning('%s', error)
    print(f'cows-jax {command}: {error}', file=sys.stderr)
    sys.exit(preemption.EXIT_CODE)
  logging.error('%s', error)
  print(f'cows-jax {command}: error: {error}', file=sys.stderr)
  sys.exit(1)


def _validate(command: str, cfg) -> None:
  """Every problem of the config, one line each, and exit status 2 before anything runs."""
  problems = validation.problems(cfg, command)
  if problems:
    for problem in problems:
      print(f'cows-jax {command}: config: {problem}', file=sys.stderr)
    print(f'cows-jax {command}: {len(problems)} config problems, nothing was run', file=sys.stderr)
    sys.exit(2)


def _config_command(command: str) -> None:
  """`config`, `data check`, `summary`: a config and no workdir."""
  if _CONFIG.value is None:
    raise app.UsageError(f'--config is required\n{USAGE}')
  try:
    cfg = config.finalize(_CONFIG.value)
    if command == 'config':
      print(cfg)
      sys.exit(0)
    if command == 'data check':
      from cows_jax.data import check

      sys.exit(check.run(cfg))
    from cows_jax.tools import model_summary

    print(model_summary.run(cfg))
    sys.exit(0)
  except (FileNotFoundError, ValueError) as e:
    _fail(command, e)


def _initialize_distributed() -> None:
  """jax.distributed with the explicit coordinator when given; CPU processes talk over gloo."""
  import jax

  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
    coordinator_address=_COORDINATOR.value,
    num_processes=_NUM_PROCESSES.value,
    process_id=_PROCESS_ID.value,
  )


def _predict(paths: list[str]) -> None:
  """`predict`: from an export, or from the run's trained segmenter."""
  preemption.install()
  if not paths or _OUT.value is None:
    raise app.UsageError(
      'usage: cows-jax predict (--export E | --config C --workdir W) --out DIR IMAGES_OR_DIRS...'
    )
  try:
    if _EXPORT.value:
      # Images of one size go through the exported network together.
      probabilities, meta = inference.load_export(_EXPORT.value)
      crf_params = ml_collections.ConfigDict(meta['crf']) if _CRF.value else None
    elif _CONFIG.value is not None and _WORKDIR.value is not None:
      cfg = config.finalize(_CONFIG.value)
      one = inference.load_predictor(cfg, _WORKDIR.value)
      probabilities = lambda images: [one(image) for image in images]
      crf_params = cfg.crf if _CRF.value else None
    else:
      raise app.UsageError('predict needs --export E, or --config and --workdir')
    result = predict.write_files(probabilities, paths, _OUT.value, _OVERLAY.value, crf_params)
  except (FileNotFoundError, ValueError, OSError, preemption.Preempted) as e:
    _fail('predict', e)
  print(
    f'{result["written"]} label maps -> {_OUT.value}; {len(result["skipped"])} skipped'
    + ''.join(f'\n  skipped (not a readable image): {p}' for p in result['skipped'])
  )
  sys.exit(0)


def _pretrain() -> None:
  """`pretrain`: the config's backbone, made once (or reused) in DATA_DIR/pretrained/ or --out."""
  if _CONFIG.value is None:
    raise app.UsageError(f'--config is required\n{USAGE}')
  if _WORKDIR.value is not None:
    raise app.UsageError(
      'pretrain takes no --workdir: it writes to DATA_DIR/pretrained/<fingerprint>, which '
      'the config names (`cows-jax config` shows data.data_dir), or to --out DIR'
    )
  if _DISTRIBUTED.value:
    _initialize_distributed()
  preemption.install()
  try:
    provenance = pretrain.run(_CONFIG.value, _OUT.value)
  except (FileNotFoundError, ValueError, OSError, preemption.Preempted) as e:
    _fail('pretrain', e)
  out = pretrain.output_dir(_CONFIG.value, _OUT.value)
  accuracy = provenance['pretrain']['accuracy']
  print(
    f'pretrained vgg16: train accuracy {accuracy["train"]:.3f}, val accuracy '
    f'{accuracy["val"]:.3f} -> {out}'
  )
  print(f'start the classifier and the VGG16 segmenter from it with: {pretrain.config_flags(out)}')
  sys.exit(0)


def main(argv):
  command = _COMMAND[0]
  positional = argv[1 + len(command.split()) :]
  if command == 'predict':
    _predict(positional)
  if positional:
    raise app.UsageError(f'unexpected arguments {positional}\n{USAGE}')
  if command == 'pretrain':
    _pretrain()
  if command in CONFIG_COMMANDS:
    _config_command(command)
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError(f'--config and --workdir are required\n{USAGE}')
  if _DISTRIBUTED.value:
    _initialize_distributed()
  preemption.install()  # after the distributed runtime, which watches SIGTERM on several hosts.
  try:
    _validate(command, _CONFIG.value)  # before finalizing, which reads the weights' files.
    if command in validation.PRETRAINING_COMMANDS and synthetic_backbones.missing(_CONFIG.value):
      logging.info('=== pretrain (the config names its pretrained backbone; none exists yet) ===')
      pretrain.run(_CONFIG.value)
    cfg = config.finalize(_CONFIG.value)
    with _lock(_WORKDIR.value):
      _run(command, cfg)
  except (FileNotFoundError, ValueError, OSError, preemption.Preempted) as e:
    _fail(command, e)


def _lock(workdir: str):
  """The run directory's lock, held by process 0 of the job."""
  import jax

  if jax.process_index():
    return contextlib.nullcontext()
  return run_dir.Lock(run_dir.RunDir(workdir))


def _run(command: str, cfg) -> None:
  """A run command on a finalized config."""
  if command == 'ablate' and _SETTINGS.value:
    ablate.run_settings(cfg, _WORKDIR.value, STAGES, _seeds())
  elif command == 'ablate':
    if flags.FLAGS['seeds'].present:
      raise app.UsageError('--seeds goes with ablate --settings')
    ablate.run(cfg, _WORKDIR.value, STAGES)
  elif command == 'export':
    if _OUT.value is None:
      raise app.UsageError(f'export needs --out DIR\n{USAGE}')
    platforms = (
      export.parse_platforms(_PLATFORMS.value) if _PLATFORMS.value else export.default_platforms()
    )
    write = export.export_segmenter if _MODEL.value == 'segmenter' else export.export_classifier
    write(cfg, _WORKDIR.value, _OUT.value, platforms=platforms)
    logging.info('export: -> %s (%s)', _OUT.value, ', '.join(platforms))
  elif command == 'predict-split':
    predict.write_split(cfg, _WORKDIR.value, _SPLIT.value)
  else:
    run_stage(command, cfg, _WORKDIR.value)


def _seeds() -> list[int]:
  try:
    return [int(seed) for seed in _SEEDS.value]
  except ValueError:
    raise ValueError(
      f'--seeds={",".join(_SEEDS.value)}: expected comma-separated integers, e.g. --seeds=0,1,2'
    ) from None


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


def help_text(command: str | None = None) -> str:
  """The list of commands, or one command's usage and flags."""
  if command is None:
    width = max(map(len, {**RUN_COMMANDS, **PREDICT, **CONFIG_COMMANDS, **TOOL_COMMANDS}))
    lines = [USAGE, '', 'Weakly supervised semantic segmentation from image-level labels.']
    for title, table in (
      ('Run commands (--config, --workdir)', RUN_COMMANDS),
      ('Prediction (--export, or --config and --workdir)', PREDICT),
      ('Config commands (--config)', CONFIG_COMMANDS),
      ('Tools (their own arguments)', TOOL_COMMANDS),
    ):
      lines += ['', f'{title}:'] + [f'  {n:<{width}}  {d}' for n, d in table.items()]
    return '\n'.join(lines)
  lines = [
    f'usage: cows-jax {command} '
    + ' '.join(f'--{f}={f.upper()}' for f in _FLAGS_OF[command] if f not in _DISTRIBUTED_FLAGS)
    + ' [--config.FIELD=VALUE ...]'
    + (' IMAGES_OR_DIRS...' if command == 'predict' else ''),
    '',
    {**RUN_COMMANDS, **PREDICT, **CONFIG_COMMANDS}[command],
    '',
    'flags:',
  ]
  for name in _FLAGS_OF[command]:
    lines.append(f'  --{name}: {flags.FLAGS[name].help}')
  lines.append('  --config.FIELD=VALUE: set one config field (e.g. --config.classify.epochs=3)')
  return '\n'.join(lines)


def _split_command(args: list[str]) -> tuple[str | None, list[str]]:
  """(command, the rest) of the arguments; 'data check' and 'weights import' are two words."""
  if not args or args[0].startswith('-'):
    return None, args
  if args[:2] in (['data', 'check'], ['weights', 'import']):
    return ' '.join(args[:2]), args[2:]
  return args[0], args[1:]


def _resolve_config(args: list[str]) -> list[str]:
  """`--config NAME[:ARG]` of a packaged config becomes the path of its installed file."""
  out = list(args)
  for i, a in enumerate(out):
    if a == '--config' and i + 1 < len(out):
      out[i + 1] = config.resolve(out[i + 1])
    elif a.startswith('--config='):
      out[i] = '--config=' + config.resolve(a.split('=', 1)[1])
  return out


def run():
  command, rest = _split_command(sys.argv[1:])
  if command is None and (not rest or rest[0] in ('-h', '--help', '--helpfull')):
    print(help_text())
    sys.exit(0)
  if command == 'weights' or command == 'weights import':
    from cows_jax.tools import weights_import

    sys.exit(weights_import.main(sys.argv[2:]))
  if command == 'bench':
    from cows_jax.tools import bench

    sys.exit(bench.main(rest))
  if command not in {**RUN_COMMANDS, **PREDICT, **CONFIG_COMMANDS}:
    known = ', '.join({**RUN_COMMANDS, **PREDICT, **CONFIG_COMMANDS, **TOOL_COMMANDS})
    sys.exit(f'cows-jax: error: unknown command {command!r} (commands: {known})\n{USAGE}')
  if '--help' in rest or '-h' in rest:
    print(help_text(command))
    sys.exit(0)
  _COMMAND[:] = [command]
  sys.argv = [sys.argv[0], *command.split(), *_resolve_config(rest)]
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
  except (OSError, ValueError) as e:
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
