"""Every stage on every process and device: the tiny pipeline as 2 processes x 2 CPU devices
each (jax.distributed on localhost, started with the CLI's explicit coordinator flags) writes
what 1 process x 1 device writes."""

import json
import os
import subprocess
import sys

import numpy as np

from cows_jax import run_dir

EXE = os.path.join(os.path.dirname(sys.executable), 'cows-jax')
# Training reduces over 4 devices instead of 1: sums in another order, so float results differ
# in their last bits; everything downstream of the classifier is compared within these.
MAP_ATOL = 0.5  # maps are 0..255.
MIOU_ATOL = 0.5  # percent.


def test_two_processes_of_two_devices_write_what_one_device_writes(tiny_run, tmp_path, free_port):
  cfg, reference = tiny_run
  workdir, port = str(tmp_path / 'run'), free_port
  flags = f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count=2'
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
  procs = [
    subprocess.Popen(
      [
        EXE,
        'pipeline',
        '--config',
        'synthetic:tiny',
        f'--config.data.data_dir={tmp_path / "data"}',
        '--workdir',
        workdir,
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
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  assert '4 devices' in outs[0][1]

  a, b = run_dir.RunDir(reference), run_dir.RunDir(workdir)
  ids = run_dir.read_json(a.labels_index(), 'label')['ids']
  assert run_dir.read_json(b.labels_index(), 'label')['ids'] == ids
  for i in ids:
    for x, y in zip(run_dir.load_maps(a.map_file(i)), run_dir.load_maps(b.map_file(i))):
      np.testing.assert_allclose(x, y, atol=MAP_ATOL)
    np.testing.assert_array_equal(
      run_dir.read_label_png(a.label_file(i)), run_dir.read_label_png(b.label_file(i))
    )
  summary_a = json.loads((a.reports() / 'summary.json').read_text())
  summary_b = json.loads((b.reports() / 'summary.json').read_text())
  for key, value in summary_a.items():
    if key.endswith(('_miou', '_crf')):
      assert abs(summary_b[key] - value) <= MIOU_ATOL, (key, value, summary_b[key])


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
    'classify.localize_after_epochs': 2,
  }
  cmd = [EXE, 'pipeline', '--config', 'voc12:runlocal', '--workdir', str(tmp_path / 'run')]
  cmd += [f'--config.{k}={v}' for k, v in overrides.items()]
  done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-4000:]
  assert '8 devices' in done.stderr
  summary = json.loads((tmp_path / 'run' / 'reports' / 'summary.json').read_text())
  assert 0 <= summary['segmentation_miou'] <= 100
