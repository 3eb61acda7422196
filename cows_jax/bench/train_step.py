"""`cows-jax bench train-step`: one classifier SGD step, ours (classify.loss_fn through
training.train_step: the anchor's features reused by its pairings) against the reference's
procedure in JAX (a full pair forward per pairing) and, where torch is importable, the PyTorch
reference (tools/torch_reference.py)."""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cows_jax import classify, losses, training, views
from cows_jax.bench import common
from cows_jax.models import from_config, random_init

HELP = 'one classifier SGD step'


def pair_batch(args):
  """Random normalized images and labels; every pair shares at least one class."""
  rng = np.random.default_rng(0)
  shape = (args.batch, args.size, args.size, 3)
  labels_m = np.zeros((args.batch, args.classes), np.float32)
  labels_n = np.zeros_like(labels_m)
  for b in range(args.batch):
    common, own_m, own_n = rng.integers(args.classes, size=3)
    labels_m[b, [common, own_m]] = 1
    labels_n[b, [common, own_n]] = 1
  return {
    'image_m': rng.normal(size=shape).astype(np.float32),
    'image_n': rng.normal(size=shape).astype(np.float32),
    'labels_m': labels_m,
    'labels_n': labels_n,
  }


def reference_procedure_loss(params, model, batch, use_contrastive, weights, self_views):
  """The reference's step in JAX: a full pair forward of both images per pairing (the anchor
  through the backbone once per pairing), the same losses as classify.loss_fn."""
  apply = functools.partial(model.apply, {'params': params})
  l_m, l_n = batch['labels_m'], batch['labels_n']
  terms = losses.coattention_losses(
    apply(batch['image_m'], batch['image_n']), l_m, l_n, use_contrastive
  )
  by_view = {}
  for view in self_views:
    f_m = apply(batch['image_m'], method=model.features)
    # The reference's views come from m before colour jitter.
    f_v = apply(
      views.make_view(batch.get('image_m_plain', batch['image_m']), view), method=model.features
    )
    by_view[views.view_key(view)] = apply(f_m, f_v, method=model.pair_head)
  terms.update(losses.self_pair_losses(by_view, l_m))
  return sum(weights[k] * terms[k] for k in terms)


def jax_step(args, naive: bool) -> dict:
  cfg = common.classifier_config(args)
  model = from_config.classifier(cfg)
  params = random_init.classifier_params(model, args.size, 0)
  tx = classify.make_optimizer(cfg, params, 1000)
  weights, self_views = classify.loss_weights(cfg), common.SELF_VIEWS[args.views]

  def naive_step(params, opt_state, batch, on):
    grads = jax.grad(reference_procedure_loss)(params, model, batch, on, weights, self_views)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  loss_fn = functools.partial(classify.loss_fn, model=model, weights=weights, self_views=self_views)

  def ours_step(params, opt_state, batch, on):
    state = training.TrainState.create({'params': params}, opt_state)
    state, _ = training.train_step(state, batch, on, loss_fn=loss_fn, tx=tx)
    return state.params, state.opt_state

  step = jax.jit(naive_step if naive else ours_step, donate_argnums=(0, 1))
  batch = jax.tree.map(jnp.asarray, pair_batch(args))
  on = jnp.asarray(True)
  result = common.time_jitted(
    step, (params, tx.init(params), batch, on), args.steps, lambda out: (*out, batch, on)
  )
  return {**result, **common.jax_device(args.dtype)}


def torch_step(args) -> dict:
  """The reference step: a full pair forward per pairing, backward, SGD."""
  common.cpu_only_jax()
  import torch

  from cows_jax.tools import torch_reference as ref

  device, kind = common.torch_device()
  c = common.classifier_config(args).classify
  model = ref.CoAttentionClassifier(args.classes, args.width).to(device)
  opt = ref.sgd(
    model,
    c.base_lr,
    c.momentum,
    c.nesterov,
    c.weight_decay,
    c.lr_mult_pretrained_weight,
    c.lr_mult_pretrained_bias,
    c.lr_mult_new_weight,
    c.lr_mult_new_bias,
  )
  data = pair_batch(args)
  tensors = [
    ref.nchw(data['image_m']).to(device),
    ref.nchw(data['image_n']).to(device),
    torch.from_numpy(data['labels_m']).to(device),
    torch.from_numpy(data['labels_n']).to(device),
  ]
  view_images = [
    ref.nchw(views.make_view(data['image_m'], v)).to(device) for v in common.SELF_VIEWS[args.views]
  ]

  def step():
    with common.torch_autocast(device, args.dtype):
      return ref.train_step(
        model,
        opt,
        *tensors,
        view_images,
        c.contrastive_from_epoch,
        c.contrastive_from_epoch,
      )

  result = common.torch_timed(step, args.steps)
  return {**result, **common.torch_result(device, kind, args.dtype)}


def run(args) -> None:
  pairings = 1 + len(common.SELF_VIEWS[args.views])
  rows = [
    ('jax, anchor features reused', common.isolated(jax_step, args, False)),
    ('jax, pair forward each', common.isolated(jax_step, args, True)),
  ]
  if importlib.util.find_spec('torch'):
    rows.append(('torch, pair forward each', common.isolated(torch_step, args)))
  title = (
    f'bench train-step: size {args.size}, batch {args.batch} pairs, views {args.views} '
    f'({pairings} pairings), width {args.width}, classes {args.classes}, {args.dtype}, '
    f'{args.steps} timed steps'
  )
  # The pairs' images consumed per step (the views are derived from them).
  common.report(args, title, rows, 's/step', 'images', 2 * args.batch)


def add_arguments(parser) -> None:
  common.add_views(parser, required=True)
  parser.add_argument('--batch', type=int, required=True, help='pairs per step')
  parser.add_argument('--steps', type=int, default=5, help='timed steps')
  common.add_size(parser)
  common.add_model(parser)
  common.add_dtype_and_json(parser)
