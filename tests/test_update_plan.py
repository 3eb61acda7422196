"""Accumulation folded into the devices: the segmenter's paper update (1 crop x 10 accumulation
steps) on 2, 4 and 8 devices runs fewer, fuller micro-steps and trains the parameters of the
1-device run; the plan's arithmetic and its log line."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from cows_jax import checkpoints, config, run_dir, stages, update_plan
from cows_jax.models import from_config

EXE = os.path.join(os.path.dirname(sys.executable), 'cows-jax')
FIELDS = {
  'segment.supervisions': ('ground_truth',),  # no earlier stage needed.
  'segment.iterations': 2,
  'segment.crop_size': 32,
  'segment.base_lr': 0.05,  # the parameters move well clear of float32 rounding.
}
# float32 gradients summed in another order (the devices' shares, then over devices): each
# sum of up to 10 crops x 32 x 32 pixels carries a relative error of about sqrt(1e4) * 6e-8
# (1e-5) of its terms' magnitudes; two momentum steps carry it into the parameters' change.
# The bound leaves 100x for cancellation; a wrongly weighted micro-step (8 crops counted as
# much as 2) moves the result by tens of percent of that change.
RELATIVE_TO_CHANGE = 1e-3


@pytest.mark.parametrize(
  'batch, accumulation, devices, fold, micro_steps, real',
  [
    (1, 10, 1, True, 10, [1] * 10),
    (1, 10, 8, True, 2, [8, 2]),
    (1, 10, 4, True, 3, [4, 4, 2]),
    (1, 10, 2, True, 5, [2] * 5),
    (1, 10, 16, True, 1, [10]),
    (1, 10, 8, False, 10, [1] * 10),
    (5, 1, 8, True, 1, [5]),
    (128, 1, 8, True, 1, [128]),
    (3, 4, 2, True, 3, [4, 4, 4]),
  ],
)
def test_the_plan_keeps_the_update_and_pads_only_its_last_micro_step(
  batch, accumulation, devices, fold, micro_steps, real
):
  plan = update_plan.plan(batch, accumulation, devices, fold)
  assert plan.micro_steps == micro_steps and plan.real_per_micro_step() == real
  assert sum(real) == plan.examples == batch * accumulation
  assert plan.slots % devices == 0 and max(real) <= plan.slots
  assert plan.slots <= -(-batch // devices) * devices  # no device holds more than the recipe's.
  assert plan.real_fraction == pytest.approx(plan.examples / (micro_steps * plan.slots))
  assert plan.normalizer * plan.micro_steps == plan.examples


def _train(workdir: str, data_dir: str, devices: int, name='synthetic:tiny_pretrained', **more):
  """`cows-jax segment` on `devices` CPU devices: in this process where it has that many, else
  in a process of its own; its log on the way."""
  fields = {**FIELDS, **{k.replace('__', '.'): v for k, v in more.items()}}
  if devices == jax.device_count():
    cfg = config.load(name)
    cfg.data.data_dir = data_dir
    for field, value in fields.items():
      section, key = field.split('.')
      cfg[section][key] = value
    stages.run_stage('segment', cfg, workdir)
    return ''
  flags = f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={devices}'
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
  cmd = [EXE, 'segment', '--config', name, '--workdir', workdir]
  cmd += [f'--config.data.data_dir={data_dir}'] + [f'--config.{k}={v}' for k, v in fields.items()]
  done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stderr


def test_the_papers_update_folded_into_2_4_8_devices_trains_the_one_device_parameters(
  tmp_path,
):
  cfg = config.load('synthetic:tiny_pretrained')
  cfg.data.data_dir = str(tmp_path / 'data')
  for field, value in FIELDS.items():
    section, name = field.split('.')
    cfg[section][name] = value
  cfg = config.finalize(cfg)
  model = from_config.segmenter(cfg)
  like = from_config.abstract_variables(model, cfg)
  initial = jax.device_get(from_config.init_variables(model, cfg, jax.random.key(cfg.seed + 1)))

  trained, logs = {}, {}
  for devices in (1, 2, 4, 8):
    workdir = str(tmp_path / f'run{devices}')
    logs[devices] = _train(workdir, cfg.data.data_dir, devices)
    directory = run_dir.RunDir(workdir).segmenter('ground_truth')
    trained[devices], _ = checkpoints.restore_variables(directory, None, like, 'segment')
  assert 'segment_ground_truth: 10 examples per update, 2 micro-steps per update' in logs[8]
  assert 'device slots real: 62%' in logs[8] and 'device slots real: 100%' in logs[2]

  flat = lambda v: dict(jax.tree_util.tree_leaves_with_path(jax.device_get(v['params'])))
  one, start = flat(trained[1]), flat(initial)
  for devices in (2, 4, 8):
    other = flat(trained[devices])
    for key, value in one.items():
      change = np.abs(value - start[key]).max()
      assert change > 0, key
      np.testing.assert_allclose(
        other[key], value, rtol=0, atol=RELATIVE_TO_CHANGE * change, err_msg=f'{devices} {key}'
      )


def test_the_pod_preset_fills_the_devices_with_pairs_and_scales_the_learning_rate():
  from cows_jax import classify

  paper = config.finalize(config.load('voc12:tpu'))
  assert classify.on_devices(paper, 8) is paper  # the paper's 5 pairs on any device count.
  pod = config.finalize(config.load('voc12:tpu,pod'))
  on_8 = classify.on_devices(pod, 8)
  assert on_8.classify.batch_pairs == 8
  assert on_8.classify.base_lr == pytest.approx(paper.classify.base_lr * 8 / 5)
  assert on_8.model.dtype == 'bfloat16'  # combined with :tpu.
  assert update_plan.plan(8, 1, 8, True).real_fraction == 1
  assert update_plan.plan(5, 1, 8, True).real_fraction == 5 / 8

  # One warmup epoch (10 steps here), then the paper's step decay.
  lr = classify.schedule(on_8, 10)
  base = on_8.classify.base_lr
  assert float(lr(0)) == pytest.approx(base / 10) and float(lr(4)) == pytest.approx(base / 2)
  assert float(lr(9)) == pytest.approx(base) and float(lr(49)) == pytest.approx(base)
  assert float(lr(50)) == pytest.approx(base * 0.1)  # lr_decay_epochs (5, 10).
  assert float(classify.schedule(paper, 10)(0)) == pytest.approx(paper.classify.base_lr)


def test_a_plan_under_half_real_warns_and_names_the_fields(monkeypatch):
  lines = {'info': [], 'warning': []}
  for level in lines:
    monkeypatch.setattr(
      update_plan.logging, level, lambda fmt, *a, level=level: lines[level].append(fmt % a)
    )
  fields = {'classify.batch_pairs': 'more pairs per step'}
  update_plan.log('classify', update_plan.plan(5, 1, 8, True), fields)
  assert lines['info'][-1].startswith('classify: 5 examples per update, 1 micro-steps')
  assert 'device slots real: 62%' in lines['info'][-1] and not lines['warning']
  update_plan.log('classify', update_plan.plan(5, 1, 16, True), fields)
  assert 'device slots real: 31%' in lines['info'][-1]
  assert 'classify.batch_pairs: more pairs per step' in lines['warning'][-1]


def test_with_batchnorm_a_folded_micro_step_normalizes_over_its_crops(tmp_path):
  """What folding changes where the backbone trains BatchNorm statistics (synthetic:tiny, a
  VGG with BatchNorm): 1 x 4 folded on 2 devices is 2 crops x 2 accumulation steps on one
  device, statistics over 2 crops a micro-step included, not 1 x 4 as written."""
  cfg = config.load('synthetic:tiny')
  cfg.data.data_dir = str(tmp_path / 'data')
  for field, value in FIELDS.items():
    section, name = field.split('.')
    cfg[section][name] = value
  cfg = config.finalize(cfg)
  assert cfg.model.norm == 'batch' and cfg.segment.backbone == 'vgg16'
  model = from_config.segmenter(cfg)
  like = from_config.abstract_variables(model, cfg)
  runs = {
    'folded': (2, dict(segment__batch_size=1, segment__accumulation_steps=4)),
    'two_by_two': (1, dict(segment__batch_size=2, segment__accumulation_steps=2)),
    'as_written': (1, dict(segment__batch_size=1, segment__accumulation_steps=4)),
  }
  trained = {}
  for name, (devices, fields) in runs.items():
    workdir = str(tmp_path / name)
    _train(workdir, cfg.data.data_dir, devices, 'synthetic:tiny', **fields)
    directory = run_dir.RunDir(workdir).segmenter('ground_truth')
    variables, _ = checkpoints.restore_variables(directory, None, like, 'segment')
    trained[name] = dict(jax.tree_util.tree_leaves_with_path(jax.device_get(variables)))
  stats = [k for k in trained['folded'] if 'batch_stats' in jax.tree_util.keystr(k)]
  assert stats
  for key, value in trained['two_by_two'].items():
    # Biases in front of a BatchNorm get no gradient in exact arithmetic and hold rounding
    # noise (1e-9): each leaf is compared at 1e-4 of its magnitude, and at least of 1e-2.
    scale = max(np.abs(value).max(), 1e-2)
    np.testing.assert_allclose(
      trained['folded'][key], value, rtol=0, atol=1e-4 * scale, err_msg=jax.tree_util.keystr(key)
    )
  # As written, each micro-step's statistics come from 1 crop: other running statistics.
  assert any(
    np.abs(trained['as_written'][k] - trained['folded'][k]).max()
    > 1e-2 * np.abs(trained['folded'][k]).max()
    for k in stats
  )
