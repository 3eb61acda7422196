"""Kill -9 anywhere: the tiny pipeline killed at random moments in several stages, then rerun,
ends with the maps, pseudo labels, checkpoints and summary.json of an uninterrupted run.

CI kills it 3 times; `COWS_CHAOS_KILLS=30 pytest tests/test_chaos.py` is the soak version.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from cows_jax import checkpoints, config, run_dir
from cows_jax.models import from_config

EXE = os.path.join(os.path.dirname(sys.executable), 'cows-jax')
# Log lines after which a kill lands in each stage (cycled for more kills).
STAGE_MARKERS = ('=== classify ===', '=== localize ===', '=== label ===', '=== segment ===')


def _kill_at_random_moments(cmd, kills: int, rng) -> int:
  """Starts `cmd` `kills` times, each killed with SIGKILL at a random delay after a stage
  begins; returns how many runs were really killed (a run may finish first)."""
  killed = 0
  for k in range(kills):
    marker = STAGE_MARKERS[k % len(STAGE_MARKERS)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
      if marker in line:
        time.sleep(rng.uniform(0.0, 3.0))
        break
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      killed += 1
    proc.stderr.close()
    proc.wait()
  return killed


def _final(cfg, workdir):
  """What a run leaves: maps, pseudo labels, final variables of each model, summary."""
  run = run_dir.RunDir(workdir)
  ids = run_dir.read_json(run.labels_index(), 'label')['ids']
  maps = {i: run_dir.load_maps(run.map_file(i)) for i in ids}
  labels = {i: run.label_file(i).read_bytes() for i in ids}
  models = []
  for directory, model in (
    (run.classifier(), from_config.classifier(cfg)),
    (run.segmenter('pseudo'), from_config.segmenter(cfg)),
    (run.segmenter('ground_truth'), from_config.segmenter(cfg)),
  ):
    like = from_config.abstract_variables(model, cfg)
    models.append(jax.device_get(checkpoints.restore_variables(directory, None, like, 'x')))
  summary = json.loads((run.reports() / 'summary.json').read_text())
  return maps, labels, models, summary


def test_killed_anywhere_and_rerun_equals_uninterrupted(tiny_run, tmp_path):
  cfg, reference = tiny_run
  workdir = str(tmp_path / 'run')
  cmd = [EXE, 'pipeline', '--config', 'synthetic:tiny', '--workdir', workdir]
  cmd += [f'--config.data.data_dir={tmp_path / "data"}']
  kills = int(os.environ.get('COWS_CHAOS_KILLS', '3'))
  killed = _kill_at_random_moments(cmd, kills, np.random.default_rng(kills))
  assert killed >= min(kills, 2)
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  cfg = config.finalize(cfg)
  (maps_a, labels_a, models_a, summary_a) = _final(cfg, reference)
  (maps_b, labels_b, models_b, summary_b) = _final(cfg, workdir)
  assert maps_a.keys() == maps_b.keys()
  for i in maps_a:
    for x, y in zip(maps_a[i], maps_b[i]):
      np.testing.assert_array_equal(x, y)
  assert labels_a == labels_b
  for a, b in zip(models_a, models_b):
    assert a[1] == b[1]  # the final step.
    for x, y in zip(jax.tree.leaves(a[0]), jax.tree.leaves(b[0]), strict=True):
      np.testing.assert_array_equal(x, y)
  assert summary_a == summary_b
