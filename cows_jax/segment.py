"""Stage 3: train the DeepLab segmenter (VGG16 or ResNet-101, LargeFOV or ASPP head) on pseudo
labels (ignore label 255), and on ground-truth masks for the fully supervised upper bound;
predict with it."""

import functools
import os

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metrics

from cows_jax import (
  checkpoints,
  inference,
  label,
  losses,
  optim,
  parallel,
  reporting,
  training,
  visualize,
  weights,
)
from cows_jax.data import input_pipeline, sources
from cows_jax.models.deeplab import PRETRAINED_GROUPS, DeepLab


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')


SUPERVISIONS = ('pseudo', 'ground_truth')


def checkpoint_dir(workdir: str, supervision: str = 'pseudo') -> str:
  """segmenter/ (pseudo labels, the paper's) or segmenter_ground_truth/ (the upper bound)."""
  return os.path.join(
    workdir, 'segmenter' if supervision == 'pseudo' else f'segmenter_{supervision}'
  )


def check_supervisions(cfg) -> tuple:
  sups = tuple(cfg.segment.supervisions)
  if not sups or set(sups) - set(SUPERVISIONS) or len(set(sups)) != len(sups):
    raise ValueError(f'segment.supervisions={sups}: expected distinct entries of {SUPERVISIONS}')
  return sups


def create_model(cfg) -> DeepLab:
  s = cfg.segment
  return DeepLab(
    num_classes=cfg.data.num_classes + 1,
    backbone=s.backbone,
    head=s.head,
    width=cfg.model.width,
    head_channels=s.head_channels,
    head_dilation=s.head_dilation,
    aspp_rates=tuple(s.aspp_rates),
    norm=cfg.model.norm,
    stride_in_1x1=s.resnet_stride_in_1x1,
    dtype=jnp.dtype(s.dtype),
  )


def _random_variables(model, cfg, rng):
  x = jnp.zeros((1, cfg.segment.crop_size, cfg.segment.crop_size, 3), jnp.float32)
  return dict(jax.jit(model.init)(rng, x))


def init_variables(model, cfg, rng):
  """{'params': ..., and 'batch_stats' / 'frozen_bn' as the backbone has them}; the backbone
  from segment.init_from when set (ImageNet weights; the head keeps its own init)."""
  return weights.with_pretrained_backbone(
    _random_variables(model, cfg, rng), cfg.segment.init_from, cfg.segment.backbone
  )


def abstract_variables(model, cfg):
  """Shapes and dtypes of the variables, without compiling or running the init."""
  return jax.eval_shape(lambda: _random_variables(model, cfg, jax.random.key(0)))


def make_optimizer(cfg, params):
  s = cfg.segment
  mults = optim.lr_multipliers(
    params,
    PRETRAINED_GROUPS,
    s.lr_mult_backbone_weight,
    s.lr_mult_backbone_bias,
    s.lr_mult_head_weight,
    s.lr_mult_head_bias,
  )
  inner = optim.sgd(
    optim.poly(s.base_lr, s.iterations, s.lr_power), s.momentum, False, s.weight_decay, mults
  )
  return optax.MultiSteps(inner, every_k_schedule=s.accumulation_steps)


def image_mean_cross_entropy(logits, labels, ignore_index):
  """Mean over images of each image's pixel loss: the reference's batch of 1 with gradients
  accumulated over k steps, so batch size, accumulation and device count are interchangeable."""
  per_image = jax.vmap(lambda z, y: losses.pixel_cross_entropy(z[None], y[None], ignore_index))
  return jnp.mean(per_image(logits, labels))


def train_step(variables, opt_state, batch, *, model, tx, ignore_index):
  """One micro-batch: gradients accumulate in MultiSteps, applied every k calls."""
  params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}

  def loss_fn(p):
    logits, new_state = model.apply(
      {'params': p, **state}, batch['image'], train=True, mutable=list(state)
    )
    logits = losses.upsample_logits(logits, batch['label'].shape[1:3])
    return image_mean_cross_entropy(logits, batch['label'], ignore_index), dict(new_state)

  (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return ({'params': params, **state}, opt_state, TrainMetrics.single_from_model_output(loss=loss))


def pseudo_label_reader(workdir: str, ids: list[str]):
  def read(index: int, record) -> np.ndarray:
    lab = visualize.read_label_png(label.label_path(workdir, ids[index]))
    if lab.shape != record['image'].shape[:2]:
      raise ValueError(
        f'{label.label_path(workdir, ids[index])}: size {lab.shape} differs '
        f'from its image {record["image"].shape[:2]}'
      )
    return lab

  return read


def ground_truth_reader(index: int, record) -> np.ndarray:
  """The record's own mask: the fully supervised upper bound trains on it."""
  if np.all(record['mask'] == 255):
    raise ValueError(
      f'record {record["id"]!r} (index {index}) of data.train_split has no '
      "ground-truth mask; drop 'ground_truth' from segment.supervisions"
    )
  return record['mask']


def train(cfg, workdir: str) -> None:
  """Train (or resume) one segmenter per entry of segment.supervisions (pseudo labels, and
  ground-truth masks for the fully supervised upper bound); each skips when complete."""
  for supervision in check_supervisions(cfg):
    _train(cfg, workdir, supervision)


def _train(cfg, workdir: str, supervision: str) -> None:
  s = cfg.segment
  micro_steps = s.iterations * s.accumulation_steps
  directory = checkpoint_dir(workdir, supervision)
  mngr = checkpoints.manager(directory, keep_period=micro_steps, max_to_keep=2)
  start = mngr.latest_step() or 0
  if start >= micro_steps:
    logging.info('segment: complete (step %d in %s), skipping', start, directory)
    return
  train_source = sources.load(cfg)['train']
  if supervision == 'pseudo':
    ids = reporting.read_json(label.index_path(workdir), 'label')['ids']
    labels_for = pseudo_label_reader(workdir, ids)
  else:
    labels_for = ground_truth_reader
  mesh = parallel.data_mesh()
  parallel.check_divisible(s.batch_size, mesh, 'segment.batch_size')
  model = create_model(cfg)
  variables = init_variables(model, cfg, jax.random.key(cfg.seed + 1))
  tx = make_optimizer(cfg, variables['params'])
  opt_state = tx.init(variables['params'])
  variables, opt_state = parallel.replicate((variables, opt_state), mesh)
  if start:
    variables, opt_state = checkpoints.restore(mngr, start, variables, opt_state)
    logging.info('segment: resumed from micro-step %d', start)
  ds = input_pipeline.segment_dataset(
    train_source, labels_for, cfg, micro_steps, s.batch_size, seed=cfg.seed + 1
  )
  batches = input_pipeline.iterate(ds, start, cfg)
  step_fn = jax.jit(
    functools.partial(train_step, model=model, tx=tx, ignore_index=s.ignore_index),
    donate_argnums=(0, 1),
  )
  log_name = 'segment.jsonl' if supervision == 'pseudo' else f'segment_{supervision}.jsonl'
  log = reporting.MetricLog(os.path.join(workdir, 'logs', log_name), micro_steps)
  logging.info(
    'segment (%s labels): %d iterations x %d accumulation steps, %d devices',
    supervision,
    s.iterations,
    s.accumulation_steps,
    mesh.devices.size,
  )
  training.run_steps(
    step_fn,
    variables,
    opt_state,
    batches,
    mesh,
    mngr,
    log,
    start,
    micro_steps,
    s.log_every_steps,
    should_save=lambda done: done % s.checkpoint_every_steps == 0,
  )


def load_predictor(cfg, workdir: str, supervision: str = 'pseudo'):
  """A function uint8 image [H,W,3] -> float32 class probabilities [H,W,C], by the test-time
  procedure of `cfg.inference` (scales, flip, sliding window)."""
  settings = inference.Settings.from_config(cfg)
  model = create_model(cfg)
  like = abstract_variables(model, cfg)
  variables, _ = checkpoints.restore_variables(
    checkpoint_dir(workdir, supervision), None, like, 'segment'
  )
  probs_fn = functools.partial(inference.window_probabilities(model, settings.flip), variables)
  return lambda image: inference.predict(
    image, probs_fn, settings, cfg.segment.mean, cfg.segment.std
  )
