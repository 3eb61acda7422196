"""Stage 3: train the DeepLab segmenter (VGG16 or ResNet-101, LargeFOV or ASPP head) on pseudo
labels (ignore label 255), and on ground-truth masks for the fully supervised upper bound."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from cows_jax import checkpoints, config, losses, optim, parallel, run_dir, training, update_plan
from cows_jax.data import input_pipeline, sources
from cows_jax.models import from_config
from cows_jax.models.deeplab import PRETRAINED_GROUPS


def make_optimizer(cfg, params, micro_steps_per_update: int | None = None):
  """SGD applied once per update of `micro_steps_per_update` micro-steps (default: the
  recipe's segment.accumulation_steps, unfolded)."""
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
  return optax.MultiSteps(inner, every_k_schedule=micro_steps_per_update or s.accumulation_steps)


def image_mean_cross_entropy(logits, labels, ignore_index, weights=None, normalizer=None):
  """Mean over images of each image's pixel loss: the reference's batch of 1 with gradients
  accumulated over k steps, so batch size, accumulation and device count are interchangeable.
  `weights` [B]: 0 for the padding of a batch, which then does not count. `normalizer`: the
  sum over images is divided by it instead of their count (update_plan: a folded update's
  micro-steps hold different numbers of real images)."""
  per_image = jax.vmap(lambda z, y: losses.pixel_cross_entropy(z[None], y[None], ignore_index))
  terms = per_image(logits, labels)
  if weights is not None:
    terms = terms * weights
  if normalizer is not None:
    return jnp.sum(terms) / normalizer
  if weights is None:
    return jnp.mean(terms)
  return jnp.sum(terms) / jnp.maximum(jnp.sum(weights), 1e-9)


def update_plan_of(cfg) -> update_plan.UpdatePlan:
  """The segmenter's update on this job's devices (segment.fold_accumulation)."""
  s = cfg.segment
  return update_plan.plan(
    s.batch_size, s.accumulation_steps, jax.device_count(), s.fold_accumulation
  )


def loss_fn(params, collections, batch, *, model, ignore_index, align_corners, normalizer=None):
  """One micro-batch's loss; gradients accumulate in MultiSteps, applied every k calls."""
  weights = batch.get('weight')  # a padded batch: 0 for padding (loss, BatchNorm statistics).
  logits, collections = model.apply(
    {'params': params, **collections},
    batch['image'],
    train=True,
    mutable=list(collections),
    **({} if weights is None else {'mask': weights > 0}),
  )
  logits = losses.upsample_logits(logits, batch['label'].shape[1:3], align_corners)
  loss = image_mean_cross_entropy(logits, batch['label'], ignore_index, weights, normalizer)
  return loss, ({}, dict(collections))


def pseudo_label_reader(run: run_dir.RunDir, ids: list[str]):
  def read(index: int, record) -> np.ndarray:
    path = run.label_file(ids[index])
    lab = run_dir.read_label_png(path)
    if lab.shape != record['image'].shape[:2]:
      raise ValueError(
        f'{path}: size {lab.shape} differs from its image {record["image"].shape[:2]}'
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
  cfg = config.finalize(cfg)
  for supervision in run_dir.supervisions(cfg):
    _train(cfg, run_dir.RunDir(workdir), supervision)


def recorded_plan_allows(directory, plan: update_plan.UpdatePlan, iterations: int) -> bool:
  """Whether to train a segmenter in `directory` under `plan`. Checkpoint steps count
  micro-steps, so a run resumes only under the micro-steps per update it started with
  (`update_plan.json`, written with no checkpoint yet). A run that finished under another
  plan is complete (False); an unfinished one is a one-line error. Checkpoints without a
  record (an earlier version's run, an imported model) are taken as they are."""
  record = directory / 'update_plan.json'
  mngr = checkpoints.manager(directory, read_only=True)
  steps = mngr.all_steps()
  mngr.close()
  if not steps:
    if parallel.is_writer():
      run_dir.write_json(record, dataclasses.asdict(plan))
    return True
  if not record.is_file():
    logging.warning('%s: no update_plan.json; its steps are read as %s', directory, plan)
    return True
  before = update_plan.UpdatePlan(**json.loads(record.read_text()))
  if before.micro_steps == plan.micro_steps:
    return True
  if max(steps) >= iterations * before.micro_steps:
    logging.info(
      '%s: complete (trained with %d micro-steps per update on %d devices), skipping',
      directory,
      before.micro_steps,
      before.devices,
    )
    return False
  devices = f'{before.devices} device' + 's' * (before.devices != 1)
  raise ValueError(
    f'{directory} was started with {before.micro_steps} micro-steps per update '
    f'({before.micro_batch} examples each on {devices}) and cannot resume with '
    f'{plan.micro_steps} (its steps count micro-steps): resume it with the devices and the '
    'segment.batch_size, accumulation_steps and fold_accumulation it started with, or train '
    'in another WORKDIR'
  )


def _train(cfg, run: run_dir.RunDir, supervision: str) -> None:
  s = cfg.segment
  plan = update_plan_of(cfg)
  micro_steps = s.iterations * plan.micro_steps
  run.segmenter(supervision).mkdir(parents=True, exist_ok=True)
  if not recorded_plan_allows(run.segmenter(supervision), plan, s.iterations):
    return
  if supervision == 'pseudo':
    # Before the data: a missing stage input is named first.
    ids = run_dir.read_json(run.labels_index(), 'label')['ids']
    labels_for = pseudo_label_reader(run, ids)
  else:
    labels_for = ground_truth_reader
  model = from_config.segmenter(cfg)
  name = 'segment' if supervision == 'pseudo' else f'segment_{supervision}'
  logging.info(
    'segment (%s labels): %d iterations of %d x %d accumulation steps',
    supervision,
    s.iterations,
    s.batch_size,
    s.accumulation_steps,
  )
  update_plan.log(
    name,
    plan,
    {
      'segment.batch_size': "more crops per micro-step (a larger update than the paper's)",
      'segment.accumulation_steps': 'more crops per update, folded into the devices '
      "(a larger update than the paper's)",
      'segment.fold_accumulation': 'True folds the accumulation steps into the devices '
      '(same update)',
    },
  )
  training.fit(
    training.Task(
      name=name,
      checkpoint_dir=run.segmenter(supervision),
      log_path=run.log(name),
      tensorboard=run.tensorboard(name),
      total_steps=micro_steps,
      init_variables=lambda: from_config.init_variables(model, cfg, jax.random.key(cfg.seed + 1)),
      optimizer=lambda params: make_optimizer(cfg, params, plan.micro_steps),
      loss_fn=functools.partial(
        loss_fn,
        model=model,
        ignore_index=s.ignore_index,
        align_corners=s.upsample_align_corners,
        normalizer=plan.normalizer,
      ),
      batches=lambda start: input_pipeline.iterate(
        input_pipeline.segment_dataset(
          sources.load(cfg)['train'], labels_for, cfg, s.iterations, plan, seed=cfg.seed + 1
        ),
        start,
        cfg,
      ),
      log_every=s.log_every_steps,
      checkpoint_every=s.checkpoint_every_steps,
      keep_period=micro_steps,
      learning_rate=lambda step: float(
        optim.poly(s.base_lr, s.iterations, s.lr_power)(step // plan.micro_steps)
      ),
    )
  )
