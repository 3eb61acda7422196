"""Stage 3: train the DeepLab segmenter (VGG16 or ResNet-101, LargeFOV or ASPP head) on pseudo
labels (ignore label 255), and on ground-truth masks for the fully supervised upper bound."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from cows_jax import config, losses, optim, run_dir, training
from cows_jax.data import input_pipeline, sources
from cows_jax.models import from_config
from cows_jax.models.deeplab import PRETRAINED_GROUPS


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


def image_mean_cross_entropy(logits, labels, ignore_index, weights=None):
  """Mean over images of each image's pixel loss: the reference's batch of 1 with gradients
  accumulated over k steps, so batch size, accumulation and device count are interchangeable.
  `weights` [B]: 0 for the padding of a batch, which then does not count."""
  per_image = jax.vmap(lambda z, y: losses.pixel_cross_entropy(z[None], y[None], ignore_index))
  if weights is None:
    return jnp.mean(per_image(logits, labels))
  return jnp.sum(per_image(logits, labels) * weights) / jnp.maximum(jnp.sum(weights), 1e-9)


def loss_fn(params, collections, batch, *, model, ignore_index, align_corners):
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
  loss = image_mean_cross_entropy(logits, batch['label'], ignore_index, weights)
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


def _train(cfg, run: run_dir.RunDir, supervision: str) -> None:
  s = cfg.segment
  micro_steps = s.iterations * s.accumulation_steps
  if supervision == 'pseudo':
    # Before the data: a missing stage input is named first.
    ids = run_dir.read_json(run.labels_index(), 'label')['ids']
    labels_for = pseudo_label_reader(run, ids)
  else:
    labels_for = ground_truth_reader
  model = from_config.segmenter(cfg)
  name = 'segment' if supervision == 'pseudo' else f'segment_{supervision}'
  logging.info(
    'segment (%s labels): %d iterations x %d accumulation steps',
    supervision,
    s.iterations,
    s.accumulation_steps,
  )
  training.fit(
    training.Task(
      name=name,
      checkpoint_dir=run.segmenter(supervision),
      log_path=run.log(name),
      tensorboard=run.tensorboard(name),
      total_steps=micro_steps,
      init_variables=lambda: from_config.init_variables(model, cfg, jax.random.key(cfg.seed + 1)),
      optimizer=lambda params: make_optimizer(cfg, params),
      loss_fn=functools.partial(
        loss_fn,
        model=model,
        ignore_index=s.ignore_index,
        align_corners=s.upsample_align_corners,
      ),
      batches=lambda start: input_pipeline.iterate(
        input_pipeline.segment_dataset(
          sources.load(cfg)['train'], labels_for, cfg, micro_steps, s.batch_size, seed=cfg.seed + 1
        ),
        start,
        cfg,
      ),
      log_every=s.log_every_steps,
      checkpoint_every=s.checkpoint_every_steps,
      keep_period=micro_steps,
      learning_rate=lambda step: float(
        optim.poly(s.base_lr, s.iterations, s.lr_power)(step // s.accumulation_steps)
      ),
    )
  )
