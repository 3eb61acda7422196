"""Every stage on every process and device, as a pod runs it: the tiny pipeline as 2 processes
x 2 CPU devices each (jax.distributed on localhost, started with the CLI's explicit
coordinator flags) writes what 1 process x 1 device writes, from the shipped pretrained
backbone (every real config starts from ImageNet weights) and from scratch. SIGTERM to every
process stops each stage at a safe point with exit 75, and the reruns end where an
uninterrupted run ends, bit for bit."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from cows_jax import cli, config, preemption, run_dir

EXE = os.path.join(os.path.dirname(sys.executable), 'cows-jax')
# Training reduces over 4 devices instead of 1: sums in another order, so float results differ
# in their last bits; everything downstream of the classifier is compared within these.
MAP_ATOL = 0.5  # maps are 0..255.
MIOU_ATOL = 0.5  # percent.
# A pseudo label flips where a map sits at a threshold (0.3, 0.95, 0.99 of its range); maps
# within MAP_ATOL leave at most this fraction of an image's pixels on another side.
LABEL_FLIPS = 0.01


# Localize 4 maps at a time (16 per process), so that a stop lands between two batches; the
# pseudo-label segmenter only (the ground-truth one trains the same way).
PRETRAINED_FIELDS = {'localize.batch_size': 4, 'segment.supervisions': ('pseudo',)}
PRETRAINED = ('--config', 'synthetic:tiny_pretrained') + tuple(
  f'--config.{k}={v}' for k, v in PRETRAINED_FIELDS.items()
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(command: str, workdir: str, data_dir, *args: str, devices: int = 2):
  """`cows-jax command` as 2 processes of `devices` CPU devices each, one job."""
  flags = f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={devices}'
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
  port = _free_port()
  return [
    subprocess.Popen(
      [
        EXE,
        command,
        '--workdir',
        workdir,
        *args,  # --config first, then its overrides.
        f'--config.data.data_dir={data_dir}',
        '--distributed',
        f'--coordinator_address=localhost:{port}',
        '--num_processes=2',
        f'--process_id={i}',
      ],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


def _finish(procs) -> list[str]:
  """Each process's stderr, once both exited 0."""
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  return [err for _, err in outs]


def _assert_same_outputs(reference: str, workdir: str, map_atol: float, label_flips: float):
  a, b = run_dir.RunDir(reference), run_dir.RunDir(workdir)
  ids = run_dir.read_json(a.labels_index(), 'label')['ids']
  assert run_dir.read_json(b.labels_index(), 'label')['ids'] == ids
  for i in ids:
    for x, y in zip(run_dir.load_maps(a.map_file(i)), run_dir.load_maps(b.map_file(i))):
      np.testing.assert_allclose(x, y, atol=map_atol, rtol=0)
    la, lb = run_dir.read_label_png(a.label_file(i)), run_dir.read_label_png(b.label_file(i))
    assert np.mean(la != lb) <= label_flips, (i, np.mean(la != lb))


def _summary(workdir: str) -> dict:
  summary = json.loads((run_dir.RunDir(workdir).reports() / 'summary.json').read_text())
  return {k: v for k, v in summary.items() if k.endswith(('_miou', '_crf'))}


@pytest.fixture(scope='module')
def pretrained_runs(tmp_path_factory):
  """(data dir, 1 process x 1 device, 2 processes x 2 devices): the tiny pipeline from the
  shipped pretrained backbone."""
  base = tmp_path_factory.mktemp('pretrained_runs')
  cfg = config.load('synthetic:tiny_pretrained')
  cfg.data.data_dir = str(base / 'data')
  for field, value in PRETRAINED_FIELDS.items():
    section, name = field.split('.')
    cfg[section][name] = value
  cli.run_stage('pipeline', cfg, str(base / 'one'))
  errs = _finish(_start('pipeline', str(base / 'two'), base / 'data', *PRETRAINED))
  assert '4 devices' in errs[0]
  return base / 'data', str(base / 'one'), str(base / 'two')


def test_two_processes_from_the_pretrained_backbone_write_what_one_device_writes(
  pretrained_runs,
):
  _, one, two = pretrained_runs
  _assert_same_outputs(one, two, MAP_ATOL, LABEL_FLIPS)
  summary_one, summary_two = _summary(one), _summary(two)
  assert summary_one.keys() == summary_two.keys() and summary_one
  for key, value in summary_one.items():
    assert abs(summary_two[key] - value) <= MIOU_ATOL, (key, value, summary_two[key])


def _stop_both_on(procs, line_marker: str) -> list[str]:
  """SIGTERM to both processes once process 0 logs `line_marker`; each stderr after both
  exit 75 (preemption.EXIT_CODE)."""
  lines = []
  for line in procs[0].stderr:
    lines.append(line)
    if line_marker in line:
      for p in procs:
        p.send_signal(signal.SIGTERM)
      break
  else:
    raise AssertionError(f'{line_marker!r} never logged:\n' + ''.join(lines[-20:]))
  errs = [''.join(lines) + procs[0].stderr.read(), procs[1].stderr.read()]
  for p, err in zip(procs, errs):
    assert p.wait(timeout=300) == preemption.EXIT_CODE, err[-3000:]
    assert 'Traceback' not in err and 'stopped on request' in err
  return errs


def test_sigterm_to_every_process_in_classify_and_localize_then_reruns_equal_one_run(
  pretrained_runs, tmp_path
):
  data, _, straight = pretrained_runs
  workdir = str(tmp_path / 'stopped')
  args = (*PRETRAINED, '--config.classify.log_every_steps=1')
  errs = _stop_both_on(_start('classify', workdir, data, *args), '[5/14]')
  steps = {int(e.rsplit('stopped on request at step ', 1)[1].split(';')[0]) for e in errs}
  assert len(steps) == 1 and 5 <= min(steps) < 14, steps  # both at one step, checkpointed.
  assert str(min(steps)) in os.listdir(run_dir.RunDir(workdir).classifier())

  _stop_both_on(_start('pipeline', workdir, data, *args), '=== localize ===')
  maps = os.listdir(run_dir.RunDir(workdir).maps())
  assert 0 < len(maps) < 32 and not run_dir.RunDir(workdir).maps_index().exists()

  # The stages after localize read only its maps, and their own stops are tested on one
  # process (test_reliability.py): the rerun ends with localize.
  _finish(_start('localize', workdir, data, *args))
  a, b = run_dir.RunDir(straight), run_dir.RunDir(workdir)
  ids = run_dir.read_json(a.maps_index(), 'localize')['ids']
  assert run_dir.read_json(b.maps_index(), 'localize')['ids'] == ids and len(ids) == 32
  for i in ids:
    for x, y in zip(run_dir.load_maps(a.map_file(i)), run_dir.load_maps(b.map_file(i))):
      np.testing.assert_array_equal(x, y, err_msg=i)


def test_two_processes_of_two_devices_from_scratch_write_what_one_device_writes(tiny_run, tmp_path):
  _, reference = tiny_run
  workdir = str(tmp_path / 'run')
  supervisions = "--config.segment.supervisions=('pseudo',)"  # the pseudo-label segmenter.
  args = ('--config', 'synthetic:tiny', supervisions)
  errs = _finish(_start('pipeline', workdir, tmp_path / 'data', *args))
  assert '4 devices' in errs[0]
  _assert_same_outputs(reference, workdir, MAP_ATOL, label_flips=0)
  summary_one, summary_two = _summary(reference), _summary(workdir)
  assert summary_two and summary_two.keys() < summary_one.keys()
  for key, value in summary_two.items():
    assert abs(value - summary_one[key]) <= MIOU_ATOL, (key, summary_one[key], value)


def test_voc12_runlocal_pipeline_with_the_papers_5_pairs_on_8_devices(tmp_path):
  import data_fixtures as fx

  fx.make_voc(str(tmp_path / 'voc'))
  flags = f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count=8'
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
  overrides = {
    'data.manual_dir': tmp_path / 'voc',
    'data.saliency_dir': tmp_path / 'voc' / 'saliency',
    'data.data_dir': tmp_path / 'built',
    'classify.batch_pairs': 5,  # the paper's, on 8 devices.
    'data.image_size': 32,
    'input.size': 32,
    'segment.crop_size': 32,
    'segment.iterations': 3,
    'classify.epochs': 2,
    'classify.lr_decay_epochs': '(1,)',
    'localize.after_epochs': 2,
  }
  cmd = [EXE, 'pipeline', '--config', 'voc12:runlocal', '--workdir', str(tmp_path / 'run')]
  cmd += [f'--config.{k}={v}' for k, v in overrides.items()]
  done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-4000:]
  assert '8 devices' in done.stderr
  summary = json.loads((tmp_path / 'run' / 'reports' / 'summary.json').read_text())
  assert 0 <= summary['segmentation_miou'] <= 100


def test_two_processes_localize_with_the_authors_imported_classifier(tmp_path):
  """`cows-jax weights import` of the reference's trained classifier (a .pth made here with
  random weights in its layout), then localize on 2 processes x 2 devices from that run
  directory and its imported-weights directory (model.init_from): the maps of one process."""
  torch = pytest.importorskip('torch', reason='torch is not installed: .ci/run installs it')
  import authors_models as am

  from cows_jax.tools import weights_import

  src = str(tmp_path / 'c.pth')
  torch.save(
    am.training_checkpoint(am.random_coattention(8, 64, 10), epoch=1, global_counter=8), src
  )
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  fields = {}
  for workdir in (one, two):
    trained = weights_import.import_trained('coattention_vgg16', src, workdir)['trained_model']
    fields[workdir] = {'model.init_from': trained['init_from'], **trained['config']}
  cfg = config.load('synthetic:tiny')
  cfg.data.data_dir = str(tmp_path / 'data')
  for field, value in fields[one].items():
    section, name = field.split('.')
    cfg[section][name] = value
  cli.run_stage('localize', cfg, one)
  args = ('--config', 'synthetic:tiny', *(f'--config.{k}={v}' for k, v in fields[two].items()))
  _finish(_start('localize', two, tmp_path / 'data', *args))
  a, b = run_dir.RunDir(one), run_dir.RunDir(two)
  ids = run_dir.read_json(a.maps_index(), 'localize')['ids']
  assert run_dir.read_json(b.maps_index(), 'localize')['ids'] == ids and len(ids) == 32
  for i in ids:
    for x, y in zip(run_dir.load_maps(a.map_file(i)), run_dir.load_maps(b.map_file(i))):
      np.testing.assert_allclose(x, y, atol=MAP_ATOL, rtol=0)
