"""`cows-jax bench` runs end to end at a tiny size and prints one row per procedure and the
ratios against ours; the input pipeline it measures (grain worker processes, device prefetch)
gives the batches of the single-process pipeline."""

import json
import re

import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from cows_jax import config, training
from cows_jax.data import input_pipeline, sources
from cows_jax.tools import bench


def test_train_step_bench_prints_rows_and_ratios(capsys):
  assert (
    bench.main(
      [
        'train-step',
        '--views',
        'full',
        '--batch',
        '1',
        '--size',
        '32',
        '--width',
        '0.125',
        '--classes',
        '4',
        '--steps',
        '1',
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert re.search(r'jax, anchor features reused\s+\d+\.\d{3} s/step', out), out
  assert re.search(r'jax, pair forward each\s+\d+\.\d{3} s/step', out), out
  assert re.search(r'jax, pair forward each / ours: \d+\.\d\dx', out), out


# --- the input pipeline that feeds an accelerator ------------------------------------------


def _read_all(ds, start, cfg, workers):
  it = input_pipeline.iterate(
    ds, start, config.with_overrides(cfg, [('input.worker_count', workers)])
  )
  try:
    return [{k: np.array(v) for k, v in batch.items()} for batch in it]
  finally:
    it.close()


def _assert_same_batches(a, b):
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_worker_processes_make_the_batches_of_the_main_process(tiny_config):
  """input.worker_count=2 (grain mp_prefetch over the step-indexed MapDataset): the same
  batches, in the same order, from any start step."""
  tiny_config.classify.self_views = ('flip', 0.75)
  cfg = config.finalize(tiny_config)
  pool = sources.classifier_pool(cfg)
  pairs = input_pipeline.pair_dataset(pool.source, pool.class_index, cfg, 1, 4, 0, pool.plan)
  plain = _read_all(pairs, 1, cfg, 0)
  assert len(plain) == len(pairs) - 1 and 'view_x0.75' in plain[0]
  _assert_same_batches(plain, _read_all(pairs, 1, cfg, 2))
  crops = input_pipeline.segment_dataset(
    sources.load(cfg)['train'], lambda i, r: r['mask'], cfg, 5, 3, seed=1
  )
  _assert_same_batches(_read_all(crops, 2, cfg, 0), _read_all(crops, 2, cfg, 2))


class _Recorded:
  """An iterator over range(n) that records what was pulled and whether it was closed."""

  def __init__(self, n):
    self.pulled, self.closed, self._it = [], False, iter(range(n))

  def __iter__(self):
    return self

  def __next__(self):
    self.pulled.append(next(self._it))
    return self.pulled[-1]

  def close(self):
    self.closed = True


def test_device_prefetch_puts_the_next_batches_before_returning_one():
  source, put = _Recorded(6), []
  it = input_pipeline.DevicePrefetch(source, lambda b: put.append(b) or 10 * b, depth=2)
  assert next(it) == 0 and source.pulled == put == [0, 1, 2]  # 1 and 2 already transferred.
  assert next(it) == 10 and put == [0, 1, 2, 3]
  assert list(it) == [20, 30, 40, 50]
  it.close()
  assert source.closed


def test_fit_transfers_batches_ahead_and_closes_the_pipeline(tmp_path):
  """training.fit takes its batches through DevicePrefetch with the depth `iterate` names, and
  closes the pipeline when it ends."""
  rng = np.random.default_rng(0)
  data = [{'x': rng.normal(size=(4, 3)).astype(np.float32)} for _ in range(6)]
  source = _Recorded(len(data))
  pipelines, closed = [], []

  class Pipeline(input_pipeline.Batches):
    def close(self):
      closed.append(self)

  def batches(start):
    pipelines.append(Pipeline((data[i] for i in source), device_prefetch=3))
    return pipelines[-1]

  def loss_fn(params, collections, batch):
    return jnp.mean((batch['x'] @ params['w']) ** 2), ({}, collections)

  pulled_at_step = []
  task = training.Task(
    name='toy',
    checkpoint_dir=epath.Path(tmp_path / 'ckpt'),
    log_path=epath.Path(tmp_path / 'log.jsonl'),
    tensorboard=epath.Path(tmp_path / 'tb'),
    total_steps=4,
    init_variables=lambda: {'params': {'w': jnp.ones((3, 1))}},
    optimizer=lambda params: optax.sgd(0.1),
    loss_fn=loss_fn,
    batches=batches,
    log_every=2,
    checkpoint_every=100,
    keep_period=100,
    step_args=lambda step: pulled_at_step.append(len(source.pulled)) or (),
  )
  training.fit(task)
  # Step 0 runs with batches 1..3 already sent; then one more each step, until the end.
  assert pulled_at_step == [4, 5, 6, 6] and closed == pipelines and len(pipelines) == 1
  lines = (tmp_path / 'log.jsonl').read_text().splitlines()
  assert [json.loads(line)['step'] for line in lines] == [2, 4]
