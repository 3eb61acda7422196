"""`cows-jax bench` runs end to end at a tiny size and prints one row per procedure and the
ratios against ours; the input pipeline it measures (grain worker processes, device prefetch)
gives the batches of the single-process pipeline."""

import importlib.util
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from etils import epath

from cows_jax import config, training, update_plan
from cows_jax.bench import common, main
from cows_jax.data import input_pipeline, sources
from cows_jax.models import random_init

TINY = '--width 0.125 --classes 4'
TINY_SEGMENTER = '--width 0.0625 --classes 4 --stages 1,1,1,1'
ROW = r'\s+\d+\.\d{3} s/(step|image)\s+[\d.e+-]+\s+[\d.]+\s+\d+\s+[\d.e+-]+\s+[\d.e+-]+\s+-'
HAS_TORCH = importlib.util.find_spec('torch') is not None


def _run(capsys, tmp_path, args: str) -> tuple[str, dict]:
  """main.main(args --json FILE): its stdout and the JSON table."""
  path = tmp_path / 'bench.json'
  assert main.main([*args.split(), '--json', str(path)]) == 0
  return capsys.readouterr().out, json.loads(path.read_text())


def _check_rows(out, report, names, unit):
  """Each row printed with its time, FLOPs and FLOP/s (MFU '-': no peak for the CPU), and
  the same numbers in the JSON."""
  assert [r['name'] for r in report['rows']] == names
  for name, row in zip(names, report['rows']):
    assert re.search(re.escape(name) + ROW, out), out
    assert row['flops_per_' + unit] > 0 and row['flop_per_s'] > 0, row
    assert row['mfu'] is None and row['peak_name'] == 'unknown', row
  assert re.search(r"MFU: no (float32|bfloat16) peak for 'cpu' \(unknown\): -", out), out


def test_train_step_bench_prints_rows_flops_and_ratios(capsys, tmp_path):
  out, report = _run(
    capsys, tmp_path, f'train-step --views pair --batch 1 --size 32 --steps 1 {TINY}'
  )
  names = ['jax, anchor features reused', 'jax, pair forward each']
  _check_rows(out, report, names + ['torch, pair forward each'] * HAS_TORCH, 'step')
  assert re.search(r'jax, pair forward each / ours: \d+\.\d\dx', out), out
  row = report['rows'][0]
  assert row['images_per_s'] == pytest.approx(2 / row['seconds_per_step'])


def test_segment_step_bench_has_the_pytorch_reference(capsys, tmp_path):
  out, report = _run(capsys, tmp_path, f'segment-step --size 33 --steps 1 {TINY_SEGMENTER}')
  _check_rows(out, report, ['jax'] + ['torch'] * HAS_TORCH, 'step')
  assert not HAS_TORCH or re.search(r'torch / ours: \d+\.\d\dx', out), out


@pytest.mark.parametrize('stride_in_1x1', [True, False])
def test_torch_segmenter_reference_equals_the_jax_segmenter(stride_in_1x1):
  """The PyTorch DeepLab-v2 ResNet LargeFOV of the segment-step bench is the JAX segmenter
  (same layers, strides and dilations): equal logits and loss on the same weights."""
  torch = pytest.importorskip('torch')
  from cows_jax import segment
  from cows_jax.models.deeplab import DeepLab
  from cows_jax.tools import torch_reference as ref

  kwargs = dict(width=0.0625, head_dilation=2)
  model = DeepLab(
    3, backbone='resnet101', resnet_stages=(1, 2, 1, 1), stride_in_1x1=stride_in_1x1, **kwargs
  )
  variables = random_init.segmenter_variables(model, 40, 0)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 40, 40, 3)).astype(np.float32)
  y = rng.integers(0, 3, size=(2, 40, 40)).astype(np.int32)
  y[:, :3] = 255
  torch_model = ref.DeepLabLargeFOV(3, stages=(1, 2, 1, 1), stride_in_1x1=stride_in_1x1, **kwargs)
  ref.load_flax_segmenter(torch_model, variables)
  with torch.no_grad():
    logits = torch_model(ref.nchw(x)).numpy().transpose(0, 2, 3, 1)
    loss = ref.segment_loss(torch_model, ref.nchw(x), torch.from_numpy(y).long())
  expected = np.asarray(model.apply(variables, x))
  np.testing.assert_allclose(logits, expected, atol=1e-4 * np.abs(expected).max())
  jax_loss, _ = segment.loss_fn(
    variables['params'],
    {'frozen_bn': variables['frozen_bn']},
    {'image': x, 'label': y},
    model=model,
    ignore_index=255,
    align_corners=True,
  )
  assert float(loss) == pytest.approx(float(jax_loss), rel=1e-5)


def test_inference_bench_times_the_test_time_procedure(capsys, tmp_path):
  args = '--image 40x30 --images 1 --window 24 --scales 0.75,1 --dtype bfloat16'
  out, report = _run(capsys, tmp_path, f'inference {args} {TINY_SEGMENTER}')
  _check_rows(out, report, ['jax, tta.predict'], 'image')
  assert 'window 24' in out and report['rows'][0]['dtype'] == 'bfloat16'


def test_localize_bench_counts_the_flops_of_each_procedure(capsys, tmp_path):
  out, report = _run(capsys, tmp_path, f'localize --images 2 --related 1 --size 32 {TINY}')
  names = ['jax, features reused', 'jax, pair forward each']
  _check_rows(out, report, names + ['torch, pair forward each'] * HAS_TORCH, 'image')
  flops = [row['flops_per_image'] for row in report['rows']]
  assert flops[0] < flops[1]  # features once per image: less work than a pair forward each.


def test_features_bench_counts_the_scan_as_the_batch(capsys, tmp_path):
  """One image at a time is the batch's work: the same FLOPs per image (XLA alone would count
  the scan's body once)."""
  out, report = _run(capsys, tmp_path, f'features --batch 3 --size 32 --steps 1 {TINY}')
  names = ['jax, one image at a time', 'jax, whole batch']
  _check_rows(out, report, names + ['torch, whole batch'] * HAS_TORCH, 'image')
  flops = [row['flops_per_image'] for row in report['rows']]
  assert flops[0] == flops[1]


def test_input_bench_prints_the_pipeline_next_to_the_train_step(capsys, tmp_path):
  args = '--images 6 --jpeg 50x40 --size 32 --batch 2 --batches 2 --steps 1 --views pair'
  out, report = _run(capsys, tmp_path, f'input {args} {TINY}')
  assert re.search(r'input pipeline, 0 workers\s+[\d.e+-]+\s+\d+\.\d{3}', out), out
  assert re.search(r'train step \(jax, bench train-step\)\s+[\d.e+-]+', out), out
  assert re.search(r'limit: the (train step|input pipeline)', out), out
  assert report['rows'][0]['name'] == 'input pipeline, 0 workers'
  assert all(r['pairs_per_s'] > 0 for r in report['rows'])


@pytest.mark.parametrize(
  'kind,name,bf16,fp32',
  [
    ('NVIDIA H100 80GB HBM3', 'H100 SXM', 989, 494.5),
    ('NVIDIA H100 PCIe', 'H100 PCIe', 756, 378),
    ('NVIDIA H200', 'H200', 989, 494.5),
    ('NVIDIA A100-SXM4-40GB', 'A100', 312, 156),
    ('NVIDIA L4', 'L4', 121, 60),
    ('Tesla V100-SXM2-16GB', 'V100', None, 15.7),
    ('TPU v4', 'TPU v4', 275, 275),
    ('TPU v5 lite', 'TPU v5e', 197, 197),
    ('TPU v5p', 'TPU v5p', 459, 459),
    ('TPU v6 lite', 'TPU v6e', 918, 918),
    ('cpu', 'unknown', None, None),
    ('NVIDIA A10G', 'unknown', None, None),
  ],
)
def test_device_peaks(kind, name, bf16, fp32):
  found, peaks = common.device_peak(kind)
  scale = lambda x: None if x is None else pytest.approx(x * 1e12)
  assert (found, peaks) == (name, {'bfloat16': scale(bf16), 'float32': scale(fp32)})


def test_flop_counter_counts_each_call_with_xla_cost_analysis():
  counter = common.FlopCounter()
  matmul = counter.wrap(jax.jit(lambda a, b: a @ b))
  a = np.ones((8, 16), np.float32)
  np.testing.assert_allclose(matmul(a, np.ones((16, 4), np.float32)), 16.0)
  matmul(a, np.ones((16, 4), np.float32))
  assert counter.take() == pytest.approx(2 * 2 * 8 * 16 * 4)
  matmul(a, np.ones((16, 2), np.float32))  # another shape: its own program and count.
  assert counter.take() == pytest.approx(2 * 8 * 16 * 2) and counter.take() == 0


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
    sources.load(cfg)['train'],
    lambda i, r: r['mask'],
    cfg,
    5,
    update_plan.plan(3, 1, 1, True),
    seed=1,
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
