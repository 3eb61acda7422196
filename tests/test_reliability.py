"""Long runs survive what stops them: SIGTERM saves a checkpoint at the current step and the
rerun ends where an uninterrupted run ends; an unreadable checkpoint is set aside."""

import copy
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from cows_jax import checkpoints, classify, preemption, run_dir
from cows_jax.models import from_config

EXE = os.path.join(os.path.dirname(sys.executable), 'cows-jax')


def _final_params(cfg, workdir, step=None):
  model = from_config.classifier(cfg)
  like = from_config.abstract_variables(model, cfg)
  variables, step = checkpoints.restore_variables(
    run_dir.RunDir(workdir).classifier(), step, like, 'classify'
  )
  return jax.device_get(variables), step


def _steps(workdir) -> list[int]:
  directory = run_dir.RunDir(workdir).classifier()
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_sigterm_mid_epoch_checkpoints_that_step_and_the_rerun_equals_an_uninterrupted_run(
  tiny_config, tmp_path
):
  args = [
    '--config',
    'synthetic:tiny',
    f'--config.data.data_dir={tiny_config.data.data_dir}',
    '--config.classify.epochs=8',
    '--config.classify.lr_decay_epochs=(6,)',
    '--config.localize.after_epochs=8',
    '--config.classify.log_every_steps=1',
  ]
  cfg = copy.deepcopy(tiny_config)
  cfg.classify.epochs, cfg.classify.lr_decay_epochs, cfg.localize.after_epochs = 8, (6,), 8
  straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
  classify.train(cfg, straight)  # the same device as the runs below: this process's one.

  proc = subprocess.Popen(
    [EXE, 'classify', '--workdir', stopped, *args], stderr=subprocess.PIPE, text=True
  )
  for line in proc.stderr:
    if '[5/32]' in line:  # in epoch 2 (4 steps an epoch); the loop may run a step or two on.
      proc.send_signal(signal.SIGTERM)
      break
  rest = proc.stderr.read()
  assert proc.wait(timeout=300) == preemption.EXIT_CODE, rest[-3000:]
  assert 'Traceback' not in rest
  stopped_at = int(re.search(r'stopped on request at step (\d+)', rest).group(1))
  assert 5 <= stopped_at < 32 and stopped_at in _steps(stopped)  # that step's checkpoint.

  done = subprocess.run([EXE, 'classify', '--workdir', stopped, *args], capture_output=True)
  assert done.returncode == 0, done.stderr[-3000:]
  (a, s1), (b, s2) = _final_params(cfg, straight), _final_params(cfg, stopped)
  assert s1 == s2 == 32
  _assert_same(a, b)


def _garble(directory):
  for root, _, files in os.walk(directory):
    for name in files:
      with open(os.path.join(root, name), 'r+b') as f:
        f.truncate(max(os.path.getsize(f.name) // 3, 1))


def test_an_unreadable_latest_checkpoint_is_set_aside_and_training_resumes_before_it(
  tiny_config, tmp_path
):
  cfg = copy.deepcopy(tiny_config)
  cfg.classify.epochs, cfg.classify.lr_decay_epochs = 3, (2,)
  straight = str(tmp_path / 'straight')
  classify.train(cfg, straight)

  resumed = str(tmp_path / 'resumed')
  first = copy.deepcopy(cfg)
  first.classify.epochs = 2
  classify.train(first, resumed)
  assert _steps(resumed) == [4, 8]
  _garble(run_dir.RunDir(resumed).classifier() / '8')
  # A stage that needs step 8 names the problem and sets it aside ...
  with pytest.raises(checkpoints.CorruptCheckpoint, match=r'classifier/8 is unreadable.*rerun'):
    _final_params(cfg, resumed, step=8)
  assert _steps(resumed) == [4]
  assert (run_dir.RunDir(resumed).classifier() / '8.corrupt').is_dir()
  # ... and training resumes from the step before it and ends as an uninterrupted run.
  _garble(run_dir.RunDir(resumed).classifier() / '4')
  os.rename(
    run_dir.RunDir(resumed).classifier() / '8.corrupt', run_dir.RunDir(resumed).classifier() / '8'
  )
  classify.train(cfg, resumed)  # 8 and 4 unreadable: set aside, trained from the start.
  assert _steps(resumed) == [4, 8, 12]
  _assert_same(_final_params(cfg, straight)[0], _final_params(cfg, resumed)[0])


def test_truncated_map_and_label_are_found_and_remade_identically(tiny_run, tmp_path):
  import shutil

  from cows_jax import cli

  cfg, original = tiny_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(original, workdir, symlinks=True)
  run = run_dir.RunDir(workdir)
  ids = run_dir.read_json(run.maps_index(), 'localize')['ids']
  map_file, label_file = run.map_file(ids[3]), run.label_file(ids[5])
  before = (map_file.read_bytes(), label_file.read_bytes())
  for path in (map_file, label_file):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
  assert not run_dir.maps_readable(map_file) and not run_dir.label_readable(label_file)
  with pytest.raises(ValueError, match='run `cows-jax localize`'):
    run_dir.load_maps(map_file)
  cli.run_stage('localize', cfg, workdir)
  cli.run_stage('label', cfg, workdir)
  assert (map_file.read_bytes(), label_file.read_bytes()) == before
  assert run.maps_index().is_file() and run.labels_index().is_file()


def test_every_config_problem_at_once_and_nothing_runs(tmp_path):
  overrides = [
    '--config.label.score_threshold=1.5',
    '--config.classify.batch_pairs=0',
    '--config.localize.method=cams',
    '--config.localize.after_epochs=9',
    '--config.inference.window_stride=0.0',
  ]
  cmd = [EXE, 'pipeline', '--config', 'synthetic:tiny', '--workdir', str(tmp_path / 'w')]
  done = subprocess.run(cmd + overrides, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  lines = [line for line in done.stderr.splitlines() if ': config: ' in line]
  for expected in (
    'label.score_threshold=1.5: expected a value in [0, 1]',
    'classify.batch_pairs=0: expected a value >= 1',
    "localize.method='cams': expected one of coattention, cam",
    'localize.after_epochs=9: expected 1..classify.epochs=2',
    'inference.window_stride=0.0',
  ):
    assert any(expected in line for line in lines), (expected, lines)
  assert 'Traceback' not in done.stderr and not (tmp_path / 'w').exists()


def test_real_data_problems_name_paths_weights_saliency_and_the_crf(monkeypatch, tmp_path):
  from cows_jax import config, crf, validation

  cfg = config.load('voc12')
  cfg.data.manual_dir = str(tmp_path / 'missing')
  cfg.model.init_from = str(tmp_path)  # no provenance.json there.
  monkeypatch.setattr(crf, 'check_available', lambda: (_ for _ in ()).throw(ValueError('no crf')))
  problems = validation.problems(cfg)
  text = '\n'.join(problems)
  assert f'data.manual_dir={tmp_path / "missing"}: does not exist' in text
  assert 'data.saliency_dir is not set' in text and 'use_saliency=False' in text
  assert 'model.init_from=' in text and 'no provenance.json' in text
  assert 'segment.init_from is not set: voc12 trains from ImageNet weights' in text
  assert 'weights import --arch resnet101' in text
  assert 'evaluate.crf=True: no crf' in text
  # Only the commands that run the CRF need its extra.
  assert not any('evaluate.crf' in p for p in validation.problems(cfg, 'classify'))
  monkeypatch.undo()
  assert validation.problems(config.finalize(config.load('synthetic'))) == []
  runlocal = config.load('voc12:runlocal')
  runlocal.data.manual_dir, runlocal.label.use_saliency = str(tmp_path), False
  assert validation.problems(config.finalize(runlocal)) == []


def test_a_second_job_on_a_run_directory_fails_at_once_and_a_dead_holder_is_taken_over(
  tiny_config, tmp_path
):
  import json

  workdir = tmp_path / 'w'
  cmd = [EXE, 'evaluate', '--config', 'synthetic:tiny', '--workdir', str(workdir)]
  cmd += [f'--config.data.data_dir={tiny_config.data.data_dir}']
  with run_dir.Lock(run_dir.RunDir(str(workdir))):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1
  assert f'is in use by pid {os.getpid()}' in done.stderr and 'Traceback' not in done.stderr
  assert not (workdir / '.lock').exists()  # released by its holder.

  dead = subprocess.Popen(['true'])
  dead.wait()
  (workdir / '.lock').write_text(json.dumps({'host': os.uname().nodename, 'pid': dead.pid}))
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert 'taking over the stale lock' in done.stderr
  assert 'run `cows-jax label` first' in done.stderr  # it ran: evaluate needs the labels.
  assert not (workdir / '.lock').exists()


def test_a_full_disk_is_one_clear_error_and_the_rerun_resumes(tiny_run, tmp_path):
  import shutil

  cfg, original = tiny_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(original, workdir, symlinks=True)
  run = run_dir.RunDir(workdir)
  before = {p.name: p.read_bytes() for p in run.labels().iterdir()}
  shutil.rmtree(run.root / 'pseudo_labels')
  cmd = [EXE, 'label', '--config', 'synthetic:tiny', '--workdir', workdir]
  cmd += [f'--config.data.data_dir={cfg.data.data_dir}']

  # A file-size limit that palette PNGs (a 768-byte palette) do not fit, set in a fresh
  # interpreter that then becomes the command (no fork of this multithreaded process).
  limited = [
    sys.executable,
    '-c',
    'import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600)); '
    'os.execv(sys.argv[1], sys.argv[1:])',
  ]
  done = subprocess.run(limited + cmd, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1, done.stderr[-2000:]
  assert 'cows-jax label: error: cannot write' in done.stderr and 'File too large' in done.stderr
  assert 'Traceback' not in done.stderr
  assert not run.labels_index().exists()
  leftovers = [p for p in run.labels('palette').iterdir()] if run.labels('palette').exists() else []
  assert all(run_dir.label_readable(p) for p in leftovers)  # nothing partial, no temp file.

  done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert {p.name: p.read_bytes() for p in run.labels().iterdir()} == before


def test_an_atomic_write_gets_the_mode_a_plain_open_would_give(tmp_path):
  """Written beside the target and renamed over it, a file still gets 0666 less the umask
  (mkstemp alone gives 0600: unreadable to the group that shares the run directory)."""
  umask = os.umask(0)
  os.umask(umask)
  run_dir.write_json(tmp_path / 'atomic.json', {'a': 1})
  with open(tmp_path / 'plain.json', 'w') as f:
    f.write('{}')
  assert os.stat(tmp_path / 'atomic.json').st_mode & 0o777 == 0o666 & ~umask
  assert os.stat(tmp_path / 'atomic.json').st_mode == os.stat(tmp_path / 'plain.json').st_mode
