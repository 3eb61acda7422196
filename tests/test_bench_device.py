"""`cows-jax bench device --smoke` writes one JSON in which every part has its numbers or the
reason it was skipped, and `--profile` leaves traces that TensorBoard's profiler opens; a part
that fails or runs past its share is one line in the JSON, and the run goes on."""

import glob
import json
import os
import subprocess
import sys
import time

from cows_jax.bench import device as bench_device
from cows_jax.bench import device_parts

TIMED = (
  'train_step_bfloat16',
  'train_step_float32',
  'train_step_torch',
  'segment_step',
  'localize',
  'inference',
)


def test_smoke_writes_every_part_with_numbers_or_a_reason_and_profiles(tmp_path):
  from cows_jax import cli

  exe = os.path.join(os.path.dirname(sys.executable), 'cows-jax')
  path, profile = tmp_path / 'device.json', tmp_path / 'profile'
  command = [exe, 'bench', 'device', '--smoke', '--json', str(path), '--profile', str(profile)]
  done = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
  report = json.loads(path.read_text())
  parts = report['parts']
  assert tuple(parts) == bench_device.PART_NAMES and report['smoke']
  for name, entry in parts.items():
    assert 'error' not in entry, (name, entry)
    if 'skipped' in entry:
      assert isinstance(entry['skipped'], str) and entry['skipped'], (name, entry)
    else:
      assert entry[bench_device.HEADLINE[name]], (name, entry)
    assert f'bench device: {name}: ' in done.stdout
  assert report['summary']['error'] == [] and 'train_step_torch' in report['summary']['skipped']
  assert parts['devices']['backend'] == 'cpu' and parts['devices']['dtype'] == 'float32'
  for name in TIMED:
    entry = parts[name]
    if 'skipped' not in entry:
      assert entry['images_per_s'] > 0 and entry['tflop_per_s'] > 0, (name, entry)
      assert entry['mfu'] is None and entry['peak'] == 'unknown', (name, entry)  # the CPU.
  assert parts['train_step_bfloat16']['dtype'] == 'bfloat16'
  assert parts['input']['rows'][0]['pairs_per_s'] > 0 and 'limit' in parts['input']
  stages = parts['pipeline']['stages']
  assert list(stages) == ['data', *cli.STAGES] and all(s['seconds'] > 0 for s in stages.values())
  assert parts['export']['platform'] == parts['predict']['platform'] == 'cpu'
  assert parts['predict']['images_per_s'] > 0
  traced = ['train_step_bfloat16', 'train_step_float32', 'segment_step', 'pipeline']
  for name in traced:
    assert parts[name]['profile']['xplane'], (name, parts[name])
  found = glob.glob(str(profile / '**' / '*.xplane.pb'), recursive=True)
  for run in ('train_step_float32', 'segment_step', 'pipeline/classify', 'pipeline/segment'):
    assert any(f'/{run}/plugins/profile/' in f for f in found), (run, found)


def _fails(payload):
  raise ValueError(f'no such thing\nsecond line {payload["argv"]}')


def _hangs(payload):
  """Starts a process of its own (as the input part's workers), reports, hangs."""
  sleeper = subprocess.Popen(['sleep', '600'])
  device_parts._progress({'stages': {'data': {'seconds': 1.0}}, 'pids': [os.getpid(), sleeper.pid]})
  time.sleep(600)


def _gone(pid: int) -> bool:
  """Whether the process has ended (a zombie not yet reaped counts as ended)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().split(')')[-1].split()[0] == 'Z'
  except FileNotFoundError:
    return True


def test_a_failing_or_hanging_part_is_one_line_and_ended():
  entry = bench_device._isolated(_fails, {'argv': []}, 60)
  assert entry['error'] == 'ValueError: no such thing' and entry['seconds'] > 0
  start = time.monotonic()
  entry = bench_device._isolated(_hangs, {}, 5)
  assert time.monotonic() - start < 30
  assert entry['error'].startswith('ran past its share of the budget (5 s)'), entry
  assert entry['stages'] == {'data': {'seconds': 1.0}}  # what it had measured is kept.
  deadline = time.monotonic() + 10
  while not all(map(_gone, entry['pids'])) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert all(map(_gone, entry['pids'])), entry['pids']  # the part and what it started.
