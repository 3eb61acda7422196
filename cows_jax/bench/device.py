"""`cows-jax bench device`: one command for an accelerator's few minutes, one JSON.

Each part runs in a process of its own (forked from a server that has imported the code;
neither it nor the parent starts a JAX backend, so each part has the GPU or TPU to itself)
within a bounded share of the time budget (`--budget`, 450 s: the whole ends within 8
minutes). The parts, with the paper's sizes (`--smoke`: tiny ones, on the CPU):

  devices              the JAX devices, the versions and whether they are in pyproject's
                       ranges, the optional extras found, the device's peak FLOP/s
                       (common.PEAK_TFLOPS)
  train_step_bfloat16  `bench train-step` (ours): 256 px, 5 pairs, views full, width 1
  train_step_float32   the same in float32
  train_step_torch     the PyTorch reference step of the same size (where torch is
                       installed; not with --smoke)
  segment_step         `bench segment-step`: ResNet-101 LargeFOV, crop 321, batch 1
  localize             `bench localize` (ours): 256 px, 16 query images (localize's batch)
  inference            `bench inference`: 500x375 images, the paper's test-time procedure
  input                the classifier's input pipeline (`bench input`) in pairs/s with 0 and
                       8 workers, against the train step's pairs/s
  export               `bench export` of ResNet-101 LargeFOV for this machine's platform
  pipeline             configs/synthetic.py:tiny end to end in a temporary workdir, the
                       seconds of each stage
  predict              the tiny run's segmenter exported for this machine's platform
                       (`cows-jax export`) and `cows-jax predict` through the export

segment_step, localize and inference run in bfloat16 on a GPU or TPU (what `:gpu` and `:tpu`
set) and in float32 on the CPU. A part that fails, runs past its share or needs an optional
extra that is missing becomes {"error": "one line"} or {"skipped": "reason"} and the others
still run; the JSON is rewritten after every part. `--profile DIR` writes a jax.profiler trace
of the timed steps of the training benches (DIR/PART/plugins/profile/*/HOST.xplane.pb) and of
the training stages of the tiny pipeline (DIR/pipeline/STAGE/...): `tensorboard --logdir DIR`
with tensorboard-plugin-profile opens them.
"""

import argparse
import datetime
import glob
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import signal
import sys
import tempfile
import time
import traceback

from cows_jax.bench import common
from cows_jax.bench import device_parts as parts

HELP = "an accelerator's few minutes: every bench, one JSON"
BUDGET_S = 450.0  # the parts' shares; process starts and the JSON fit in the 8 minutes.
SMOKE_BUDGET_S = 300.0  # a guard: --smoke takes about a minute.
MIN_SHARE_S = 10.0  # a part with less left is skipped.
# --smoke compiles for speed: XLA's default CPU optimization of these tiny programs takes far
# longer than running them (the flags of tests/conftest.py).
FAST_COMPILE_FLAGS = (
  '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
  ' --xla_cpu_use_fusion_emitters=false'
)

# bench's own arguments of each part: the paper's sizes, and tiny ones for --smoke. The input
# part takes the train step's size, batch and views, to compare their pairs/s.
SIZES = {
  'paper': {
    'train_step': '--size 256 --batch 5 --views full --steps 10',
    'segment_step': '--size 321 --batch 1 --steps 10',
    'localize': '--size 256 --images 16',
    'inference': '--image 500x375 --images 4',
    'input': '--images 64 --batches 20',
    'export': '--size 321',
    'predict': {'images': 8, 'image': '500x375'},
  },
  'smoke': {
    'train_step': '--size 32 --batch 1 --views pair --steps 1 --width 0.125 --classes 4',
    'segment_step': '--size 33 --steps 1 --width 0.0625 --classes 4 --stages 1,1,1,1',
    'localize': '--size 32 --images 2 --related 1 --width 0.125 --classes 4',
    'inference': '--image 40x30 --images 1 --window 24 --scales 0.75,1 --width 0.0625 '
    '--classes 4 --stages 1,1,1,1',
    'input': '--images 6 --jpeg 50x40 --batches 2',
    'export': '--size 33 --width 0.0625 --classes 4 --backbone vgg16',
    'predict': {'images': 2, 'image': '64x48'},
  },
}


# --- the parent: shares, processes of their own, the JSON ------------------------------------


def _child(conn, fn, payload: dict) -> None:
  """A part's process: its own process group (the parent ends it with every process it
  started, input workers included), its outcome sent to the parent."""
  os.setpgrp()
  parts.PROGRESS[0] = conn.send
  try:
    outcome = ('ok', fn(payload))
  except parts.Skipped as e:
    outcome = ('skipped', str(e))
  except BaseException as e:  # every failure is one line in the JSON.
    traceback.print_exc()
    outcome = ('error', parts.one_line(e))
  conn.send(outcome)
  conn.close()


def _end(process) -> None:
  """Ends a part's process and the processes it started (its process group)."""
  try:
    os.killpg(process.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    process.kill()
  process.join(10)


def _isolated(fn, payload: dict, timeout: float) -> dict:
  """fn(payload) in a process of its own given `timeout` seconds: its numbers, or {'skipped'}
  or {'error'} (with what it had measured so far); 'seconds': the part's wall time, the start
  of its process included."""
  ctx = common.fork_server_context()
  receive, send = ctx.Pipe(duplex=False)
  process = ctx.Process(target=_child, args=(send, fn, payload), daemon=False)
  start = time.monotonic()
  process.start()
  send.close()
  partial, outcome, sent = {}, None, False
  try:
    while outcome is None:
      left = start + timeout - time.monotonic()
      if left <= 0 or not receive.poll(left):
        outcome = ('error', f'ran past its share of the budget ({timeout:.0f} s) and was ended')
        break
      try:
        kind, value = receive.recv()
      except EOFError:
        process.join(10)
        outcome = ('error', f'its process ended without a result (exit code {process.exitcode})')
        break
      if kind == 'progress':
        partial = value
      else:
        outcome, sent = (kind, value), True
  finally:
    if sent:
      process.join(10)  # it has sent its outcome and ends.
    if process.is_alive():
      _end(process)
    receive.close()
  kind, value = outcome
  entry = value if kind == 'ok' else {**partial, kind: value}
  return {**entry, 'seconds': time.monotonic() - start}


def _status(entry: dict) -> str:
  return 'error' if 'error' in entry else 'skipped' if 'skipped' in entry else 'ok'


class _Run:
  """The state the parts share: sizes, the dtype the devices part found, the workdir."""

  def __init__(self, args, root: str):
    self.smoke = args.smoke
    self.sizes = SIZES['smoke' if args.smoke else 'paper']
    self.root = root
    self.profile = os.path.abspath(args.profile) if args.profile else None
    self.dtype = 'float32' if args.smoke else 'bfloat16'
    self.parts = {}

  def payload(self, part: str, argv: str = '', traced: bool = False, **extra) -> dict:
    profile = os.path.join(self.profile, part) if traced and self.profile else None
    return {
      'argv': shlex.split(argv),
      'profile': profile,
      'root': self.root,
      'smoke': self.smoke,
      **extra,
    }


def _run_devices(run: _Run, timeout: float) -> dict:
  entry = _isolated(parts.devices, run.payload('devices'), timeout)
  run.dtype = entry.get('dtype', run.dtype)
  return entry


def _run_train_step(dtype: str):
  def part(run: _Run, timeout: float) -> dict:
    argv = f'{run.sizes["train_step"]} --dtype {dtype}'
    return _isolated(parts.train_step, run.payload(f'train_step_{dtype}', argv, True), timeout)

  return part


def _run_torch(run: _Run, timeout: float) -> dict:
  if run.smoke:  # torch's start and first step take 10 to 20 s on a 2-core CPU.
    return {'skipped': '--smoke leaves out the PyTorch reference (bench train-step runs it)'}
  argv = f'{run.sizes["train_step"]} --dtype {run.dtype}'
  return _isolated(parts.torch_train_step, run.payload('train_step_torch', argv), timeout)


def _run_bench(fn, key: str, traced: bool = False):
  def part(run: _Run, timeout: float) -> dict:
    argv = f'{run.sizes[key]} --dtype {run.dtype}'
    return _isolated(fn, run.payload(key, argv, traced), timeout)

  return part


def _run_input(run: _Run, timeout: float) -> dict:
  """The pipeline's pairs/s next to the pairs/s of the train step of the same size, batch and
  views, in the dtype of this machine (the train_step part's numbers)."""
  workers = '0' if run.smoke else f'0,{min(8, os.cpu_count() or 1)}'
  step = shlex.split(run.sizes['train_step'])
  same = ' '.join(f'{k} {v}' for k, v in zip(step[::2], step[1::2]) if k != '--steps')
  argv = f'{same} {run.sizes["input"]} --workers {workers}'
  entry = _isolated(parts.input_pipeline, run.payload('input', argv), timeout)
  train = run.parts.get(f'train_step_{run.dtype}', {})
  if 'rows' in entry and 'seconds_per_step' in train:
    batch = train['settings']['batch']
    step_rate = batch / train['seconds_per_step']
    fastest = max(entry['rows'], key=lambda r: r['pairs_per_s'])
    entry.update(
      train_step_pairs_per_s=step_rate,
      train_step=f'train_step_{run.dtype}',
      pipeline_over_train_step=fastest['pairs_per_s'] / step_rate,
      limit='the train step'
      if step_rate <= fastest['pairs_per_s']
      else f'the input pipeline ({fastest["name"]})',
    )
  elif 'rows' in entry:
    entry['train_step'] = {'skipped': f'no train_step_{run.dtype} numbers to compare with'}
  return entry


def _run_export(run: _Run, timeout: float) -> dict:
  return _isolated(parts.export, run.payload('export', run.sizes['export']), timeout)


def _run_pipeline(run: _Run, timeout: float) -> dict:
  return _isolated(parts.pipeline, run.payload('pipeline', traced=True), timeout)


def _run_predict(run: _Run, timeout: float) -> dict:
  stages = run.parts.get('pipeline', {}).get('stages', {})
  if 'seconds' not in stages.get('segment', {}):
    return {'skipped': "needs the segmenter of the tiny pipeline's segment stage (part pipeline)"}
  return _isolated(parts.predict, run.payload('predict', **run.sizes['predict']), timeout)


# (name, weight, the function that runs it), in order. A part's share is the budget left times
# its weight over the weights of the parts left: what a part leaves unused goes to the next.
# The weights are a first guess (no accelerator has run them yet): a part cut short reruns
# alone with --parts NAME --budget SECONDS.
PARTS = (
  ('devices', 4, _run_devices),
  ('train_step_bfloat16', 14, _run_train_step('bfloat16')),
  ('train_step_float32', 11, _run_train_step('float32')),
  ('train_step_torch', 4, _run_torch),
  ('segment_step', 11, _run_bench(parts.segment_step, 'segment_step', traced=True)),
  ('localize', 9, _run_bench(parts.localize, 'localize')),
  ('inference', 12, _run_bench(parts.inference, 'inference')),
  ('input', 6, _run_input),
  ('export', 7, _run_export),
  ('pipeline', 20, _run_pipeline),
  ('predict', 6, _run_predict),
)
PART_NAMES = tuple(name for name, _, _ in PARTS)
# The number each part has when it ran: the test and the summary line read it.
HEADLINE = {
  'devices': 'count',
  'train_step_bfloat16': 'images_per_s',
  'train_step_float32': 'images_per_s',
  'train_step_torch': 'images_per_s',
  'segment_step': 'images_per_s',
  'localize': 'images_per_s',
  'inference': 'images_per_s',
  'input': 'rows',
  'export': 'mib',
  'pipeline': 'seconds_total',
  'predict': 'first_image_s',
}


def _profile_files(run: _Run, name: str, entry: dict) -> None:
  """The trace files a traced part wrote, in its entry."""
  directory = os.path.join(run.profile, name)
  if not os.path.isdir(directory):
    return
  found = sorted(glob.glob(os.path.join(directory, '**', '*.xplane.pb'), recursive=True))
  entry['profile'] = (
    {'dir': directory, 'xplane': [os.path.relpath(f, directory) for f in found]}
    if found
    else {'error': f'no *.xplane.pb under {directory}'}
  )


def _line(name: str, entry: dict) -> str:
  """One line of a part's outcome for the log."""
  seconds = f'({entry.get("seconds", 0):.0f} s)'
  if 'error' in entry:
    return f'{name}: error: {entry["error"]} {seconds}'
  if 'skipped' in entry:
    return f'{name}: skipped: {entry["skipped"]} {seconds}'
  if name == 'devices':
    return (
      f'{name}: {entry["count"]} x {entry["device_kind"]} ({entry["backend"]}), jax '
      f'{entry["versions"]["jax"]}, peak {entry["peak"]}, compute dtype {entry["dtype"]} {seconds}'
    )
  if 'images_per_s' in entry and 'mfu' in entry:
    tflops = '-' if entry['tflop_per_s'] is None else f'{entry["tflop_per_s"]:.3g}'
    mfu = '-' if entry['mfu'] is None else f'{100 * entry["mfu"]:.1f}%'
    return (
      f'{name}: {entry["images_per_s"]:.4g} images/s, {tflops} TFLOP/s, MFU {mfu}, first call '
      f'{entry["first_call_s"]:.1f} s, {entry["memory_mib"]:.0f} MiB {seconds}'
    )
  if name == 'input':
    rates = ', '.join(f'{r["workers"]} workers {r["pairs_per_s"]:.3g}' for r in entry['rows'])
    limit = f'; limit: {entry["limit"]}' if 'limit' in entry else ''
    return f'{name}: pairs/s: {rates}{limit} {seconds}'
  if name == 'pipeline':
    stages = ', '.join(f'{k} {v["seconds"]:.1f} s' for k, v in entry['stages'].items())
    return f'{name}: {stages} {seconds}'
  if name == 'export':
    return (
      f'{name}: {entry["platform"]}, {entry["mib"]:.1f} MiB, export {entry["export_s"]:.1f} s, '
      f'load {entry["load_s"]:.2f} s {seconds}'
    )
  if name == 'predict':
    rate = '-' if entry['images_per_s'] is None else f'{entry["images_per_s"]:.3g}'
    return (
      f'{name}: {entry["platform"]}, export {entry["export_s"]:.1f} s, first image '
      f'{entry["first_image_s"]:.1f} s, {rate} images/s {seconds}'
    )
  return f'{name}: ok {seconds}'


def _write(path: str, report: dict) -> None:
  if path:
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
      json.dump(report, f, indent=2)
      f.write('\n')
    os.replace(tmp, path)


def _parts(text: str) -> tuple[str, ...]:
  names = tuple(n.strip() for n in text.split(',') if n.strip()) if text else PART_NAMES
  unknown = [n for n in names if n not in PART_NAMES]
  if unknown:
    raise argparse.ArgumentTypeError(f'unknown parts {unknown} (parts: {", ".join(PART_NAMES)})')
  return names


def run(args) -> int:
  """Every part in order; returns 1 when a part failed (the JSON has every outcome)."""
  if args.smoke:
    os.environ['JAX_PLATFORMS'] = 'cpu'
    flags = os.environ.get('XLA_FLAGS', '')
    if FAST_COMPILE_FLAGS not in flags:
      os.environ['XLA_FLAGS'] = f'{flags} {FAST_COMPILE_FLAGS}'.strip()
  budget = args.budget or (SMOKE_BUDGET_S if args.smoke else BUDGET_S)
  selected = [part for part in PARTS if part[0] in args.parts]
  start = time.monotonic()
  report = {
    'bench': 'device',
    'smoke': args.smoke,
    'budget_s': budget,
    'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    'host': {'cpus': os.cpu_count(), 'python': platform.python_version(), 'argv': sys.argv[1:]},
    'parts': {},
  }
  if args.profile:
    viewer = any(importlib.util.find_spec(parts.EXTRAS[k][0]) for k in ('profile_viewer', 'xprof'))
    report['profile'] = {
      'dir': os.path.abspath(args.profile),
      'open_with': f'tensorboard --logdir {os.path.abspath(args.profile)} (with '
      'tensorboard-plugin-profile), or xprof',
      'viewer_installed_here': viewer,
    }
  print(f'bench device: {len(selected)} parts within {budget:.0f} s' + ' (smoke)' * args.smoke)
  with tempfile.TemporaryDirectory(prefix='cows_bench_device_') as root:
    run_ = _Run(args, root)
    for i, (name, _, part) in enumerate(selected):
      left = start + budget - time.monotonic()
      share = left * selected[i][1] / sum(weight for _, weight, _ in selected[i:])
      if share < MIN_SHARE_S:
        entry = {'skipped': f'{left:.0f} s of the {budget:.0f} s budget left'}
      else:
        entry = part(run_, share)
        if run_.profile:
          _profile_files(run_, name, entry)
      run_.parts[name] = report['parts'][name] = entry
      print(f'bench device: {_line(name, entry)}', flush=True)
      report['seconds'] = time.monotonic() - start
      _write(args.json, report)
  outcomes = {name: _status(entry) for name, entry in report['parts'].items()}
  report['summary'] = {
    k: [n for n, status in outcomes.items() if status == k] for k in ('ok', 'skipped', 'error')
  }
  report['seconds'] = time.monotonic() - start
  _write(args.json, report)
  print(
    f'bench device: {len(report["summary"]["ok"])} ok, {len(report["summary"]["skipped"])} '
    f'skipped, {len(report["summary"]["error"])} failed in {report["seconds"]:.0f} s'
    + (f' -> {args.json}' if args.json else '')
  )
  return 1 if report['summary']['error'] else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.description = __doc__.split('\n')[0]
  parser.add_argument(
    '--json', default='', metavar='FILE', help='write every outcome to this JSON file'
  )
  parser.add_argument(
    '--profile',
    default='',
    metavar='DIR',
    help='a jax.profiler trace of the training steps and stages into DIR/PART',
  )
  parser.add_argument(
    '--smoke', action='store_true', help='every part at tiny sizes on the CPU (about a minute)'
  )
  parser.add_argument(
    '--budget',
    type=float,
    default=0.0,
    metavar='SECONDS',
    help=f'seconds shared by the parts (default {BUDGET_S:.0f}; --smoke {SMOKE_BUDGET_S:.0f})',
  )
  parser.add_argument(
    '--parts',
    type=_parts,
    default=PART_NAMES,
    metavar='P,Q,...',
    help=f'a comma list of parts (default all: {", ".join(PART_NAMES)})',
  )


def main(argv) -> int:
  parser = argparse.ArgumentParser(prog='cows-jax bench device', description=__doc__.split('\n')[0])
  add_arguments(parser)
  return run(parser.parse_args(argv))


if __name__ == '__main__':
  raise SystemExit(main(sys.argv[1:]))
