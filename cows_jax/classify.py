"""Stage 1: train the co-attention classifier on pairs of images that share a class."""

import functools
import os

import flax.struct
import jax
import jax.numpy as jnp
import optax
from absl import logging
from clu import metrics

from cows_jax import checkpoints, losses, optim, parallel, reporting, training, weights
from cows_jax.data import input_pipeline, sources
from cows_jax.models.coattention import PRETRAINED_GROUPS, CoAttentionNet


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  single: metrics.Average.from_output('single')
  coattention: metrics.Average.from_output('coattention')
  contrastive: metrics.Average.from_output('contrastive')
  self_single: metrics.Average.from_output('self_single')
  self_coattention: metrics.Average.from_output('self_coattention')


def create_model(cfg) -> CoAttentionNet:
  return CoAttentionNet(
    num_classes=cfg.data.num_classes,
    width=cfg.model.width,
    norm=cfg.model.norm,
    feature_dim=cfg.model.feature_dim,
    dtype=jnp.dtype(cfg.model.dtype),
  )


def _random_variables(model: CoAttentionNet, cfg, rng):
  x = jnp.zeros((1, cfg.input.size, cfg.input.size, 3), jnp.float32)
  return dict(jax.jit(model.init)(rng, x, x))


def init_variables(model: CoAttentionNet, cfg, rng):
  """{'params': ..., and 'batch_stats' when the backbone has BatchNorm}; the backbone from
  model.init_from when set (new layers keep their own init, as in the reference)."""
  return weights.with_pretrained_backbone(
    _random_variables(model, cfg, rng), cfg.model.init_from, 'vgg16'
  )


def abstract_variables(model: CoAttentionNet, cfg):
  """Shapes and dtypes of the variables, without compiling or running the init."""
  return jax.eval_shape(lambda: _random_variables(model, cfg, jax.random.key(0)))


def steps_per_epoch(cfg, num_train: int) -> int:
  spe = num_train // cfg.classify.batch_pairs
  if spe == 0:
    raise ValueError(
      f'train split has {num_train} images, fewer than classify.batch_pairs='
      f'{cfg.classify.batch_pairs}'
    )
  return spe


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
  schedule = optim.step_decay(c.base_lr, spe, c.lr_decay_epochs, c.lr_decay_factor)
  return optim.sgd(schedule, c.momentum, c.nesterov, c.weight_decay, mults)


def loss_fn(params, state, model, batch, use_contrastive, weights, self_views=()):
  """Total loss; aux: the loss terms and the updated non-param state (batch statistics)."""
  (scores, by_view), state = model.apply(
    {'params': params, **state},
    batch['image_m'],
    batch['image_n'],
    self_views,
    train=True,
    view_source=batch.get('image_m_plain'),
    method=model.training_scores,
    mutable=list(state),
  )
  terms = losses.coattention_losses(scores, batch['labels_m'], batch['labels_n'], use_contrastive)
  terms.update(losses.self_pair_losses(by_view, batch['labels_m']))
  total = sum(weights[k] * terms[k] for k in terms)
  return total, (terms, dict(state))


def train_step(variables, opt_state, batch, use_contrastive, *, model, tx, weights, self_views=()):
  """One SGD step on a batch of pairs; pure, jitted by the caller."""
  params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
  (loss, (terms, state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    params, state, model, batch, use_contrastive, weights, self_views
  )
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return (
    {'params': params, **state},
    opt_state,
    TrainMetrics.single_from_model_output(loss=loss, **terms),
  )


def loss_weights(cfg) -> dict:
  c = cfg.classify
  return {
    'single': c.loss_weight_single,
    'coattention': c.loss_weight_coattention,
    'contrastive': c.loss_weight_contrastive,
    'self_single': c.loss_weight_single,
    'self_coattention': c.loss_weight_coattention,
  }


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'classifier')


def train(cfg, workdir: str) -> None:
  """Train (or resume) the classifier; skips when the last epoch's checkpoint exists."""
  pool = sources.classifier_pool(cfg)
  spe = steps_per_epoch(cfg, pool.plan.epoch_length)
  total = spe * cfg.classify.epochs
  mngr = checkpoints.manager(checkpoint_dir(workdir), keep_period=spe, max_to_keep=2)
  start = mngr.latest_step() or 0
  if start >= total:
    logging.info(
      'classify: complete (step %d of %d in %s), skipping', start, total, checkpoint_dir(workdir)
    )
    return

  mesh = parallel.data_mesh()
  parallel.check_divisible(cfg.classify.batch_pairs, mesh, 'classify.batch_pairs')
  model = create_model(cfg)
  variables = init_variables(model, cfg, jax.random.key(cfg.seed))
  tx = make_optimizer(cfg, variables['params'], spe)
  opt_state = tx.init(variables['params'])
  variables, opt_state = parallel.replicate((variables, opt_state), mesh)
  if start:
    variables, opt_state = checkpoints.restore(mngr, start, variables, opt_state)
    logging.info('classify: resumed from step %d', start)

  ds = input_pipeline.pair_dataset(
    pool.source,
    pool.class_index,
    cfg,
    cfg.classify.epochs,
    cfg.classify.batch_pairs,
    seed=cfg.seed,
    plan=pool.plan,
  )
  batches = input_pipeline.iterate(ds, start, cfg)
  step_fn = jax.jit(
    functools.partial(
      train_step,
      model=model,
      tx=tx,
      weights=loss_weights(cfg),
      self_views=tuple(cfg.classify.self_views),
    ),
    donate_argnums=(0, 1),
  )
  log = reporting.MetricLog(os.path.join(workdir, 'logs', 'classify.jsonl'), total)
  logging.info(
    'classify: %d steps (%d epochs x %d), %d devices',
    total,
    cfg.classify.epochs,
    spe,
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
    total,
    cfg.classify.log_every_steps,
    should_save=lambda done: done % spe == 0 or done % cfg.classify.checkpoint_every_steps == 0,
    step_args=lambda step: (jnp.asarray(step // spe >= cfg.classify.contrastive_from_epoch),),
  )
