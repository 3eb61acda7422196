"""`cows-jax pretrain`: the synthetic world's ImageNet backbone.

The paper starts both networks from an ImageNet-trained VGG16; no ImageNet weights exist for
a width-scaled VGG. This stage makes the stand-in: it trains the VGG16 backbone of
models/vgg.py at `model.width`, with BatchNorm after every conv, as a single-label classifier
(global average pool + linear head) on the synthetic pretraining set
(dataset.py: 144 shape x appearance classes, the segmentation classes among
them), then folds BatchNorm into the convs (models/fold.py). The result is a plain VGG16 of
the paper's architecture (model.norm='none'), written as `cows-jax weights import` writes
ImageNet weights:

  DIR/backbone/         orbax checkpoint of {'params': {conv1_1: {kernel, bias}, ...}}
  DIR/provenance.json   arch vgg16, the input convention, the dataset, the training, the
                        final train and val accuracy (written last: it marks DIR complete)
  DIR/training/         the classifier's checkpoints (a killed run resumes), its metric log
                        and TensorBoard events

DIR is `backbones.weights_dir(cfg)`: DATA_DIR/pretrained/<fingerprint> beside the
datasets, the fingerprint covering everything that changes the weights (the dataset spec,
model.width, model.dtype, the pretrain.* training fields, a version). The backbone is made
once per fingerprint and reused; `model.init_from='standin'` (or DIR) loads it.
"""

import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from cows_jax import (
  checkpoints,
  optim,
  parallel,
  run_dir,
  training,
  update_plan,
)
from cows_jax.data import input_pipeline, sources, transforms
from cows_jax.imagenet_standin import backbones
from cows_jax.models import fold, imported
from cows_jax.models.vgg import VGG16LargeFOV

# The images are normalized as torchvision's ImageNet models expect (RGB / 255, ImageNet
# mean and std); provenance.json records it and config.finalize applies it downstream.
INPUT = imported.TORCHVISION_INPUT


class BackboneClassifier(nn.Module):
  """VGG16 backbone ('backbone', as in the classifier and the segmenter), global average
  pool, linear head ('head')."""

  num_classes: int
  width: float = 1.0
  norm: str = 'batch'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    features = VGG16LargeFOV(width=self.width, norm=self.norm, dtype=self.dtype, name='backbone')(
      x, train, mask
    )
    pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, name='head')(pooled)


# ----------------------------------------------------------------------------- config


def make_if_missing(cfg) -> None:
  """Makes the backbone the config names when none has been made or shipped (the runs that
  start from it: the pipeline, ablate, the parts gate)."""
  if backbones.missing(cfg):
    logging.info('=== pretrain (the config names its pretrained backbone; none exists yet) ===')
    run(cfg)


def output_dir(cfg, out: str | None = None) -> str:
  """The absolute path of `out` (a URL such as gs://... as it is), by default of
  `weights_dir(cfg)`."""
  out = out or backbones.weights_dir(cfg)
  return out if '://' in out else os.path.abspath(os.path.expanduser(out))


def steps_per_epoch(cfg) -> int:
  return cfg.pretrain.train_size // cfg.pretrain.batch_size


def problems(cfg) -> list[str]:
  """Every problem of the pretrain.* fields, one line each; [] when it can run."""
  p, out = cfg.pretrain, []
  try:
    backbones.dataset_spec(cfg)
  except ValueError as e:
    out.append(str(e).replace('PretrainSpec.', 'pretrain.'))
  for field, low, high in (
    ('epochs', 1, None),
    ('batch_size', 1, None),
    ('base_lr', 1e-12, None),
    ('warmup_epochs', 0, None),
    ('momentum', 0, 1),
    ('weight_decay', 0, None),
    ('log_every_steps', 1, None),
    ('checkpoint_every_steps', 1, None),
    ('eval_batch_size', 1, None),
    ('train_eval_size', 1, None),
  ):
    value = p[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      out.append(f'pretrain.{field}={value!r}: expected a number')
    elif value < low or (high is not None and value > high):
      bounds = f'>= {low}' if high is None else f'in [{low}, {high}]'
      out.append(f'pretrain.{field}={value!r}: expected a value {bounds}')
  if not out and p.batch_size > p.train_size:
    out.append(f'pretrain.batch_size={p.batch_size}: more than pretrain.train_size={p.train_size}')
  if len(p.scales) != 2 or not 0 < min(p.scales) <= max(p.scales):
    out.append(f'pretrain.scales={tuple(p.scales)}: expected (low, high) with 0 < low <= high')
  if len(p.color_jitter) != 4 or min(p.color_jitter) < 0:
    out.append(f'pretrain.color_jitter={tuple(p.color_jitter)}: expected 4 values >= 0')
  if cfg.model.width <= 0:
    out.append(f'model.width={cfg.model.width}: expected a positive width')
  return out


# ----------------------------------------------------------------------------- data


def _image(record, size: int) -> np.ndarray:
  return transforms.resize_image(record['image'], (size, size))


def train_dataset(source, cfg, seed: int):
  """MapDataset of batches {'image': float32 [B,S,S,3], 'label': int32 [B]} over all epochs:
  a random scale in pretrain.scales, mirror, crop (padded with the mean colour) and colour
  jitter of each image; an epoch's last partial batch is dropped."""
  p, size = cfg.pretrain, cfg.pretrain.image_size
  dummy = np.zeros((size, size), np.uint8)

  def make(index, rng):
    record = source[int(index)]
    image, _ = transforms.random_scale_crop(
      _image(record, size), dummy, rng, tuple(p.scales), False, size, p.mirror, INPUT['mean']
    )
    if any(p.color_jitter):
      image = transforms.color_jitter(image, rng, tuple(p.color_jitter))
    return {
      'image': transforms.normalize(image, INPUT['mean'], INPUT['std']),
      'label': np.int32(record['label']),
    }

  ds = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(p.epochs)
  return input_pipeline._batches(ds.random_map(make, seed=seed), p.batch_size, len(source))


def loss_fn(params, collections, batch, *, model):
  """Softmax cross-entropy; aux: the batch's accuracy and the updated BatchNorm statistics.
  A padded batch's 'weight' (0 for padding) leaves padding out of both."""
  weights = batch.get('weight')
  logits, collections = model.apply(
    {'params': params, **collections},
    batch['image'],
    train=True,
    mutable=list(collections),
    mask=None if weights is None else weights > 0,
  )
  weights = jnp.ones(logits.shape[0], jnp.float32) if weights is None else weights
  total = jnp.maximum(jnp.sum(weights), 1e-9)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
  loss = jnp.sum(ce * weights) / total
  return loss, ({'accuracy': jnp.sum(correct * weights) / total}, dict(collections))


def schedule(cfg, total_steps: int):
  """Linear warmup over pretrain.warmup_epochs, then cosine decay to 0."""
  warmup = min(int(cfg.pretrain.warmup_epochs * steps_per_epoch(cfg)), total_steps - 1)
  return optax.warmup_cosine_decay_schedule(0.0, cfg.pretrain.base_lr, warmup, total_steps, 0.0)


def make_optimizer(cfg, params, total_steps: int):
  p = cfg.pretrain
  ones = jax.tree.map(lambda _: 1.0, params)
  return optim.sgd(schedule(cfg, total_steps), p.momentum, p.nesterov, p.weight_decay, ones)


# ----------------------------------------------------------------------------- evaluation


def accuracy(model, variables, source, indices, cfg) -> tuple[float, np.ndarray]:
  """(top-1 accuracy, logits) of `model` in eval mode on records `indices` of `source`."""
  size, batch = cfg.pretrain.image_size, cfg.pretrain.eval_batch_size
  forward = jax.jit(lambda v, x: model.apply(v, x))
  logits, labels = [], []
  for start in range(0, len(indices), batch):
    chunk = [source[int(i)] for i in indices[start : start + batch]]
    images = np.stack(
      [transforms.normalize(_image(r, size), INPUT['mean'], INPUT['std']) for r in chunk]
    )
    pad = batch - len(chunk)  # one shape, one compile.
    images = np.concatenate([images, np.repeat(images[:1], pad, 0)]) if pad else images
    logits.append(np.asarray(forward(variables, images))[: len(chunk)])
    labels += [r['label'] for r in chunk]
  logits = np.concatenate(logits)
  return float(np.mean(logits.argmax(-1) == np.asarray(labels))), logits


# ----------------------------------------------------------------------------- the stage


def run(cfg, out: str | None = None) -> dict:
  """Makes the backbone of `cfg` in `out` (default `backbones.weights_dir(cfg)`), or reuses a complete
  one; returns its provenance."""
  cfg = ml_collections.FrozenConfigDict(cfg)
  found = problems(cfg)
  if found:
    raise ValueError('; '.join(found))
  out = output_dir(cfg, out)
  done = _complete(out, backbones.fingerprint(cfg))
  if done:
    logging.info('pretrain: reusing the backbone in %s', out)
    return done
  # The directory's lock, held by process 0, as a run directory's.
  with run_dir.Lock(run_dir.RunDir(out)) if parallel.is_writer() else contextlib.nullcontext():
    done = _complete(out, backbones.fingerprint(cfg))  # another job may have finished it meanwhile.
    return done or _train(cfg, out)


def _complete(out: str, fp: str) -> dict | None:
  """The provenance of a finished backbone of fingerprint `fp` in `out`, None when there is
  none; a finished backbone of another config is an error."""
  path = epath.Path(out) / 'provenance.json'
  if not path.is_file():
    return None
  provenance = json.loads(path.read_text())
  if provenance.get('pretrain', {}).get('fingerprint') != fp:
    raise ValueError(
      f'{out} holds another backbone (provenance.json: {provenance.get("source", "?")}); '
      'choose another --out directory'
    )
  return provenance


def _train(cfg, out: str) -> dict:
  start_time = time.time()
  spec = backbones.dataset_spec(cfg)
  splits = backbones.load_sources(spec, sources.data_dir(cfg))
  spe, p = steps_per_epoch(cfg), cfg.pretrain
  total = spe * p.epochs
  work = run_dir.RunDir(epath.Path(out) / 'training')
  model = BackboneClassifier(spec.num_classes, cfg.model.width, 'batch', jnp.dtype(cfg.model.dtype))
  size = p.image_size

  def init_variables():
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    return dict(jax.jit(model.init)(jax.random.key(p.seed), x))

  logging.info(
    'pretrain: %d classes, %d images, %d epochs x %d steps of %d -> %s',
    spec.num_classes,
    spec.train_size,
    p.epochs,
    spe,
    p.batch_size,
    out,
  )
  update_plan.log(
    'pretrain',
    update_plan.plan(p.batch_size, 1, jax.device_count(), fold=True),
    {'pretrain.batch_size': 'more images per step'},
  )
  training.fit(
    training.Task(
      name='pretrain',
      checkpoint_dir=work.root / 'checkpoints',
      log_path=work.log('pretrain'),
      tensorboard=work.tensorboard('pretrain'),
      total_steps=total,
      init_variables=init_variables,
      optimizer=lambda params: make_optimizer(cfg, params, total),
      loss_fn=functools.partial(loss_fn, model=model),
      batches=lambda start: input_pipeline.iterate(
        train_dataset(splits['train'], cfg, p.seed), start, cfg
      ),
      log_every=p.log_every_steps,
      checkpoint_every=p.checkpoint_every_steps,
      keep_period=total,
      learning_rate=lambda step: float(schedule(cfg, total)(step)),
    )
  )
  if parallel.is_writer():
    _finish(cfg, model, spec, splits, work, total, out, time.time() - start_time)
  parallel.barrier('pretrain: backbone written')
  return json.loads((epath.Path(out) / 'provenance.json').read_text())


def _finish(cfg, model, spec, splits, work, total: int, out: str, seconds: float) -> None:
  """Folds BatchNorm, measures the folded classifier, writes DIR/backbone and then
  DIR/provenance.json."""
  like = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1, spec.image_size, spec.image_size, 3))
  )
  variables, _ = checkpoints.restore_variables(work.root / 'checkpoints', total, like, 'pretrain')
  variables = jax.tree.map(np.asarray, variables)
  backbone = fold.fold_vgg16_batchnorm({col: tree['backbone'] for col, tree in variables.items()})
  plain = dataclasses.replace(model, norm='none')
  plain_vars = {'params': {'backbone': backbone['params'], 'head': variables['params']['head']}}
  p = cfg.pretrain
  val = np.arange(len(splits['val']))
  train = np.linspace(0, len(splits['train']) - 1, min(p.train_eval_size, len(splits['train'])))
  train = train.round().astype(int)
  val_accuracy, val_logits = accuracy(plain, plain_vars, splits['val'], val, cfg)
  train_accuracy, _ = accuracy(plain, plain_vars, splits['train'], train, cfg)
  _, bn_logits = accuracy(model, variables, splits['val'], val, cfg)
  provenance = {
    'arch': 'vgg16',
    'format': 'cows_jax_pretrain',
    'source': f'cows-jax pretrain on the synthetic pretraining set {spec.fingerprint()}',
    'input': INPUT,
    'ignored_keys': ['head/kernel', 'head/bias'],
    'pretrain': {
      'fingerprint': backbones.fingerprint(cfg),
      'version': backbones.VERSION,
      'dataset': {**dataclasses.asdict(spec), 'fingerprint': spec.fingerprint()},
      # Relative paths only: the directory travels (the shipped backbones).
      'dataset_build': os.path.join(*epath.Path(splits['train'].build_dir).parts[-3:]),
      'model': {'width': cfg.model.width, 'dtype': cfg.model.dtype, 'norm_in_training': 'batch'},
      'training': {**backbones.training_fields(cfg), 'seed': p.seed},
      'steps': total,
      'steps_per_epoch': steps_per_epoch(cfg),
      'batchnorm_folded': True,
      'accuracy': {
        'train': train_accuracy,
        'train_images': len(train),
        'val': val_accuracy,
        'val_images': len(val),
      },
      # The folded network against the BatchNorm one in eval mode, on the val images.
      'folding_max_logit_difference': float(np.abs(val_logits - bn_logits).max()),
      'seconds': round(seconds, 1),
      'checkpoints': 'training/checkpoints',  # relative to the backbone's directory
    },
  }
  _write(out, backbone, provenance)
  logging.info(
    'pretrain: train accuracy %.3f (%d images), val accuracy %.3f (%d images) -> %s',
    train_accuracy,
    len(train),
    val_accuracy,
    len(val),
    out,
  )


def _write(out: str, variables: dict, provenance: dict) -> None:
  """DIR/backbone (orbax) and then DIR/provenance.json, as `cows-jax weights import` writes
  them; a backbone left by a run killed before its provenance.json is replaced."""
  ckpt = epath.Path(out) / 'backbone'
  if ckpt.exists():
    ckpt.rmtree()
  with ocp.StandardCheckpointer() as ckptr:  # writes to a tmp dir, then renames.
    ckptr.save(ckpt, variables)
  # orbax's commit marker names the absolute path it wrote to; only its presence counts, and
  # the directory travels (the shipped backbones), so it names none.
  marker = ckpt / 'commit_success.txt'
  if marker.exists():
    marker.write_text('Checkpoint commit was successful')
  run_dir.write_json(epath.Path(out) / 'provenance.json', provenance)


def config_flags(out: str) -> str:
  """The flags that start the classifier and the VGG16 segmenter from the backbone in `out`."""
  return (
    f'--config.model.init_from={out} --config.segment.init_from={out} '
    '--config.model.norm=none --config.segment.backbone=vgg16'
  )
