"""`cows-jax bench segment-step`: one segmenter micro-step (segment.loss_fn through
training.train_step, as training.fit runs it) and, where torch is importable, the PyTorch
reference's (DeepLab-v2 ResNet-101 LargeFOV)."""

import functools
import importlib.util
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from cows_jax import segment, training
from cows_jax.bench import common
from cows_jax.models import random_init

HELP = 'one segmenter micro-step (PyTorch reference too)'


def segment_batch(args):
  """Random normalized crops and labels, with an ignored band (255) as padded crops have."""
  rng = np.random.default_rng(0)
  shape = (args.batch, args.size, args.size)
  label = rng.integers(0, args.classes + 1, size=shape).astype(np.int32)
  label[:, : max(args.size // 8, 1)] = 255
  return {'image': rng.normal(size=(*shape, 3)).astype(np.float32), 'label': label}


def jax_step(args) -> dict:
  """segment.py's micro-step as training.fit runs it: loss, gradients, MultiSteps (SGD every
  segment.accumulation_steps micro-steps)."""
  cfg = common.segmenter_config(args)
  s = cfg.segment
  model = common.segmenter(args, cfg)
  variables = random_init.segmenter_variables(model, args.size, 0)
  tx = segment.make_optimizer(cfg, variables['params'])
  loss_fn = functools.partial(
    segment.loss_fn,
    model=model,
    ignore_index=s.ignore_index,
    align_corners=s.upsample_align_corners,
  )
  step = jax.jit(
    functools.partial(training.train_step, loss_fn=loss_fn, tx=tx), donate_argnums=(0,)
  )
  state = training.TrainState.create(variables, tx.init(variables['params']))
  batch = jax.tree.map(jnp.asarray, segment_batch(args))
  result = common.time_jitted(step, (state, batch), args.steps, lambda out: (out[0], batch))
  return {**result, **common.jax_device(args.dtype)}


def torch_step(args) -> dict:
  """The PyTorch reference's micro-step: DeepLab-v2 ResNet-101 LargeFOV, loss / k backward,
  SGD every k micro-steps."""
  common.cpu_only_jax()
  import torch

  from cows_jax.tools import torch_reference as ref

  device, kind = common.torch_device()
  s = common.segmenter_config(args).segment
  model = ref.DeepLabLargeFOV(
    args.classes + 1,
    args.width,
    common.stages(args.stages),
    s.head_channels,
    s.head_dilation,
    s.resnet_stride_in_1x1,
  ).to(device)
  mults = (
    s.lr_mult_backbone_weight,
    s.lr_mult_backbone_bias,
    s.lr_mult_head_weight,
    s.lr_mult_head_bias,
  )
  opt = ref.segment_sgd(model, s.base_lr, s.momentum, s.weight_decay, mults)
  data = segment_batch(args)
  images = ref.nchw(data['image']).to(device)
  labels = torch.from_numpy(data['label']).long().to(device)
  micro = itertools.count()

  def step():
    with common.torch_autocast(device, args.dtype):
      return ref.segment_train_step(
        model,
        opt,
        images,
        labels,
        next(micro),
        s.accumulation_steps,
        s.ignore_index,
        s.upsample_align_corners,
      )

  result = common.torch_timed(step, args.steps)
  return {**result, **common.torch_result(device, kind, args.dtype)}


def run(args) -> None:
  rows = [('jax', common.isolated(jax_step, args))]
  torch_note = ''
  if args.backbone != 'resnet101' or args.head != 'largefov':
    torch_note = '; the PyTorch reference is ResNet-101 LargeFOV only'
  elif importlib.util.find_spec('torch'):
    rows.append(('torch', common.isolated(torch_step, args)))
  s = common.segmenter_config(args).segment
  title = (
    f'bench segment-step: {args.backbone}-{args.head} (stages {args.stages}), crop '
    f'{args.size}, batch {args.batch}, width {args.width}, {args.classes + 1} classes, '
    f'{args.dtype}; a micro-step of {s.accumulation_steps}, {args.steps} timed{torch_note}'
  )
  common.report(args, title, rows, 's/step', 'images', args.batch)


def add_arguments(parser) -> None:
  parser.add_argument('--batch', type=int, default=1, help='crops per micro-step')
  parser.add_argument('--steps', type=int, default=5, help='timed steps after the first')
  common.add_segmenter(parser)
  common.add_size(parser, 321, ' (the crop)')
  common.add_model(parser)
  common.add_dtype_and_json(parser)
