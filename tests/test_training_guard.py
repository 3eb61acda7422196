"""The trainer stops on a non-finite loss, names the step and the loss terms, and keeps the last
good checkpoint."""

import copy
import types

import pytest

from cows_jax import classify, run_dir, training


def test_nan_learning_rate_stops_with_the_step_and_keeps_good_checkpoints(tiny_config, tmp_path):
  cfg = copy.deepcopy(tiny_config)
  cfg.classify.epochs, cfg.classify.lr_decay_epochs, cfg.localize.after_epochs = 2, (1,), 2
  workdir = str(tmp_path / 'run')
  first = copy.deepcopy(cfg)
  first.classify.epochs = 1
  classify.train(first, workdir)  # a good epoch-1 checkpoint.
  spe = tiny_config.data.train_size // cfg.classify.batch_pairs
  # From epoch 1 on, a learning rate of 5e28 blows the parameters up in the first step, so
  # the loss of the next step overflows.
  cfg.classify.lr_decay_factor = 1e30
  with pytest.raises(training.NonFiniteLoss, match=rf'non-finite loss at step {spe + 2} \(.*loss='):
    classify.train(cfg, workdir)
  steps = sorted(
    int(p.name) for p in run_dir.RunDir(workdir).classifier().iterdir() if p.name.isdigit()
  )
  assert steps == [spe]


def test_the_training_log_line_gives_the_time_left(tmp_path, monkeypatch):
  """At the rate since the first logged step: 2 steps in 10 s, 6 steps to go -> 30 s left."""
  clock = iter([0.0, 100.0, 110.0])
  monkeypatch.setattr(training, 'time', types.SimpleNamespace(time=lambda: next(clock)))
  lines = []
  monkeypatch.setattr(training.logging, 'info', lambda fmt, *args: lines.append(fmt % args))
  log = training.MetricLog(tmp_path / 'log.jsonl', 10, tmp_path / 'tb')
  log.write(2, {'loss': 1.0})
  log.write(4, {'loss': 0.5})
  log.close()
  assert lines[0].startswith('[2/10] loss=1, ') and lines[0].endswith(', ? left')
  assert lines[1].endswith(', 0:00:30 left'), lines[1]


def test_log_lines_average_each_term_over_the_steps():
  steps = [
    {'loss': 1.0, 'single': 0.5},
    {'loss': 3.0, 'single': 0.25},
    {'loss': 2.0, 'single': 0.0},
  ]
  assert training.step_means(steps) == {'loss': 2.0, 'single': 0.25}
