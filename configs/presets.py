"""Shared parts of the configs (voc12*.py, lid20.py, synthetic.py) and their one argument parser.

What the configs share lives here: the VOC data fields, the CPU from-scratch settings, the
`:runlocal` shrink that lets the whole pipeline run on a 2-core CPU in minutes on the same
data (a smoke run of the code path, not a result), the `:gpu` and `:tpu` arguments every config
takes (mixed precision and input worker processes, the same math), and `with_arg`, through
which every config takes its arguments.
"""

from typing import Callable

import ml_collections

from cows_jax.configs.defaults import paper_defaults


def voc12() -> ml_collections.ConfigDict:
  """Setting 1: the paper defaults on the user's copy of VOC 2012 + the augmented set."""
  c = paper_defaults()
  c.data.name = 'voc12'
  c.data.num_classes = 20
  c.data.image_size = 0  # original image sizes
  c.data.classify_split = 'train_aug'
  c.data.train_split = 'train_aug'
  c.data.eval_split = 'val'
  return c


def cpu_from_scratch(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks `c` in place to what a 2-core CPU trains from scratch (no ImageNet weights exist
  for a width-scaled VGG): small inputs and backbone, larger base learning rates. Shared by
  configs/synthetic.py and `:runlocal`."""
  c.input.size = 64
  c.model.width = 0.125
  c.model.norm = 'batch'
  c.model.allow_random_init = True  # no ImageNet weights exist for a width-scaled VGG.
  # Nothing is pretrained here, so every layer gets the multipliers of the paper's new
  # layers' *pretrained* counterparts (1x weights, 2x biases); 10x on a from-scratch head
  # kills its ReLUs (measured: 3% active after 400 steps at base 4e-2).
  c.classify.base_lr = 5e-2
  c.classify.lr_mult_new_weight, c.classify.lr_mult_new_bias = 1.0, 2.0
  c.classify.batch_pairs = 8
  c.classify.contrastive_from_epoch = 1
  # Self-pairs cost 3.8x the backbone work of a (m, n) pair (flip, 0.75x and 2x views);
  # the CPU budget spends it on more (m, n) steps instead.
  c.classify.self_views = ()
  # VGG16 with BatchNorm trains from scratch; ResNet's frozen BN needs ImageNet statistics.
  c.segment.backbone = 'vgg16'
  c.segment.crop_size = 96
  c.segment.batch_size = 8
  c.segment.accumulation_steps = 1
  c.segment.base_lr = 1e-2
  c.segment.head_dilation = 4
  # Images of 128 px or less leave a 401 px window nothing to slide over (it would only pad
  # them): each scaled image runs whole.
  c.inference.window = 0
  return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks `c` in place: a sample of each split, small square images, a width-scaled
  backbone trained from scratch (`cpu_from_scratch`), few steps."""
  cpu_from_scratch(c)
  c.data.max_per_split = 200
  c.data.image_size = 128
  c.classify.epochs, c.classify.lr_decay_epochs, c.localize.after_epochs = 4, (3,), 4
  c.classify.log_every_steps = 10
  c.segment.iterations = 100
  c.segment.log_every_steps = 20
  return c


def accelerator(c: ml_collections.ConfigDict, workers: int) -> ml_collections.ConfigDict:
  """Mixed precision and a fed accelerator, the same math: both trained models compute in
  bfloat16 with float32 parameters and optimizer state (the co-attention affinity and its
  softmaxes stay float32, models/coattention.py); `workers` grain processes decode, resize
  and jitter, and 4 batches are read ahead, the next ones already on the device."""
  c.model.dtype = 'bfloat16'
  c.segment.dtype = 'bfloat16'
  c.input.worker_count = workers
  c.input.prefetch = 4
  return c


def gpu(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`:gpu`: bfloat16 compute, 8 input worker processes (a GPU host's cores per GPU)."""
  return accelerator(c, 8)


def tpu(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`:tpu`: bfloat16 compute, 16 input worker processes (TPU VM hosts have dozens to
  hundreds of vCPUs)."""
  return accelerator(c, 16)


def pod(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`:pod`: a classifier batch that fills a pod slice, departing from the paper. The paper's
  5 pairs leave most of a slice's devices padding (5 real of 8 slots, 5 of 32); with `:pod`
  each device takes 1 pair (8 pairs on 8 devices, 256 on 256), the learning rates scale by
  the linear rule (x batch / 5) and rise linearly over the first epoch. The segmenter's
  update stays the paper's: its accumulation steps fold into the devices
  (segment.fold_accumulation) without changing it."""
  c.classify.pairs_per_device = 1
  c.classify.warmup_epochs = 1.0
  return c


# Every config takes these besides its own arguments, alone or after them (`runlocal,gpu`).
ACCELERATORS = {'gpu': gpu, 'tpu': tpu}
SHARED = {**ACCELERATORS, 'pod': pod}


def with_arg(c: ml_collections.ConfigDict, arg: str | None, name: str, **presets: Callable):
  """Applies the config argument (`NAME:ARG`) to `c`: one or more comma-separated arguments
  (`runlocal,gpu`), applied in order, each one of `presets` (functions that change `c` in
  place) or of SHARED (gpu, tpu: at most one; pod); no argument leaves `c` as it is.
  Anything else is a one-line error naming the config and the arguments it knows."""
  if not arg:
    return c
  args = [a.strip() for a in arg.split(',')]
  for a in args:
    if a not in presets and a not in SHARED:
      known = ', '.join(presets) or 'none'
      raise ValueError(
        f'{name}: unknown config argument {a!r} (known: {known}); gpu, tpu and pod go alone '
        f'or after a comma ({name}:{next(iter(presets), "ARG")},gpu)'
      )
  if len([a for a in args if a in ACCELERATORS]) > 1 or len(set(args)) < len(args):
    raise ValueError(f'{name}: config argument {arg!r} names an argument twice or both gpu and tpu')
  for a in args:
    (presets[a] if a in presets else SHARED[a])(c)
  return c
