"""Stage 3: train the DeepLab-LargeFOV segmenter on pseudo labels (ignore label 255), and
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

from cows_jax import (checkpoints, label, losses, optim, parallel, reporting, training,
                      visualize)
from cows_jax.data import input_pipeline, sources, transforms
from cows_jax.models.deeplab import PRETRAINED_GROUPS, DeepLabVGG


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'segmenter')


def create_model(cfg):
  if cfg.segment.backbone != 'vgg16':
    raise ValueError(f'segment.backbone={cfg.segment.backbone!r} is not available '
                     "(available: 'vgg16')")
  return DeepLabVGG(num_classes=cfg.data.num_classes + 1, width=cfg.model.width, norm=cfg.model.norm,
                    head_channels=cfg.segment.head_channels,
                    head_dilation=cfg.segment.head_dilation, dtype=jnp.dtype(cfg.model.dtype))


def init_variables(model, cfg, rng):
  """{'params': ..., and 'batch_stats' when the backbone has BatchNorm}."""
  x = jnp.zeros((1, cfg.segment.crop_size, cfg.segment.crop_size, 3), jnp.float32)
  return dict(jax.jit(model.init)(rng, x))


def abstract_variables(model, cfg):
  """Shapes and dtypes of the variables, without compiling or running the init."""
  return jax.eval_shape(lambda: init_variables(model, cfg, jax.random.key(0)))


def make_optimizer(cfg, params):
  s = cfg.segment
  mults = optim.lr_multipliers(params, PRETRAINED_GROUPS, s.lr_mult_backbone_weight,
                               s.lr_mult_backbone_bias, s.lr_mult_head_weight,
                               s.lr_mult_head_bias)
  inner = optim.sgd(optim.poly(s.base_lr, s.iterations, s.lr_power), s.momentum, False,
                    s.weight_decay, mults)
  return optax.MultiSteps(inner, every_k_schedule=s.accumulation_steps)


def train_step(variables, opt_state, batch, *, model, tx, ignore_index):
  """One micro-batch: gradients accumulate in MultiSteps, applied every k calls."""
  params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}

  def loss_fn(p):
    logits, new_state = model.apply({'params': p, **state}, batch['image'], train=True,
                                    mutable=list(state))
    logits = losses.upsample_logits(logits, batch['label'].shape[1:3])
    return losses.pixel_cross_entropy(logits, batch['label'], ignore_index), dict(new_state)

  (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return ({'params': params, **state}, opt_state,
          TrainMetrics.single_from_model_output(loss=loss))


def pseudo_label_reader(workdir: str, ids: list[str]):
  def read(index: int, record) -> np.ndarray:
    lab = visualize.read_label_png(label.label_path(workdir, ids[index]))
    if lab.shape != record['image'].shape[:2]:
      raise ValueError(f'{label.label_path(workdir, ids[index])}: size {lab.shape} differs '
                       f'from its image {record["image"].shape[:2]}')
    return lab
  return read


def train(cfg, workdir: str) -> None:
  """Train (or resume) the segmenter; skips when the final checkpoint exists."""
  s = cfg.segment
  micro_steps = s.iterations * s.accumulation_steps
  mngr = checkpoints.manager(checkpoint_dir(workdir), keep_period=micro_steps, max_to_keep=2)
  start = mngr.latest_step() or 0
  if start >= micro_steps:
    logging.info('segment: complete (step %d in %s), skipping', start, checkpoint_dir(workdir))
    return
  ids = reporting.read_json(label.index_path(workdir), 'label')['ids']
  train_source = sources.load(cfg)['train']
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
  ds = input_pipeline.segment_dataset(train_source, pseudo_label_reader(workdir, ids), cfg,
                                      micro_steps, s.batch_size, seed=cfg.seed + 1)
  batches = input_pipeline.iterate(ds, start, cfg)
  step_fn = jax.jit(functools.partial(train_step, model=model, tx=tx,
                                      ignore_index=s.ignore_index), donate_argnums=(0, 1))
  log = reporting.MetricLog(os.path.join(workdir, 'logs', 'segment.jsonl'), micro_steps)
  logging.info('segment: %d iterations x %d accumulation steps, %d devices', s.iterations,
               s.accumulation_steps, mesh.devices.size)
  training.run_steps(step_fn, variables, opt_state, batches, mesh, mngr, log, start,
                     micro_steps, s.log_every_steps,
                     should_save=lambda done: done % s.checkpoint_every_steps == 0)


def load_predictor(cfg, workdir: str):
  """A function uint8 image [H,W,3] batch of equal sizes -> int label maps [B,H,W]."""
  model = create_model(cfg)
  like = abstract_variables(model, cfg)
  variables, _ = checkpoints.restore_variables(checkpoint_dir(workdir), None, like, 'segment')

  @jax.jit
  def probabilities(images):
    logits = model.apply(variables, images)
    return jax.nn.softmax(losses.upsample_logits(logits, images.shape[1:3]), axis=-1)

  def predict(images: np.ndarray) -> np.ndarray:
    x = np.stack([transforms.normalize(im, cfg.input.mean, cfg.input.std) for im in images])
    return np.asarray(jnp.argmax(probabilities(x), axis=-1))
  return predict
