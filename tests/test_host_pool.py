"""Host work overlapping the device (host_pool): the CRF in worker processes, the files written
by threads, each item finished in order. Pooled runs write the same files, byte for byte, as
serial ones (host_workers=1); a stop leaves only whole files and the rerun completes them."""

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
from PIL import Image

from cows_jax import (
  evaluate,
  host_pool,
  inference,
  label,
  localize,
  predict,
  preemption,
  run_dir,
  validation,
)
from cows_jax.data import sources

POOLED = 3  # more workers than this project's 2 cores: every pool path runs anywhere.
REPORTS = (
  'summary.json',
  'per_class_iou.json',
  'per_class_iou.md',
  'confusion_matrix.json',
  'confusion_matrix.png',
  'val_predictions.png',
  'train_pipeline.png',
)


def _copy(tiny_run, tmp_path, name, workers):
  cfg, original = copy.deepcopy(tiny_run[0]), tiny_run[1]
  cfg.host_workers = workers
  workdir = tmp_path / name
  shutil.copytree(original, workdir, symlinks=True)
  return cfg, str(workdir)


def _files(directory) -> dict:
  """{relative path: bytes} of every file under `directory`."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


def _stop_at_call(monkeypatch, n):
  calls = []

  def requested():
    calls.append(None)
    return len(calls) >= n

  monkeypatch.setattr(preemption, 'requested', requested)


def test_pooled_evaluate_and_predict_split_equal_serial_byte_for_byte(
  tiny_run, tmp_path, monkeypatch
):
  assert tiny_run[0].evaluate.crf  # the CRF runs in the pool's processes.
  runs = {'serial': 1, 'pooled': POOLED}
  summaries, reports, predictions = {}, {}, {}
  for name, workers in runs.items():
    cfg, workdir = _copy(tiny_run, tmp_path, name, workers)
    summaries[name] = evaluate.run(cfg, workdir)
    out = run_dir.RunDir(workdir).reports()
    reports[name] = {f: (out / f).read_bytes() for f in REPORTS}
    predictions[name] = _files(predict.write_split(cfg, workdir, 'val'))
  assert summaries['pooled'] == summaries['serial']
  assert reports['pooled'] == reports['serial']
  assert len(predictions['serial']) == cfg.data.val_size
  assert predictions['pooled'] == predictions['serial']

  # A stop after the third image: the images in flight end, every file there is whole and
  # the serial one, no temporary file is left; the rerun writes the rest.
  out = run_dir.RunDir(workdir).predictions('val')
  shutil.rmtree(out)
  _stop_at_call(monkeypatch, 3)
  with pytest.raises(preemption.Preempted, match='predict-split: stopped on request'):
    predict.write_split(cfg, workdir, 'val')
  stopped = _files(out)
  assert 3 <= len(stopped)
  assert all(predictions['serial'].get(f) == b for f, b in stopped.items())
  monkeypatch.undo()
  assert _files(predict.write_split(cfg, workdir, 'val')) == predictions['serial']


def test_pooled_predict_of_image_files_equals_serial_byte_for_byte(tiny_run, tmp_path):
  """`cows-jax predict`'s CRF in worker processes and PNGs by worker threads."""
  cfg, workdir = tiny_run
  assert cfg.evaluate.crf
  photos = tmp_path / 'photos'
  photos.mkdir()
  val = sources.load(cfg)['val']
  for i in range(3):
    Image.fromarray(val[i]['image']).save(photos / f'{i}.png')
  Image.fromarray(val[3]['image'][:30, :41]).save(photos / 'crop.png')  # a second size.
  one = inference.load_predictor(cfg, workdir)
  probabilities = lambda images: [one(image) for image in images]
  written = {}
  for name, workers in (('serial', 1), ('pooled', POOLED)):
    out = tmp_path / name
    result = predict.write_files(
      probabilities, [str(photos)], str(out), overlay=True, crf_params=cfg.crf, workers=workers
    )
    assert result == {'written': 4, 'skipped': []}
    written[name] = _files(out)
  assert len(written['serial']) == 8
  assert written['pooled'] == written['serial']


def test_pooled_localize_and_label_write_the_same_files(tiny_run, tmp_path, monkeypatch):
  written = {}
  for name, workers in {'serial': 1, 'pooled': POOLED}.items():
    cfg, workdir = _copy(tiny_run, tmp_path, name, workers)
    run = run_dir.RunDir(workdir)
    ids = run_dir.read_json(run.maps_index(), 'localize')['ids']
    for i in ids[::2]:  # half the maps (in every batch), every label: made again.
      run.map_file(i).unlink()
    shutil.rmtree(run.labels())
    shutil.rmtree(run.labels('palette'))
    run.maps_index().unlink()
    run.labels_index().unlink()
    localize.run(cfg, workdir)
    if name == 'pooled':  # a stop in label: whole files only, and the rerun completes them.
      _stop_at_call(monkeypatch, 4)
      with pytest.raises(preemption.Preempted, match='label: stopped on request'):
        label.run(cfg, workdir)
      monkeypatch.undo()
      partial = {**_files(run.labels()), **_files(run.labels('palette'))}
      assert 4 <= len(partial) < 2 * len(ids)
      assert all(run_dir.label_readable(f) for f in run.labels().iterdir())
      assert all(run_dir.label_readable(f) for f in run.labels('palette').iterdir())
      assert not [f for f in partial if f.endswith('.tmp')]
    label.run(cfg, workdir)
    written[name] = {d: _files(run.root / d) for d in ('maps', 'pseudo_labels')}
  assert len(written['serial']['maps']) == len(ids) + 1  # + index.json
  assert written['pooled'] == written['serial']


def _stamp(times, k):
  return lambda future: times.__setitem__(k, time.perf_counter())


def test_the_next_device_call_overlaps_the_host_work_and_items_finish_in_order():
  """host work: 0.3 s in a worker process; 'device': 0.1 s on this thread. Pooled, the
  device call of item k+1 starts before the host work of item k ends; serial, after."""
  for workers in (POOLED, 1):
    with host_pool.HostPool(workers, 'test') as pool:
      pool.process(os.getpid).result()  # the workers have started.
      device, host_done, finished = {}, {}, []
      start = time.perf_counter()
      for k in range(4):
        device[k] = time.perf_counter()
        time.sleep(0.1)
        future = pool.process(time.sleep, 0.3)
        future.add_done_callback(_stamp(host_done, k))
        pool.then(lambda _, k=k: finished.append(k), future)
      pool.drain()
      seconds = time.perf_counter() - start
    assert finished == [0, 1, 2, 3]
    overlapped = [device[k + 1] < host_done[k] for k in range(3)]
    if workers == 1:
      assert not any(overlapped) and seconds >= 1.6
    else:
      assert all(overlapped) and seconds < 1.2, (overlapped, seconds)


def test_workers_import_only_their_tasks_and_ignore_stop_signals(tmp_path):
  """Run as a script that imports JAX (as `cows-jax` does): the workers do not import it, and
  SIGTERM and SIGINT sent to them (a scheduler signalling the process group) leave the pool
  working."""
  script = tmp_path / 'script.py'
  script.write_text(
    textwrap.dedent(
      """
      import os, signal, time
      import jax
      from cows_jax import host_pool

      if __name__ == '__main__':
        with host_pool.HostPool(2, 'test') as pool:
          in_worker = "'jax' in __import__('sys').modules"
          print('jax imported in a worker:', pool.process(eval, in_worker).result())
          pids = {pool.process(os.getpid).result() for _ in range(4)}
          for pid in pids:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
          time.sleep(0.5)
          print('after the signals:', pool.process(abs, -7).result())
      """
    )
  )
  done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'jax imported in a worker: False' in done.stdout
  assert 'after the signals: 7' in done.stdout


def test_host_workers_zero_is_every_core_and_negative_is_a_problem(tiny_config):
  cfg = copy.deepcopy(tiny_config)
  assert cfg.host_workers == 0 and host_pool.workers(cfg) == host_pool.cores()
  cfg.host_workers = -1
  assert any(p.startswith('host_workers=-1') for p in validation.problems(cfg, 'label'))


def test_bench_evaluate_times_serial_and_overlapped_on_the_same_files(capsys, tmp_path):
  from cows_jax.bench import main

  out = tmp_path / 'bench.json'
  tiny = '--image 40x32 --images 3 --width 0.125 --stages 1,1,1,1 --scales 1.0 --window 0'
  assert main.main(['evaluate', *tiny.split(), '--workers', '2', '--json', str(out)]) == 0
  printed = capsys.readouterr().out
  report = json.loads(out.read_text())
  names = [r['name'] for r in report['rows']]
  assert names == [
    'device only (the segmenter)',
    'CRF + PNG, serial (host_workers=1)',
    'CRF + PNG, host_workers=2',
    'end to end, serial (host_workers=1)',
    'end to end, host_workers=2',
  ]
  assert report['byte_identical'] and 'byte for byte: yes' in printed
  assert set(report['speedups']) == {'CRF + PNG', 'end to end'}
