"""`cows-jax COMMAND ...`: the one entry point. `cows-jax --help` lists the commands.

Stages run in order classify -> localize -> label -> segment -> evaluate; `pipeline` runs
them all. Each stage reads the previous stage's outputs from the workdir and skips work
whose complete outputs exist, so rerunning a stage or the pipeline resumes. `--config` takes a
file (`configs/voc12.py:runlocal`) or the name of a packaged config (`voc12:runlocal`).
"""

import contextlib
import dataclasses
import functools
import logging as std_logging
import os
import re
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cows_jax import (
  ablate,
  config,
  export,
  host_pool,
  inference,
  predict,
  preemption,
  run_dir,
  validation,
)
from cows_jax.configs.defaults import SCHEMA
from cows_jax.imagenet_standin import train as standin_train
from cows_jax.stages import STAGES, run_stage  # noqa: F401  (cli.STAGES, cli.run_stage)

USAGE = (
  'usage: cows-jax COMMAND [--config NAME[:ARG] | FILE[:ARG]] [--workdir DIR] '
  '[--config.FIELD=VALUE ...]\n'
  '       cows-jax --help | cows-jax COMMAND --help'
)
# `--help` lists the commands under these titles, in this order.
GROUPS = {
  'run': 'Run commands (--config, --workdir)',
  'predict': 'Prediction (--export, or --config and --workdir)',
  'config': 'Config commands (--config)',
  'tool': 'Tools (their own arguments)',
}
# The errors cows_jax raises for a config or input problem (a one-line message says it all).
EXPECTED = (FileNotFoundError, ValueError, OSError)
# Set (or --traceback) to print the traceback of an unexpected error on stderr too.
TRACEBACK_ENV = 'COWS_JAX_TRACEBACK'

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
_HOST_WORKERS = flags.DEFINE_integer(
  'host_workers',
  None,
  'predict: processes for the CRF and threads for the PNG writes (1: serial; 0: every core; '
  "default: the config's host_workers, or every core with --export).",
  lower_bound=0,
)
_SETTINGS = flags.DEFINE_bool(
  'settings',
  False,
  "ablate: the paper's data settings 1/2/3 (configs/synthetic.py, setting2, setting3) x "
  '{CAM baseline, full method}, each through the whole pipeline once per seed -> '
  'WORKDIR/reports/settings.{md,json}',
)
_SEEDS = flags.DEFINE_list(
  'seeds',
  ['0', '1', '2'],
  'ablate: the seeds (seed and localize.seed) of each run; given without --settings, every '
  'variant once per seed and the paired analysis -> WORKDIR/reports/ablation_seeds.{md,json}',
)
_VARIANTS = flags.DEFINE_list(
  'variants',
  [v.slug for v in ablate.VARIANTS],
  'ablate (without --settings): the variants to run, default all; recorded ones are skipped, '
  'so jobs given the variants of different classifiers can share WORKDIR (docs/ablation.md)',
)
_TRACEBACK = flags.DEFINE_bool(
  'traceback',
  False,
  f'Print the traceback of an unexpected error on stderr too (or set {TRACEBACK_ENV}=1); it is '
  'always written to a file the error line names.',
)
_HELP_FIELDS = flags.DEFINE_bool(
  'help-fields',
  False,
  'config: print every config field (name, default, allowed values, meaning) and the renamed '
  'ones, from configs/defaults.py; needs no --config.',
)
_DISTRIBUTED_FLAGS = ('distributed', 'coordinator_address', 'num_processes', 'process_id')
_RUN_FLAGS = ('config', 'workdir', *_DISTRIBUTED_FLAGS, 'traceback')


@dataclasses.dataclass(frozen=True)
class Command:
  """One command: what `--help` says of it, the flags it takes, and the function that runs it
  (on the positional arguments after the flags). A tool parses its own arguments: `run`
  gets them all and returns the exit status."""

  name: str
  help: str
  group: str  # a key of GROUPS.
  flags: tuple[str, ...] = ()
  run: Callable[..., Any] | None = None
  positional: str = ''  # the positional arguments in the usage line.
  own_arguments: bool = False


def _fail(command: str, error: Exception) -> None:
  """One line on stderr; exit 1, or preemption.EXIT_CODE when the job was told to stop.
  An error that is not one cows_jax reports itself (a config or input problem: EXPECTED,
  raised in this package) is unexpected: its traceback goes to a file the line names (and to
  stderr with --traceback or COWS_JAX_TRACEBACK=1)."""
  if isinstance(error, preemption.Preempted):
    logging.warning('%s', error)
    print(f'cows-jax {command}: {error}', file=sys.stderr)
    sys.exit(preemption.EXIT_CODE)
  text = _one_line(error) or type(error).__name__
  if not isinstance(error, EXPECTED) or _raised_outside_cows_jax(error):
    trace = ''.join(traceback.format_exception(error))
    where = _write_traceback(command, trace)
    if _TRACEBACK.value or os.environ.get(TRACEBACK_ENV):
      print(trace, file=sys.stderr, end='')
    text = f'{type(error).__name__}: {text} (unexpected; traceback in {where})'
  logging.error('%s', text)
  print(f'cows-jax {command}: error: {text}', file=sys.stderr)
  sys.exit(1)


def _raised_outside_cows_jax(error: BaseException) -> bool:
  """Whether the innermost frame of the error's traceback is outside this package."""
  tb = error.__traceback__
  if tb is None:
    return False
  while tb.tb_next is not None:
    tb = tb.tb_next
  package = os.path.dirname(os.path.abspath(__file__))
  return not os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package + os.sep)


def _write_traceback(command: str, trace: str) -> str:
  """The traceback in the run's logs (WORKDIR/logs/traceback-<command>-<time>.txt), or in the
  temporary directory without a workdir; returns where."""
  import jax

  name = f'traceback-{command.replace(" ", "_")}-{time.strftime("%Y%m%d-%H%M%S")}'
  name += f'-p{jax.process_index()}.txt' if jax.process_count() > 1 else '.txt'
  try:
    if flags.FLAGS.is_parsed() and flags.FLAGS['workdir'].value:
      target = run_dir.RunDir(flags.FLAGS['workdir'].value).root / 'logs' / name
      run_dir.write_text(target, trace)
      return str(target)
  except OSError:  # an unwritable workdir: the temporary directory below.
    pass
  target = os.path.join(tempfile.gettempdir(), f'cows_jax-{name}')
  with open(target, 'w') as f:
    f.write(trace)
  return target


def _validate(command: str, cfg) -> None:
  """Every problem of the config, one line each, and exit status 2 before anything runs."""
  problems = validation.problems(cfg, command)
  if problems:
    for problem in problems:
      print(f'cows-jax {command}: config: {problem}', file=sys.stderr)
    print(f'cows-jax {command}: {len(problems)} config problems, nothing was run', file=sys.stderr)
    sys.exit(2)


def _require(names: tuple[str, ...]) -> None:
  missing = [f'--{n}' for n in names if flags.FLAGS[n].value is None]
  if missing:
    raise app.UsageError(f'{" and ".join(missing)} required\n{USAGE}')


def _no_positional(positional: list[str]) -> None:
  if positional:
    raise app.UsageError(f'unexpected arguments {positional}\n{USAGE}')


def _config_command(command: str) -> Callable[[list[str]], None]:
  """`config`, `data check`, `summary`: a config and no workdir."""

  def run(positional: list[str]) -> None:
    _no_positional(positional)
    if command == 'config' and _HELP_FIELDS.value:
      print(SCHEMA.text())
      sys.exit(0)
    _require(('config',))
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

  return run


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
  if _EXPORT.value:
    # Images of one size go through the exported network together.
    probabilities, meta = inference.load_export(_EXPORT.value)
    crf_params = ml_collections.ConfigDict(meta['crf']) if _CRF.value else None
    workers = host_pool.cores()
  elif _CONFIG.value is not None and _WORKDIR.value is not None:
    cfg = config.finalize(_CONFIG.value)
    one = inference.load_predictor(cfg, _WORKDIR.value)
    probabilities = lambda images: [one(image) for image in images]
    crf_params = cfg.crf if _CRF.value else None
    workers = host_pool.workers(cfg)
  else:
    raise app.UsageError('predict needs --export E, or --config and --workdir')
  if _HOST_WORKERS.value is not None:
    workers = host_pool.count(_HOST_WORKERS.value)
  result = predict.write_files(
    probabilities, paths, _OUT.value, _OVERLAY.value, crf_params, workers=workers
  )
  print(
    f'{result["written"]} label maps -> {_OUT.value}; {len(result["skipped"])} skipped'
    + ''.join(f'\n  skipped (not a readable image): {p}' for p in result['skipped'])
  )
  sys.exit(0)


def _pretrain(positional: list[str]) -> None:
  """`pretrain`: the config's backbone, made once (or reused) in DATA_DIR/pretrained/ or --out."""
  _no_positional(positional)
  _require(('config',))
  if _DISTRIBUTED.value:
    _initialize_distributed()
  preemption.install()
  provenance = standin_train.run(_CONFIG.value, _OUT.value)
  out = standin_train.output_dir(_CONFIG.value, _OUT.value)
  accuracy = provenance['pretrain']['accuracy']
  print(
    f'pretrained vgg16: train accuracy {accuracy["train"]:.3f}, val accuracy '
    f'{accuracy["val"]:.3f} -> {out}'
  )
  print(
    f'start the classifier and the VGG16 segmenter from it with: {standin_train.config_flags(out)}'
  )
  sys.exit(0)


def _stage_command(command: str, action: Callable) -> Callable[[list[str]], None]:
  """A run command: the config validated, the backbone it names made if missing, the run
  directory locked, then `action(cfg)` on the finalized config."""

  def run(positional: list[str]) -> None:
    _no_positional(positional)
    _require(('config', 'workdir'))
    if _DISTRIBUTED.value:
      _initialize_distributed()
    preemption.install()  # after the distributed runtime, which watches SIGTERM on several hosts.
    _validate(command, _CONFIG.value)  # before finalizing, which reads the weights' files.
    if command in validation.PRETRAINING_COMMANDS:
      standin_train.make_if_missing(_CONFIG.value)
    cfg = config.finalize(_CONFIG.value)
    with contextlib.nullcontext() if _locks_what_runs(command) else _lock(_WORKDIR.value):
      action(cfg)

  return run


def _lock(workdir: str):
  """The run directory's lock, held by process 0 of the job."""
  import jax

  if jax.process_index():
    return contextlib.nullcontext()
  return run_dir.Lock(run_dir.RunDir(workdir))


def _locks_what_runs(command: str) -> bool:
  """`ablate` without --settings locks each classifier's run and each variant's directory
  while it runs (ablate.run), not WORKDIR: jobs with other seeds or other classifiers' variants
  can share the directory, one per GPU or CPU core."""
  return command == 'ablate' and not _SETTINGS.value


def _ablate(cfg) -> None:
  if _SETTINGS.value:
    if flags.FLAGS['variants'].present:
      raise app.UsageError('--variants: not with --settings, which runs its own two variants')
    ablate.run_settings(cfg, _WORKDIR.value, STAGES, _seeds())
    return
  variants = [ablate.variant(slug) for slug in _VARIANTS.value]
  if flags.FLAGS['seeds'].present:
    ablate.run_seeds(cfg, _WORKDIR.value, STAGES, _seeds(), variants, lock=_lock)
    return
  ablate.run(cfg, _WORKDIR.value, STAGES, variants, lock=_lock)


def _export(cfg) -> None:
  if _OUT.value is None:
    raise app.UsageError(f'export needs --out DIR\n{USAGE}')
  platforms = (
    export.parse_platforms(_PLATFORMS.value) if _PLATFORMS.value else export.default_platforms()
  )
  write = export.export_segmenter if _MODEL.value == 'segmenter' else export.export_classifier
  write(cfg, _WORKDIR.value, _OUT.value, platforms=platforms)
  logging.info('export: -> %s (%s)', _OUT.value, ', '.join(platforms))


def _seeds() -> list[int]:
  try:
    return [int(seed) for seed in _SEEDS.value]
  except ValueError:
    raise ValueError(
      f'--seeds={",".join(_SEEDS.value)}: expected comma-separated integers, e.g. --seeds=0,1,2'
    ) from None


def _weights_import(argv: list[str]) -> int:
  from cows_jax.tools import weights_import

  return weights_import.main(argv)


def _bench(argv: list[str]) -> int:
  from cows_jax.bench import main

  return main.main(argv)


def _stage(name: str, help: str, *extra: str, action: Callable | None = None) -> Command:
  """A run command; `action(cfg)` defaults to the stage (or every stage, for pipeline)."""
  action = action or (lambda cfg: run_stage(name, cfg, _WORKDIR.value))
  return Command(name, help, 'run', (*_RUN_FLAGS, *extra), _stage_command(name, action))


def _config_only(name: str, help: str, *extra: str) -> Command:
  return Command(name, help, 'config', ('config', *extra, 'traceback'), _config_command(name))


# The commands, in the order `--help` lists them: help, dispatch and the flags each takes
# are read from here, so a new command is one entry.
COMMANDS = {
  c.name: c
  for c in (
    _stage('classify', 'stage 1: train the co-attention classifier on pairs of images'),
    _stage('localize', 'stage 2a: localization maps with cross-image context -> WORKDIR/maps'),
    _stage('label', 'stage 2b: pseudo labels from the maps (+ saliency) -> WORKDIR/pseudo_labels'),
    _stage(
      'segment', 'stage 3: train the DeepLab segmenter on the pseudo labels (and on GT masks)'
    ),
    _stage('evaluate', 'stage 4: mIoU of maps, pseudo labels and segmenters -> WORKDIR/reports'),
    _stage('pipeline', 'every stage in order; a rerun resumes where a killed run stopped'),
    _stage(
      'ablate',
      'the ablation of the co-attention losses and inference, with its controls (--seeds: '
      "once per seed, with the paired analysis); --settings: the paper's data settings 1-3 x "
      '{CAM baseline, full method} over --seeds',
      'settings',
      'seeds',
      action=_ablate,
    ),
    _stage(
      'predict-split',
      "VOC-format PNGs of a split's predictions -> WORKDIR/predictions/SPLIT",
      'split',
      action=lambda cfg: predict.write_split(cfg, _WORKDIR.value, _SPLIT.value),
    ),
    _stage(
      'export',
      'the trained segmenter (or classifier maps) as a jax.export artifact -> --out DIR',
      'out',
      'model',
      'platforms',
      action=_export,
    ),
    Command(
      'predict',
      'label maps of image files, from an export or a run -> --out DIR',
      'predict',
      ('export', 'config', 'workdir', 'out', 'overlay', 'crf', 'traceback'),
      _predict,
      positional='IMAGES_OR_DIRS...',
    ),
    _config_only(
      'config',
      'print the resolved config a run would use (after finalizing); --help-fields: every field',
      'help-fields',
    ),
    _config_only(
      'data check', 'build the configured dataset and report its images, labels and problems'
    ),
    _config_only('summary', 'each model of the config: parameters and FLOPs per image'),
    Command(
      'pretrain',
      "the synthetic world's VGG16 backbone -> DATA_DIR/pretrained/<fingerprint>",
      'config',
      ('config', 'out', *_DISTRIBUTED_FLAGS, 'traceback'),
      _pretrain,
    ),
    Command(
      'weights import',
      "ImageNet weights into DIR, or the authors' trained models into WORKDIR",
      'tool',
      run=_weights_import,
      own_arguments=True,
    ),
    Command(
      'bench',
      'time train-step, segment-step, localize, inference, input, evaluate; device: all of '
      'them on an accelerator in one run (FLOP/s, MFU, --json)',
      'tool',
      run=_bench,
      own_arguments=True,
    ),
  )
}
# Every flag some command takes: one a command does not take is an error, not ignored.
_ALL_FLAGS = tuple(dict.fromkeys(f for c in COMMANDS.values() for f in c.flags))


def _check_flags(command: Command) -> None:
  """Exit 2 naming a flag the command does not take (instead of ignoring it)."""
  given = [f for f in _ALL_FLAGS if flags.FLAGS[f].present and f not in command.flags]
  if given:
    takes = ', '.join(f'--{f}' for f in command.flags)
    print(
      f'cows-jax {command.name}: error: --{given[0]} is not a flag of {command.name} '
      f'(its flags: {takes})',
      file=sys.stderr,
    )
    sys.exit(2)


def _main(command: Command, argv: list[str]) -> None:
  positional = argv[1 + len(command.name.split()) :]
  _check_flags(command)
  try:
    command.run(positional)
  except app.UsageError:
    raise
  except Exception as e:  # one line for each; a traceback file for the unexpected ones.
    _fail(command.name, e)


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
    width = max(map(len, COMMANDS))
    lines = [USAGE, '', 'Weakly supervised semantic segmentation from image-level labels.']
    for group, title in GROUPS.items():
      lines += ['', f'{title}:']
      lines += [f'  {c.name:<{width}}  {c.help}' for c in COMMANDS.values() if c.group == group]
    return '\n'.join(lines)
  c = COMMANDS[command]
  shown = [f for f in c.flags if f not in (*_DISTRIBUTED_FLAGS, 'traceback')]
  lines = [
    f'usage: cows-jax {command} '
    + ' '.join(f'--{f}={f.upper()}' for f in shown)
    + ' [--config.FIELD=VALUE ...]'
    + (f' {c.positional}' if c.positional else ''),
    '',
    c.help,
    '',
    'flags:',
  ]
  for name in c.flags:
    lines.append(f'  --{name}: {flags.FLAGS[name].help}')
  lines.append('  --config.FIELD=VALUE: set one config field (e.g. --config.classify.epochs=3)')
  return '\n'.join(lines)


def _split_command(args: list[str]) -> tuple[str | None, list[str]]:
  """(command, the rest) of the arguments; 'data check' and 'weights import' are two words."""
  if not args or args[0].startswith('-'):
    return None, args
  if ' '.join(args[:2]) in COMMANDS:
    return ' '.join(args[:2]), args[2:]
  if args[0] == 'weights':  # `cows-jax weights --help`: the import tool's own help.
    return 'weights import', args[1:]
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
  name, rest = _split_command(sys.argv[1:])
  if name is None and (not rest or rest[0] in ('-h', '--help', '--helpfull')):
    print(help_text())
    sys.exit(0)
  if name not in COMMANDS:
    sys.exit(
      f'cows-jax: error: unknown command {name!r} (commands: {", ".join(COMMANDS)})\n{USAGE}'
    )
  command = COMMANDS[name]
  if command.own_arguments:
    sys.exit(
      command.run(sys.argv[1 + len(name.split()) :] if name != 'weights import' else sys.argv[2:])
    )
  if '--help' in rest or '-h' in rest:
    print(help_text(name))
    sys.exit(0)
  argv = [sys.argv[0], *name.split(), *_resolve_config(rest)]
  logging.set_verbosity(logging.INFO)
  logging.get_absl_logger().addFilter(_QuietLibraries())
  try:
    app.run(functools.partial(_main, command), argv=argv, flags_parser=_parse_flags)
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
