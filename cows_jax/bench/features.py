"""`cows-jax bench features`: the classifier's backbone on a batch, one image at a time as
localize runs it on the CPU (models/per_image.py) and the whole batch at once, and the PyTorch
reference's where torch is importable."""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np

from cows_jax.bench import common
from cows_jax.models import from_config, per_image, random_init

HELP = "the classifier's backbone, per image and batched"


def jax_features(args, one_at_a_time: bool) -> dict:
  """The classifier's backbone on a batch, as localize runs it (models/per_image.py: one
  image at a time on the CPU) or the whole batch at once."""
  cfg = common.classifier_config(args)
  model = from_config.classifier(cfg)
  variables = {'params': random_init.classifier_params(model, args.size, 0)}
  apply = lambda v, x: model.apply(v, x, method=model.features)
  fn = jax.jit(lambda v, x: per_image.on_cpu(functools.partial(apply, v), x))
  images = np.random.default_rng(0).normal(size=(args.batch, args.size, args.size, 3))
  x = jnp.asarray(images, jnp.float32)
  batched = jax.jit(apply)
  result = common.time_jitted(
    fn if one_at_a_time else batched, (variables, x), args.steps, lambda out: (variables, x)
  )
  result['seconds'] /= args.batch
  # XLA counts a scan's body once: the batched program's count is the work of either.
  flops = common.compile_with_flops(batched, variables, x)[1]
  result['flops'] = None if flops is None else flops / args.batch
  return {**result, **common.jax_device(args.dtype)}


def torch_features(args) -> dict:
  common.cpu_only_jax()
  import torch

  from cows_jax.tools import torch_reference as ref

  device, kind = common.torch_device()
  model = ref.CoAttentionClassifier(args.classes, args.width).to(device).eval()
  rng = np.random.default_rng(0)
  x = ref.nchw(rng.normal(size=(args.batch, args.size, args.size, 3)).astype(np.float32))
  x = x.to(device)

  def run():
    with torch.no_grad(), common.torch_autocast(device, args.dtype):
      out = model.features(x)
    if device == 'cuda':
      torch.cuda.synchronize()
    return out

  result = common.torch_timed(run, args.steps)
  per_image = {k: result[k] / args.batch for k in ('seconds', 'flops')}
  return {**result, **per_image, **common.torch_result(device, kind, args.dtype)}


def run(args) -> None:
  rows = [
    ('jax, one image at a time', common.isolated(jax_features, args, True)),
    ('jax, whole batch', common.isolated(jax_features, args, False)),
  ]
  if importlib.util.find_spec('torch'):
    rows.append(('torch, whole batch', common.isolated(torch_features, args)))
  title = (
    f"bench features: the classifier's backbone, batch {args.batch} at {args.size} px, "
    f'width {args.width}, {args.dtype}'
  )
  common.report(args, title, rows, 's/image', 'images', 1)


def add_arguments(parser) -> None:
  parser.add_argument('--batch', type=int, default=16, help='images (localize.batch_size: 16)')
  parser.add_argument('--steps', type=int, default=2, help='timed calls after the first')
  common.add_size(parser, 256)
  common.add_model(parser)
  common.add_dtype_and_json(parser)
