"""Stage 1: train the co-attention classifier on pairs of images that share a class."""

import functools

import jax
import jax.numpy as jnp
from absl import logging

from cows_jax import (
  checkpoints,
  config,
  losses,
  optim,
  parallel,
  run_dir,
  training,
  update_plan,
  views,
)
from cows_jax.data import input_pipeline, sources
from cows_jax.models import from_config
from cows_jax.models.coattention import PRETRAINED_GROUPS


def steps_per_epoch(cfg, num_train: int) -> int:
  """Steps of one epoch: its last partial batch counts when classify.keep_last_partial_batch."""
  b = cfg.classify.batch_pairs
  spe = -(-num_train // b) if cfg.classify.keep_last_partial_batch else num_train // b
  if spe == 0:
    raise ValueError(
      f'train split has {num_train} images, fewer than classify.batch_pairs='
      f'{cfg.classify.batch_pairs}'
    )
  return spe


def on_devices(cfg, devices: int):
  """The config the classifier trains with on `devices` devices: the config's batch (the
  paper's 5 pairs) on any count, unless classify.pairs_per_device asks for that many pairs per
  device (the `:pod` preset), with base_lr scaled by the linear rule."""
  c = cfg.classify
  if not c.pairs_per_device:
    return cfg
  batch = c.pairs_per_device * devices
  scaled = config.with_overrides(
    cfg, (('classify.batch_pairs', batch), ('classify.base_lr', c.base_lr * batch / c.batch_pairs))
  )
  logging.info(
    'classify: %d pairs per device on %d devices: batch %d pairs (config: %d), base_lr %.3g '
    '(linear rule; config: %.3g), warmup %.3g epochs',
    c.pairs_per_device,
    devices,
    batch,
    c.batch_pairs,
    scaled.classify.base_lr,
    c.base_lr,
    c.warmup_epochs,
  )
  return scaled


def schedule(cfg, spe: int):
  """The paper's step decay, after a linear warmup over classify.warmup_epochs (none in the
  paper)."""
  c = cfg.classify
  decay = optim.step_decay(c.base_lr, spe, c.lr_decay_epochs, c.lr_decay_factor)
  return optim.with_warmup(decay, int(c.warmup_epochs * spe))


def make_optimizer(cfg, params, spe: int):
  c = cfg.classify
  mults = optim.lr_multipliers(
    params,
    PRETRAINED_GROUPS,
    c.lr_mult_pretrained_weight,
    c.lr_mult_pretrained_bias,
    c.lr_mult_new_weight,
    c.lr_mult_new_bias,
  )
  return optim.sgd(schedule(cfg, spe), c.momentum, c.nesterov, c.weight_decay, mults)


def loss_fn(params, collections, batch, use_contrastive, *, model, weights, self_views=()):
  """Total loss; aux: the loss terms and the updated collections (batch statistics). A
  padded batch carries 'weight' (0 for padding): losses and BatchNorm statistics skip it."""
  example_weights = batch.get('weight')
  (scores, by_view), collections = model.apply(
    {'params': params, **collections},
    batch['image_m'],
    batch['image_n'],
    self_views,
    train=True,
    view_source=batch.get('image_m_plain'),
    view_images=views.given_views(batch),
    method=model.training_scores,
    mutable=list(collections),
    mask=None if example_weights is None else example_weights > 0,
  )
  terms = losses.coattention_losses(
    scores, batch['labels_m'], batch['labels_n'], use_contrastive, example_weights
  )
  terms.update(losses.self_pair_losses(by_view, batch['labels_m'], example_weights))
  total = sum(weights[k] * terms[k] for k in terms)
  return total, (terms, dict(collections))


def loss_weights(cfg) -> dict:
  c = cfg.classify
  return {
    'single': c.loss_weight_single,
    'coattention': c.loss_weight_coattention,
    'contrastive': c.loss_weight_contrastive,
    'self_single': c.loss_weight_single,
    'self_coattention': c.loss_weight_coattention,
  }


def train(cfg, workdir: str) -> None:
  """Train (or resume) the classifier; skips when the last epoch's checkpoint exists."""
  cfg = on_devices(config.finalize(cfg), jax.device_count())
  run = run_dir.RunDir(workdir)
  pool = sources.classifier_pool(cfg)
  spe = steps_per_epoch(cfg, pool.plan.epoch_length)
  # Before epochs.json changes: an imported classifier keeps its own.
  checkpoints.check_resumable(run.classifier(), spe * cfg.classify.epochs, 'classify')
  if parallel.is_writer():
    run_dir.write_classifier_epochs(run, spe, cfg.classify.epochs)
  model = from_config.classifier(cfg)
  logging.info('classify: %d epochs x %d steps', cfg.classify.epochs, spe)
  update_plan.log(
    'classify',
    update_plan.plan(cfg.classify.batch_pairs, 1, jax.device_count(), fold=True),
    {
      'classify.batch_pairs': "more pairs per step (a larger batch than the paper's 5)",
      'classify.pairs_per_device': 'N pairs per device, base_lr by the linear rule (the :pod '
      'preset; departs from the paper)',
    },
  )
  training.fit(
    training.Task(
      name='classify',
      checkpoint_dir=run.classifier(),
      log_path=run.log('classify'),
      tensorboard=run.tensorboard('classify'),
      total_steps=spe * cfg.classify.epochs,
      init_variables=lambda: from_config.init_variables(model, cfg, jax.random.key(cfg.seed)),
      optimizer=lambda params: make_optimizer(cfg, params, spe),
      loss_fn=functools.partial(
        loss_fn,
        model=model,
        weights=loss_weights(cfg),
        self_views=tuple(cfg.classify.self_views),
      ),
      batches=lambda start: input_pipeline.iterate(
        input_pipeline.pair_dataset(
          pool.source,
          pool.class_index,
          cfg,
          cfg.classify.epochs,
          cfg.classify.batch_pairs,
          seed=cfg.seed,
          plan=pool.plan,
        ),
        start,
        cfg,
      ),
      log_every=cfg.classify.log_every_steps,
      checkpoint_every=cfg.classify.checkpoint_every_steps,
      keep_period=spe,
      learning_rate=lambda step: float(schedule(cfg, spe)(step)),
      step_args=lambda step: (jnp.asarray(step // spe >= cfg.classify.contrastive_from_epoch),),
    )
  )
