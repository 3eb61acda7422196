"""`cows-jax bench train-step|segment-step|localize|features|inference|input|localize-memory|export`
(and conv, test-time, evaluate: tools/bench_conv.py, tools/bench_test_time.py,
tools/bench_evaluate.py):
our jitted code against the reference's procedure (and, where torch is importable, the PyTorch
reference of cows_jax/tools/torch_reference.py) on random images and randomly initialised
networks; the input pipeline against the training step.

Each measurement runs in its own fresh process, so that its peak memory is its own and one
framework's threads do not compete with the other's. Besides the time, each row shows the
FLOPs of its procedure (XLA's cost analysis of the compiled programs; torch's FlopCounterMode
for the PyTorch rows), the FLOP/s achieved and the MFU against the device's peak
(`PEAK_TFLOPS`); `--json FILE` writes the same table as JSON.
"""

import argparse
import concurrent.futures
import contextlib
import functools
import importlib.util
import itertools
import json
import math
import multiprocessing
import os
import re
import resource
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import export as jax_export
from PIL import Image

from cows_jax import (
  checkpoints,
  classify,
  config,
  export,
  inference,
  localize,
  losses,
  maps,
  run_dir,
  segment,
  test_time,
  training,
  views,
)
from cows_jax.configs.defaults import paper_defaults
from cows_jax.data import input_pipeline, sources
from cows_jax.models import from_config, per_image, random_init
from cows_jax.tools import bench_conv, bench_evaluate, bench_test_time

SELF_VIEWS = {'pair': (), 'full': ('flip', 0.75, 2.0)}
CLASSES_PER_IMAGE = 2  # localize: classes of each query image (VOC train averages ~1.5).


def _config(args):
  cfg = paper_defaults()
  cfg.input.size = args.size
  cfg.model.width = args.width
  cfg.model.dtype = args.dtype
  cfg.data.num_classes = args.classes
  if args.what == 'localize':
    cfg.localize.num_related = args.related
  return cfg


def _peak_mib(device_stats) -> tuple[float, str]:
  """Device peak bytes where the backend reports them, else this process's max RSS."""
  if device_stats and 'peak_bytes_in_use' in device_stats:
    return device_stats['peak_bytes_in_use'] / 2**20, 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'max RSS'


def _isolated(fn, *args):
  """fn(*args) in a fresh process (spawned: JAX does not survive a fork)."""
  ctx = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
    return pool.submit(fn, *args).result()


def _cpu_only_jax():
  """The torch measurements use JAX only to prepare inputs: keep it off the accelerator."""
  jax.config.update('jax_platforms', 'cpu')


# --- peak FLOP/s and FLOP counts ----------------------------------------------------------

# Dense peak TFLOP/s of one JAX device (a GPU, a TPU v4 or later chip, a TPU v2/v3 core), from
# the vendors' datasheets (no sparsity): (pattern of the lower-case device_kind, name, bfloat16,
# float32). float32 is the rate of XLA's default precision: TF32 tensor cores on NVIDIA GPUs
# from Ampere on, one bfloat16 pass on TPUs, the CUDA cores on V100 and T4 (which have no
# bfloat16 tensor cores: None, MFU '-'). Anything else (the CPU included) is 'unknown'.
PEAK_TFLOPS = (
  (r'gh200', 'GH200', 989.0, 494.5),
  (r'h200 nvl', 'H200 NVL', 835.0, 417.5),
  (r'h200', 'H200', 989.0, 494.5),
  (r'h100 nvl', 'H100 NVL', 835.0, 417.5),
  (r'h100 pcie', 'H100 PCIe', 756.0, 378.0),
  (r'h100', 'H100 SXM', 989.0, 494.5),
  (r'b200', 'B200', 2250.0, 1100.0),
  (r'a100', 'A100', 312.0, 156.0),
  (r'l40s', 'L40S', 362.0, 183.0),
  (r'\bl4\b', 'L4', 121.0, 60.0),
  (r'\ba10\b', 'A10', 125.0, 62.5),
  (r'v100', 'V100', None, 15.7),
  (r'\bt4\b', 'T4', None, 8.1),
  (r'tpu v2', 'TPU v2 (a core)', 22.5, 22.5),
  (r'tpu v3', 'TPU v3 (a core)', 61.5, 61.5),
  (r'tpu v4', 'TPU v4', 275.0, 275.0),
  (r'tpu v5 ?lite|tpu v5e', 'TPU v5e', 197.0, 197.0),
  (r'tpu v5', 'TPU v5p', 459.0, 459.0),
  (r'tpu v6', 'TPU v6e', 918.0, 918.0),
)


def device_peak(device_kind: str) -> tuple[str, dict]:
  """(name, {'bfloat16': FLOP/s or None, 'float32': FLOP/s or None}) of a device kind
  (jax's `device_kind`, torch's device name); ('unknown', None for both) when the table does
  not have it."""
  for pattern, name, bf16, fp32 in PEAK_TFLOPS:
    if re.search(pattern, device_kind.lower()):
      return name, {
        'bfloat16': None if bf16 is None else bf16 * 1e12,
        'float32': None if fp32 is None else fp32 * 1e12,
      }
  return 'unknown', {'bfloat16': None, 'float32': None}


def compile_with_flops(jitted, *args) -> tuple:
  """(the executable of `jitted` for `args`, compiled ahead of time, and its FLOPs per call by
  XLA's cost analysis, or None where the backend does not count them)."""
  compiled = jitted.lower(*args).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = (cost or {}).get('flops')
  return compiled, (float(flops) if flops is not None and flops >= 0 else None)


def _signature(args) -> str:
  """The shapes, dtypes and shardings of a call's arguments: one executable each."""
  leaves, tree = jax.tree.flatten(args)
  return repr(
    (
      tree,
      [
        (np.shape(x), str(getattr(x, 'dtype', type(x))), getattr(x, 'sharding', None))
        for x in leaves
      ],
    )
  )


class FlopCounter:
  """Wraps jitted functions: each call runs the executable compiled ahead of time for its
  argument shapes (once per shape, as jit would) and adds its XLA FLOPs to `flops`."""

  def __init__(self):
    self.flops, self.known, self._compiled = 0.0, True, {}

  def wrap(self, jitted, count_as=None):
    """`count_as`: a jitted function of the same work whose FLOPs XLA can count (XLA counts
    a scan's body once: models/per_image.py's scan is counted as the batched network)."""

    def call(*args):
      key = (id(jitted), _signature(args))
      if key not in self._compiled:
        compiled, flops = compile_with_flops(jitted, *args)
        if count_as is not None:
          flops = compile_with_flops(count_as, *args)[1]
        self._compiled[key] = compiled, flops
      compiled, flops = self._compiled[key]
      if flops is None:
        self.known = False
      else:
        self.flops += flops
      return compiled(*args)

    return call

  def take(self) -> float | None:
    """The FLOPs counted since the last take (None if a program had no count)."""
    flops, known = self.flops, self.known
    self.flops, self.known = 0.0, True
    return flops if known else None


# A context around the timed calls of _time_jitted: `bench device --profile` sets a
# jax.profiler trace (tools/bench_device.py).
timed_calls = contextlib.nullcontext


def _time_jitted(jitted, args: tuple, steps: int, advance) -> dict:
  """First call (compile included) and the mean of `steps` later calls of a jitted step, run
  as the executable compiled ahead of time, whose FLOPs XLA counts. `advance(out)` gives the
  next call's arguments (a donated state threaded through)."""
  start = time.perf_counter()
  compiled, flops = compile_with_flops(jitted, *args)
  out = jax.block_until_ready(compiled(*args))
  first = time.perf_counter() - start
  args = advance(out)
  with timed_calls():
    start = time.perf_counter()
    for _ in range(steps):
      out = compiled(*args)
      args = advance(out)
    jax.block_until_ready(out)
    seconds = (time.perf_counter() - start) / steps
  return {'first': first, 'seconds': seconds, 'flops': flops}


def _jax_device(dtype: str) -> dict:
  device = jax.devices()[0]
  return {
    'device': str(device),
    'device_kind': device.device_kind,
    'dtype': dtype,
    'peak': _peak_mib(device.memory_stats()),
  }


def _torch_device():
  """('cuda' or 'cpu', the device's name for the peak table)."""
  import torch

  if torch.cuda.is_available():
    return 'cuda', torch.cuda.get_device_name()
  return 'cpu', 'cpu'


def _torch_result(device: str, kind: str, dtype: str) -> dict:
  import torch

  cuda = device == 'cuda'
  stats = {'peak_bytes_in_use': torch.cuda.max_memory_allocated()} if cuda else None
  return {'device': device, 'device_kind': kind, 'dtype': dtype, 'peak': _peak_mib(stats)}


def _torch_autocast(device: str, dtype: str):
  """bfloat16 autocast for `--dtype bfloat16` (float32 parameters, as ours), else nothing."""
  import torch

  return torch.autocast(device, torch.bfloat16, enabled=dtype == 'bfloat16')


def _torch_flops(fn) -> float:
  """FLOPs of one call of fn (torch's FlopCounterMode: convolutions and matmuls)."""
  from torch.utils.flop_counter import FlopCounterMode

  with FlopCounterMode(display=False) as counter:
    fn()
  return float(counter.get_total_flops())


# --- train-step ---------------------------------------------------------------------------


def _pair_batch(args):
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


def _jax_train_step(args, naive: bool) -> dict:
  cfg = _config(args)
  model = from_config.classifier(cfg)
  params = random_init.classifier_params(model, args.size, 0)
  tx = classify.make_optimizer(cfg, params, 1000)
  weights, self_views = classify.loss_weights(cfg), SELF_VIEWS[args.views]

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
  batch = jax.tree.map(jnp.asarray, _pair_batch(args))
  on = jnp.asarray(True)
  result = _time_jitted(
    step, (params, tx.init(params), batch, on), args.steps, lambda out: (*out, batch, on)
  )
  return {**result, **_jax_device(args.dtype)}


def _torch_train_step(args) -> dict:
  """The reference step: a full pair forward per pairing, backward, SGD."""
  _cpu_only_jax()
  import torch

  from cows_jax.tools import torch_reference as ref

  device, kind = _torch_device()
  c = _config(args).classify
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
  data = _pair_batch(args)
  tensors = [
    ref.nchw(data['image_m']).to(device),
    ref.nchw(data['image_n']).to(device),
    torch.from_numpy(data['labels_m']).to(device),
    torch.from_numpy(data['labels_n']).to(device),
  ]
  view_images = [
    ref.nchw(views.make_view(data['image_m'], v)).to(device) for v in SELF_VIEWS[args.views]
  ]

  def step():
    with _torch_autocast(device, args.dtype):
      return ref.train_step(
        model,
        opt,
        *tensors,
        view_images,
        c.contrastive_from_epoch,
        c.contrastive_from_epoch,
      )

  result = _torch_timed(step, args.steps)
  return {**result, **_torch_result(device, kind, args.dtype)}


def _torch_timed(step, steps: int) -> dict:
  """First call, the mean of `steps` later calls (each returns a Python float: it waits for
  the device), and the FLOPs of one more call."""
  start = time.perf_counter()
  step()
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    step()
  seconds = (time.perf_counter() - start) / steps
  return {'first': first, 'seconds': seconds, 'flops': _torch_flops(step)}


def train_step_bench(args) -> None:
  pairings = 1 + len(SELF_VIEWS[args.views])
  rows = [
    ('jax, anchor features reused', _isolated(_jax_train_step, args, False)),
    ('jax, pair forward each', _isolated(_jax_train_step, args, True)),
  ]
  if importlib.util.find_spec('torch'):
    rows.append(('torch, pair forward each', _isolated(_torch_train_step, args)))
  title = (
    f'bench train-step: size {args.size}, batch {args.batch} pairs, views {args.views} '
    f'({pairings} pairings), width {args.width}, classes {args.classes}, {args.dtype}, '
    f'{args.steps} timed steps'
  )
  # The pairs' images consumed per step (the views are derived from them).
  _report(args, title, rows, 's/step', 'images', 2 * args.batch)


# --- segment-step -------------------------------------------------------------------------


def _stages(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(','))


def _segment_config(args):
  cfg = paper_defaults()
  cfg.data.num_classes = args.classes
  cfg.model.width = args.width
  s = cfg.segment
  s.backbone, s.head, s.dtype = args.backbone, args.head, args.dtype
  if args.what == 'segment-step':
    s.crop_size, s.batch_size = args.size, args.batch
  return cfg


def _segmenter(args, cfg):
  """The config's segmenter, with `--stages` blocks per ResNet stage (default ResNet-101's)."""
  return from_config.segmenter(cfg).clone(resnet_stages=_stages(args.stages))


def _segment_batch(args):
  """Random normalized crops and labels, with an ignored band (255) as padded crops have."""
  rng = np.random.default_rng(0)
  shape = (args.batch, args.size, args.size)
  label = rng.integers(0, args.classes + 1, size=shape).astype(np.int32)
  label[:, : max(args.size // 8, 1)] = 255
  return {'image': rng.normal(size=(*shape, 3)).astype(np.float32), 'label': label}


def _jax_segment_step(args) -> dict:
  """segment.py's micro-step as training.fit runs it: loss, gradients, MultiSteps (SGD every
  segment.accumulation_steps micro-steps)."""
  cfg = _segment_config(args)
  s = cfg.segment
  model = _segmenter(args, cfg)
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
  batch = jax.tree.map(jnp.asarray, _segment_batch(args))
  result = _time_jitted(step, (state, batch), args.steps, lambda out: (out[0], batch))
  return {**result, **_jax_device(args.dtype)}


def _torch_segment_step(args) -> dict:
  """The PyTorch reference's micro-step: DeepLab-v2 ResNet-101 LargeFOV, loss / k backward,
  SGD every k micro-steps."""
  _cpu_only_jax()
  import torch

  from cows_jax.tools import torch_reference as ref

  device, kind = _torch_device()
  s = _segment_config(args).segment
  model = ref.DeepLabLargeFOV(
    args.classes + 1,
    args.width,
    _stages(args.stages),
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
  data = _segment_batch(args)
  images = ref.nchw(data['image']).to(device)
  labels = torch.from_numpy(data['label']).long().to(device)
  micro = itertools.count()

  def step():
    with _torch_autocast(device, args.dtype):
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

  result = _torch_timed(step, args.steps)
  return {**result, **_torch_result(device, kind, args.dtype)}


def segment_step_bench(args) -> None:
  rows = [('jax', _isolated(_jax_segment_step, args))]
  torch_note = ''
  if args.backbone != 'resnet101' or args.head != 'largefov':
    torch_note = '; the PyTorch reference is ResNet-101 LargeFOV only'
  elif importlib.util.find_spec('torch'):
    rows.append(('torch', _isolated(_torch_segment_step, args)))
  s = _segment_config(args).segment
  title = (
    f'bench segment-step: {args.backbone}-{args.head} (stages {args.stages}), crop '
    f'{args.size}, batch {args.batch}, width {args.width}, {args.classes + 1} classes, '
    f'{args.dtype}; a micro-step of {s.accumulation_steps}, {args.steps} timed{torch_note}'
  )
  _report(args, title, rows, 's/step', 'images', args.batch)


# --- inference ----------------------------------------------------------------------------


def _image_size(text: str) -> tuple[int, int]:
  """'500x375' (width x height, as VOC lists them) -> (height, width)."""
  w, h = (int(x) for x in text.lower().split('x'))
  return h, w


def _inference_config(args):
  return bench_test_time.with_inference_args(_segment_config(args), args)


def _jax_inference(args) -> dict:
  """The segmenter's test-time procedure (test_time.predict around
  inference.window_probabilities, as inference.load_predictor runs it) on random VOC-sized
  images: scales, mirror, windows, softmax averaged, resized back."""
  cfg = _inference_config(args)
  settings = inference.Settings.from_config(cfg)
  model = _segmenter(args, cfg)
  variables = jax.device_put(random_init.segmenter_variables(model, 64, 0))
  probs = inference.window_probabilities(
    model, settings.flip_windows, cfg.segment.upsample_align_corners
  )
  batched = inference.window_probabilities(
    model, settings.flip_windows, cfg.segment.upsample_align_corners, one_at_a_time=False
  )
  counter = FlopCounter()
  counted = counter.wrap(probs, count_as=batched)
  h, w = _image_size(args.image)
  images = np.random.default_rng(0).integers(0, 256, (args.images + 1, h, w, 3), np.uint8)

  def predict(image):
    return test_time.predict(
      image,
      lambda x: counted(variables, x),
      mean=cfg.segment.mean,
      std=cfg.segment.std,
      **settings.predict_kwargs(),
    )

  start = time.perf_counter()
  predict(images[0])
  first = time.perf_counter() - start
  counter.take()
  start = time.perf_counter()
  for image in images[1:]:
    predict(image)
  seconds = (time.perf_counter() - start) / args.images
  flops = counter.take()
  return {
    'first': first,
    'seconds': seconds,
    'flops': None if flops is None else flops / args.images,
    **_jax_device(args.dtype),
  }


def inference_bench(args) -> None:
  cfg = _inference_config(args)
  i = cfg.inference
  rows = [('jax, test_time.predict', _isolated(_jax_inference, args))]
  title = (
    f'bench inference: {args.backbone}-{args.head} (stages {args.stages}), width '
    f'{args.width}, {args.classes + 1} classes, {args.dtype}; images of {args.image} (w x h), '
    f'scales {"/".join(map(str, i.scales))}, flip {i.flip}, window {i.window or "none"}; '
    f'{args.images} timed images'
  )
  _report(args, title, rows, 's/image', 'images', 1)


# --- input ---------------------------------------------------------------------------------


def _photo(rng, height: int, width: int) -> np.ndarray:
  """A random uint8 image with photo-like structure (smooth colour fields, detail, noise):
  its JPEG decodes at about the cost of a photo of its size, unlike pure noise."""
  out = np.full((height, width, 3), 128.0, np.float32)
  for cells, amplitude in ((4, 90), (16, 45), (64, 25), (128, 12)):
    small = rng.uniform(-amplitude, amplitude, (max(1, cells * height // width), cells, 3))
    out += np.stack(
      [
        np.asarray(
          Image.fromarray(small[..., c].astype(np.float32)).resize((width, height), Image.BICUBIC)
        )
        for c in range(3)
      ],
      -1,
    )
  out += rng.normal(0, 8, out.shape)
  return np.clip(out, 0, 255).astype(np.uint8)


def _write_jpegs(root: str, n: int, size: tuple[int, int], classes: int) -> dict:
  """n VOC-like JPEGs (quality 90) with 1 to 3 classes each, as an image-list dataset: the
  fields data.lists.* of a config."""
  rng = np.random.default_rng(0)
  images = os.path.join(root, 'images')
  os.makedirs(images, exist_ok=True)
  lines = []
  for k in range(n):
    Image.fromarray(_photo(rng, *size)).save(os.path.join(images, f'{k:05d}.jpg'), quality=90)
    labels = {k % classes, *rng.choice(classes, rng.integers(0, 3)).tolist()}
    lines.append(f'{k:05d} ' + ' '.join(map(str, sorted(labels))))
  with open(os.path.join(root, 'classes.txt'), 'w') as f:
    f.write(''.join(f'class{c}\n' for c in range(classes)))
  with open(os.path.join(root, 'train.txt'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return {
    'class_list': os.path.join(root, 'classes.txt'),
    'image_root': images,
    'train': os.path.join(root, 'train.txt'),
  }


def _input_config(args, lists: dict, data_dir: str):
  cfg = _config(args)
  cfg.data.name, cfg.data.image_size, cfg.data.data_dir = 'image_lists', 0, data_dir
  cfg.data.classify_split = cfg.data.train_split = cfg.data.eval_split = 'train'
  for key, value in lists.items():
    cfg.data.lists[key] = value
  cfg.classify.batch_pairs = args.batch
  cfg.classify.self_views = SELF_VIEWS[args.views]
  cfg.input.prefetch = args.prefetch
  return config.finalize(cfg)


def _pipeline_rate(cfg, pool, workers: int, batches: int) -> dict:
  """Seconds per batch of the classifier's pipeline (input_pipeline.pair_dataset and iterate,
  as classify.train runs them) with `workers` processes, after a warm-up that starts them and
  empties their read-ahead (1 + workers x (input.prefetch + 1) batches)."""
  cfg = config.with_overrides(cfg, [('input.worker_count', workers)])
  warm = 1 + workers * (cfg.input.prefetch + 1)
  spe = classify.steps_per_epoch(cfg, pool.plan.epoch_length)
  epochs = math.ceil((warm + batches) / spe)
  ds = input_pipeline.pair_dataset(
    pool.source, pool.class_index, cfg, epochs, cfg.classify.batch_pairs, 0, pool.plan
  )
  it = input_pipeline.iterate(ds, 0, cfg)
  try:
    start = time.perf_counter()
    for _ in range(warm):
      next(it)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    return {'first': first, 'seconds': (time.perf_counter() - start) / batches}
  finally:
    it.close()


def pipeline_rates(args) -> list:
  """(name, {'first', 'seconds', 'workers'}) of the classifier's input pipeline with each
  worker count of args.workers, on args.images VOC-like JPEGs written to a temporary
  directory (bench input, bench device)."""
  import tensorflow_datasets as tfds

  tfds.disable_progress_bar()  # the build of the JPEG fixtures, not the measurement.
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    lists = _write_jpegs(tmp, args.images, _image_size(args.jpeg), args.classes)
    cfg = _input_config(args, lists, os.path.join(tmp, 'data'))
    pool = sources.classifier_pool(cfg)
    for workers in args.workers:
      r = _pipeline_rate(cfg, pool, workers, args.batches)
      rows.append((f'input pipeline, {workers} workers', {**r, 'workers': workers}))
  return rows


def input_bench(args) -> None:
  """The classifier's input pipeline alone (pairs/s) next to its training step (pairs/s)."""
  step = _isolated(_jax_train_step, args, False)
  rows = pipeline_rates(args)
  rows.append(('train step (jax, bench train-step)', step))
  views_text = '/'.join(map(str, SELF_VIEWS[args.views])) or 'none'
  print(
    f'bench input: classifier batches of {args.batch} pairs at {args.size} px, self views '
    f'{views_text}, from {args.images} VOC-like JPEGs of {args.jpeg} (w x h) decoded, resized '
    f'and jittered every time; input.prefetch {args.prefetch}; {args.batches} timed batches '
    f'per row; this host: {os.cpu_count()} CPUs; train step: width {args.width}, {args.dtype}, '
    f'on {step["device"]}'
  )
  width = max(len(name) for name, _ in rows)
  print(f'{"":{width}}  {"pairs/s":>9}  {"s/batch":>9}  {"first s":>8}')
  for name, r in rows:
    pairs = args.batch / r['seconds']
    print(f'{name:{width}}  {pairs:9.3g}  {r["seconds"]:9.3f}  {r["first"]:8.1f}')
  fastest = max(rows[:-1], key=lambda row: 1 / row[1]['seconds'])
  pipeline, train = args.batch / fastest[1]['seconds'], args.batch / step['seconds']
  limit = 'the train step' if train <= pipeline else f'the input pipeline ({fastest[0]})'
  print(
    f'limit: {limit}: the step takes {train:.3g} pairs/s, the fastest pipeline makes '
    f'{pipeline:.3g} ({pipeline / train:.3g}x)'
  )
  out = [{'name': name, 'pairs_per_s': args.batch / r['seconds'], **r} for name, r in rows]
  _write_json(args, {'bench': 'input', 'rows': out, 'limit': limit})


# --- localize -----------------------------------------------------------------------------


def _localize_data(args):
  """Random query images (they are also the pool of related images), their classes, and K
  related images per (query, class) drawn from the other images."""
  rng = np.random.default_rng(0)
  images = rng.normal(size=(args.images, args.size, args.size, 3)).astype(np.float32)
  classes = [
    np.sort(rng.choice(args.classes, CLASSES_PER_IMAGE, replace=False)) for _ in range(args.images)
  ]
  related = []
  for q in range(args.images):
    others = [i for i in range(args.images) if i != q] or [q]
    related.append([list(rng.choice(others, args.related)) for _ in classes[q]])
  return images, classes, related


def _padded(indices, size):
  """Pad a short batch by repeating its first element (fixed shapes, no recompiles)."""
  return indices + [indices[0]] * (size - len(indices))


def _jax_localize_ours(model, variables, cfg, images, classes, related, counter):
  """localize.run's procedure in its per-batch mode: per batch of queries, features once per
  query and view, and of each related image the batch needs that is not one of its queries;
  the head per pairing; nothing kept across batches."""
  computer = localize.MapComputer(model, variables)
  # Its jitted pieces, counted (and compiled ahead of time) by `counter`.
  batched = jax.jit(lambda v, x: model.apply(v, x, method=model.features))
  computer._f = counter.wrap(computer._f, count_as=batched)
  computer._p, computer._c = map(counter.wrap, (computer._p, computer._c))
  bs = min(len(images), cfg.localize.batch_size)

  def features(indices):
    return np.concatenate(
      [
        computer.features(images[_padded(indices[s : s + bs], bs)])[: len(indices[s : s + bs])]
        for s in range(0, len(indices), bs)
      ]
    )

  def run(queries):
    out = []
    for s in range(0, len(queries), bs):
      chunk = queries[s : s + bs]
      batch = _padded(chunk, bs)
      view_feats = {
        v: computer.features(np.asarray(views.make_view(images[batch], v)))
        for v in cfg.localize.self_views
      }
      feats_m = computer.features(images[batch])
      partners = sorted({n for i in batch for ks in related[i] for n in ks})
      at = {n: j for j, n in enumerate(partners)}
      out += localize.image_maps(
        computer,
        feats_m,
        localize.reuse_queries(partners, batch, feats_m, features),
        view_feats,
        [[[at[n] for n in ks] for ks in related[i]] for i in batch],
        [classes[i] for i in batch],
        cfg,
      )[: len(chunk)]
    return out

  return run


def _jax_localize_naive(model, variables, cfg, images, classes, related, counter):
  """The reference's procedure: a full pair forward (both images through the backbone) for
  every (query, related image) and every self view."""
  apply = functools.partial(model.apply, variables)
  pair = counter.wrap(
    jax.jit(
      lambda x_m, x_n: apply(
        apply(x_m, method=model.features), apply(x_n, method=model.features), method=model.pair_maps
      )
    )
  )

  def run(queries):
    out = []
    for q in queries:
      x_m = images[q : q + 1]
      self_maps = []
      for j, v in enumerate(cfg.localize.self_views):
        maps_m, maps_v = pair(x_m, np.asarray(views.make_view(x_m, v)))
        self_maps += [maps_m] if j == 0 else []
        self_maps.append(views.map_back(maps_v, v, maps_m.shape[1:3]))
      per_class = []
      for c, partners in zip(classes[q], related[q]):
        cross = jnp.mean(
          jnp.stack([pair(x_m, images[n : n + 1])[0][0, :, :, c] for n in partners]), axis=0
        )
        stack = jnp.stack([m[0, :, :, c] for m in self_maps] + [cross])
        per_class.append(np.asarray(maps.aggregate(stack, cfg.localize.gate)))
      out.append(np.stack(per_class))
    return out

  return run


def _jax_localize(args, naive: bool) -> dict:
  cfg = _config(args)
  model = from_config.classifier(cfg)
  variables = {'params': random_init.classifier_params(model, args.size, 0)}
  method = _jax_localize_naive if naive else _jax_localize_ours
  counter = FlopCounter()
  run = method(model, variables, cfg, *_localize_data(args), counter)
  result = _timed_localization(run, args.images, counter.take)
  return {**result, **_jax_device(args.dtype)}


def _torch_localize(args) -> dict:
  _cpu_only_jax()
  from cows_jax.tools import torch_reference as ref

  device, kind = _torch_device()
  cfg = _config(args)
  model = ref.CoAttentionClassifier(args.classes, args.width).to(device)
  images, classes, related = _localize_data(args)
  to_torch = lambda x: ref.nchw(x).to(device)

  def run(queries):
    out = []
    for q in queries:
      x_m = images[q : q + 1]
      view_images = [(v, to_torch(views.make_view(x_m, v))) for v in cfg.localize.self_views]
      partners = [to_torch(images[r]) for r in related[q]]
      with _torch_autocast(device, args.dtype):
        out.append(
          ref.localization_maps(
            model, to_torch(x_m), classes[q], partners, view_images, cfg.localize.gate
          )
        )
    return out

  result = _timed_localization(run, args.images)
  # Every query has the same classes and pairings: the FLOPs of one are those of each.
  result['flops'] = _torch_flops(lambda: run([0]))
  return {**result, **_torch_result(device, kind, args.dtype)}


def _timed_localization(run, n: int, take_flops=None) -> dict:
  """First call on one query (compiles), then all n queries timed; maps are fetched to the
  host, which waits for the device. `take_flops()`: the FLOPs counted since its last call."""
  start = time.perf_counter()
  run([0])
  first = time.perf_counter() - start
  if take_flops:
    take_flops()
  start = time.perf_counter()
  run(list(range(n)))
  seconds = (time.perf_counter() - start) / n
  flops = take_flops() if take_flops else None
  return {'first': first, 'seconds': seconds, 'flops': None if flops is None else flops / n}


def localize_bench(args) -> None:
  rows = [
    ('jax, features reused', _isolated(_jax_localize, args, False)),
    ('jax, pair forward each', _isolated(_jax_localize, args, True)),
  ]
  if importlib.util.find_spec('torch'):
    rows.append(('torch, pair forward each', _isolated(_torch_localize, args)))
  self_views = paper_defaults().localize.self_views
  pairings = CLASSES_PER_IMAGE * args.related + len(self_views)
  title = (
    f'bench localize: size {args.size}, {args.images} images x {CLASSES_PER_IMAGE} classes, '
    f'{args.related} related per class, views {"/".join(map(str, self_views))} '
    f'({pairings} pairings per image), width {args.width}, classes {args.classes}, {args.dtype}'
  )
  _report(args, title, rows, 's/image', 'images', 1)


# --- features -------------------------------------------------------------------------------


def _jax_features(args, one_at_a_time: bool) -> dict:
  """The classifier's backbone on a batch, as localize runs it (models/per_image.py: one
  image at a time on the CPU) or the whole batch at once."""
  cfg = _config(args)
  model = from_config.classifier(cfg)
  variables = {'params': random_init.classifier_params(model, args.size, 0)}
  apply = lambda v, x: model.apply(v, x, method=model.features)
  fn = jax.jit(lambda v, x: per_image.on_cpu(functools.partial(apply, v), x))
  images = np.random.default_rng(0).normal(size=(args.batch, args.size, args.size, 3))
  x = jnp.asarray(images, jnp.float32)
  batched = jax.jit(apply)
  result = _time_jitted(
    fn if one_at_a_time else batched, (variables, x), args.steps, lambda out: (variables, x)
  )
  result['seconds'] /= args.batch
  # XLA counts a scan's body once: the batched program's count is the work of either.
  flops = compile_with_flops(batched, variables, x)[1]
  result['flops'] = None if flops is None else flops / args.batch
  return {**result, **_jax_device(args.dtype)}


def _torch_features(args) -> dict:
  _cpu_only_jax()
  import torch

  from cows_jax.tools import torch_reference as ref

  device, kind = _torch_device()
  model = ref.CoAttentionClassifier(args.classes, args.width).to(device).eval()
  rng = np.random.default_rng(0)
  x = ref.nchw(rng.normal(size=(args.batch, args.size, args.size, 3)).astype(np.float32))
  x = x.to(device)

  def run():
    with torch.no_grad(), _torch_autocast(device, args.dtype):
      out = model.features(x)
    if device == 'cuda':
      torch.cuda.synchronize()
    return out

  result = _torch_timed(run, args.steps)
  per_image = {k: result[k] / args.batch for k in ('seconds', 'flops')}
  return {**result, **per_image, **_torch_result(device, kind, args.dtype)}


def features_bench(args) -> None:
  rows = [
    ('jax, one image at a time', _isolated(_jax_features, args, True)),
    ('jax, whole batch', _isolated(_jax_features, args, False)),
  ]
  if importlib.util.find_spec('torch'):
    rows.append(('torch, whole batch', _isolated(_torch_features, args)))
  title = (
    f"bench features: the classifier's backbone, batch {args.batch} at {args.size} px, "
    f'width {args.width}, {args.dtype}'
  )
  _report(args, title, rows, 's/image', 'images', 1)


# --- localize memory -------------------------------------------------------------------


def _memory_config(args, images: int, data_dir: str):
  cfg = paper_defaults()
  cfg.data.train_size, cfg.data.val_size, cfg.data.data_dir = images, 4, data_dir
  cfg.data.image_size = cfg.input.size = args.size
  cfg.data.num_classes, cfg.model.width = 10, args.width
  cfg.classify.epochs, cfg.classify.localize_after_epochs, cfg.classify.lr_decay_epochs = 1, 1, ()
  cfg.localize.feature_memory_mib = args.feature_memory_mib
  return cfg


def _build(args, images: int, data_dir: str) -> None:
  sources.load(_memory_config(args, images, data_dir))


def _localize_run(args, images: int, data_dir: str, workdir: str) -> dict:
  """localize.run over `images` synthetic images with a random classifier (saved as the
  checkpoint of epoch 1): seconds per image and the process's peak memory."""
  cfg = config.finalize(_memory_config(args, images, data_dir))
  model = from_config.classifier(cfg)
  variables = from_config.init_variables(model, cfg, jax.random.key(0))
  spe = classify.steps_per_epoch(cfg, images)
  run = run_dir.RunDir(workdir)
  run_dir.write_classifier_epochs(run, spe, 1)
  mngr = checkpoints.manager(run.classifier())
  checkpoints.save(mngr, spe, variables, {'step': np.zeros((), np.int32)})
  mngr.wait_until_finished()
  mngr.close()
  start = time.perf_counter()
  localize.run(cfg, workdir)
  seconds = time.perf_counter() - start
  return {'per_image': seconds / images, 'peak': _peak_mib(None)}


def localize_memory_bench(args) -> None:
  """Peak memory of `localize.run` at several dataset sizes: flat when it does not grow."""
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for n in args.images:
      _isolated(_build, args, n, os.path.join(tmp, 'data'))
      r = _isolated(_localize_run, args, n, os.path.join(tmp, 'data'), os.path.join(tmp, f'run{n}'))
      rows.append((n, r))
  print(
    f'bench localize-memory: localize.run on synthetic data, {args.size} px, width '
    f'{args.width}, random classifier, K = 3, self views flip/0.75/2.0, feature_memory_mib '
    f'{args.feature_memory_mib}; device {jax.devices()[0]}'
  )
  print(f'{"images":>7}  {"s/image":>8}  {"peak MiB":>9}')
  for n, r in rows:
    print(f'{n:7d}  {r["per_image"]:8.3f}  {r["peak"][0]:9.0f}  ({r["peak"][1]})')
  print(json.dumps({'bench': 'localize-memory', 'args': vars(args), 'rows': dict(rows)}))


# --- export -------------------------------------------------------------------------------


def _export_one(args, platform: str) -> dict:
  """Export the segmenter for one platform; size, export and load (deserialize) seconds, and
  the first call on this machine's platform."""
  cfg = paper_defaults()
  cfg.data.num_classes, cfg.model.width = args.classes, args.width
  cfg.segment.backbone, cfg.segment.head = args.backbone, args.head
  model = from_config.segmenter(cfg)
  variables = random_init.segmenter_variables(model, args.size, 0)
  start = time.perf_counter()
  data = export.segmenter_function(model, variables, True, True, (platform,)).serialize()
  export_s = time.perf_counter() - start
  start = time.perf_counter()
  loaded = jax_export.deserialize(bytearray(data))
  out = {'mib': len(data) / 2**20, 'export_s': export_s, 'load_s': time.perf_counter() - start}
  if platform == test_time.machine_platform():  # jax.default_backend() 'gpu' is 'cuda'.
    x = np.zeros((1, args.size, args.size, 3), np.float32)
    start = time.perf_counter()
    jax.block_until_ready(loaded.call(x))
    out['first_call_s'] = time.perf_counter() - start
  return out


def export_bench(args) -> None:
  rows = [(p, _isolated(_export_one, args, p)) for p in export.parse_platforms(args.platforms)]
  print(
    f'bench export: {args.backbone}-{args.head} segmenter, width {args.width}, '
    f'{args.classes} classes, random weights; flip inside; this machine: {jax.default_backend()}'
  )
  print(
    f'{"platform":8}  {"MiB":>8}  {"export s":>8}  {"load s":>7}  first call s ({args.size} px)'
  )
  for name, r in rows:
    first = f'{r["first_call_s"]:.2f}' if 'first_call_s' in r else '-'
    print(f'{name:8}  {r["mib"]:8.1f}  {r["export_s"]:8.2f}  {r["load_s"]:7.3f}  {first}')
  print(json.dumps({'bench': 'export', 'args': vars(args), 'rows': dict(rows)}))


# --- output and command line --------------------------------------------------------------


def _derived(r: dict) -> dict:
  """FLOP/s achieved, the device's peak for the row's dtype, and the MFU (None if unknown)."""
  name, peaks = device_peak(r.get('device_kind', 'unknown'))
  peak = peaks.get(r.get('dtype', 'float32'))
  achieved = None if r.get('flops') is None else r['flops'] / r['seconds']
  mfu = None if achieved is None or peak is None else achieved / peak
  return {'flop_per_s': achieved, 'peak_name': name, 'peak_flop_per_s': peak, 'mfu': mfu}


def _table(rows, unit: str, items: str, per_unit: int) -> None:
  """One aligned line per measurement."""
  width = max(len(name) for name, _ in rows)
  print(
    f'{"":{width}}  {"time":>15}  {items + "/s":>9}  {"first call s":>12}  {"peak MiB":>9}  '
    f'{"GFLOP/" + unit.split("/")[1]:>12}  {"TFLOP/s":>8}  {"MFU":>6}'
  )
  for name, r in rows:
    d = _derived(r)
    gflop = '-' if r.get('flops') is None else f'{r["flops"] / 1e9:.4g}'
    tflops = '-' if d['flop_per_s'] is None else f'{d["flop_per_s"] / 1e12:.3g}'
    mfu = '-' if d['mfu'] is None else f'{100 * d["mfu"]:.1f}%'
    print(
      f'{name:{width}}  {r["seconds"]:8.3f} {unit:>6}  {per_unit / r["seconds"]:9.3g}  '
      f'{r["first"]:12.1f}  {r["peak"][0]:9.0f}  {gflop:>12}  {tflops:>8}  {mfu:>6}  '
      f'({r["peak"][1]})'
    )


def _report(args, title: str, rows, unit: str, items: str, per_unit: int) -> None:
  """The title, the table, the peak its MFU uses, the ratios to the first row; --json."""
  first = rows[0][1]
  name, peaks = device_peak(first['device_kind'])
  print(f'{title}; device {first["device"]} ({first["device_kind"]})')
  _table(rows, unit, items, per_unit)
  peak = peaks[args.dtype]
  if peak is None:
    print(f'MFU: no {args.dtype} peak for {first["device_kind"]!r} ({name}): -')
  else:
    print(f'MFU against the {name} peak: {peak / 1e12:g} TFLOP/s {args.dtype} (dense)')
  ours = first['seconds']
  ratios = {f'{n} / ours': r['seconds'] / ours for n, r in rows[1:]}
  if ratios:
    print('  '.join(f'{n}: {v:.2f}x' for n, v in ratios.items()))
  table = [
    {
      'name': n,
      'seconds_per_' + unit.split('/')[1]: r['seconds'],
      f'{items}_per_s': per_unit / r['seconds'],
      'first_call_s': r['first'],
      'peak_mib': r['peak'][0],
      'peak_memory': r['peak'][1],
      'flops_per_' + unit.split('/')[1]: r.get('flops'),
      **_derived(r),
      **{k: r[k] for k in ('device', 'device_kind', 'dtype')},
    }
    for n, r in rows
  ]
  _write_json(args, {'bench': args.what, 'title': title, 'rows': table, 'ratios': ratios})


def _write_json(args, report: dict) -> None:
  if getattr(args, 'json', None):
    settings = {k: v for k, v in vars(args).items() if k != 'json'}
    with open(args.json, 'w') as f:
      json.dump({**report, 'args': settings}, f, indent=2)
      f.write('\n')


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='cows-jax bench', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='what', required=True)
  step = sub.add_parser('train-step', help='one classifier SGD step')
  seg = sub.add_parser('segment-step', help='one segmenter micro-step (PyTorch reference too)')
  loc = sub.add_parser('localize', help='localization maps of query images')
  feat = sub.add_parser('features', help="the classifier's backbone, per image and batched")
  inf = sub.add_parser('inference', help="images/s of the segmenter's test-time procedure")
  inp = sub.add_parser('input', help="the input pipeline's pairs/s next to the train step's")
  for p in (step, inp):
    p.add_argument(
      '--views',
      choices=list(SELF_VIEWS),
      required=p is step,
      default='full',
      help="'pair': (m, n) only; 'full': plus the flip, 0.75x and 2x self-pairs",
    )
    p.add_argument('--batch', type=int, required=p is step, default=5, help='pairs per step')
    p.add_argument('--steps', type=int, default=5 if p is step else 2, help='timed steps')
  seg.add_argument('--batch', type=int, default=1, help='crops per micro-step')
  seg.add_argument('--steps', type=int, default=5, help='timed steps after the first')
  loc.add_argument('--images', type=int, required=True, help='query images')
  feat.add_argument('--batch', type=int, default=16, help='images (localize.batch_size: 16)')
  feat.add_argument('--steps', type=int, default=2, help='timed calls after the first')
  loc.add_argument('--related', type=int, default=3, help='related images per class (K)')
  inf.add_argument('--images', type=int, default=2, help='timed images (after a first one)')
  inf.add_argument('--image', default='500x375', help='image size, width x height')
  inf.add_argument('--window', type=int, default=None, help='inference.window (default 401)')
  inf.add_argument('--scales', default='', help='comma list (default the paper: 0.5,...,1.5)')
  inp.add_argument(
    '--workers',
    type=lambda t: [int(x) for x in t.split(',')],
    default=[0],
    help='input.worker_count, a comma list: one row each',
  )
  inp.add_argument('--images', type=int, default=64, help='JPEGs written to a temporary dir')
  inp.add_argument('--jpeg', default='500x375', help='their size, width x height (VOC-like)')
  inp.add_argument('--batches', type=int, default=40, help='timed batches per row')
  inp.add_argument('--prefetch', type=int, default=2, help='input.prefetch')
  for p in (seg, inf):
    p.add_argument('--backbone', choices=('resnet101', 'vgg16'), default='resnet101')
    p.add_argument('--head', choices=('largefov', 'aspp'), default='largefov')
    p.add_argument(
      '--stages', default='3,4,23,3', help='ResNet blocks per stage (ResNet-101; fewer: smoke)'
    )
  mem = sub.add_parser('localize-memory', help='peak memory of localize at dataset sizes')
  mem.add_argument('--images', type=lambda t: [int(x) for x in t.split(',')], default=[200, 800])
  mem.add_argument('--size', type=int, default=64, help='square image size')
  mem.add_argument('--width', type=float, default=0.125, help='channel multiplier')
  mem.add_argument(
    '--feature_memory_mib', type=int, default=0, help='localize.feature_memory_mib (0: per batch)'
  )
  exp = sub.add_parser('export', help='size and load time of the exported segmenter')
  exp.add_argument('--backbone', choices=('resnet101', 'vgg16'), default='resnet101')
  exp.add_argument('--head', choices=('largefov', 'aspp'), default='largefov')
  exp.add_argument('--platforms', default='cpu,cuda,tpu', help='comma list, one export each')
  for p, size in {step: None, loc: None, feat: 256, seg: 321, inp: 256, exp: None}.items():
    p.add_argument(
      '--size',
      type=int,
      required=size is None,
      default=size,
      help='square input size in pixels' + (' (the crop)' if p is seg else ''),
    )
  for p in (step, loc, feat, seg, inf, inp, exp):
    p.add_argument('--width', type=float, default=1.0, help='channel multiplier (1.0: paper)')
    p.add_argument('--classes', type=int, default=20, help='number of (object) classes')
  for p in (step, seg, loc, feat, inf, inp):
    p.add_argument(
      '--dtype',
      choices=('float32', 'bfloat16'),
      default='float32',
      help='compute dtype (model.dtype / segment.dtype; torch: autocast)',
    )
    p.add_argument('--json', default='', help='also write the table to this JSON file')
  from cows_jax.tools import bench_device  # its parts import this module

  bench_device.add_arguments(
    sub.add_parser('device', help="an accelerator's few minutes: every bench, one JSON")
  )
  bench_conv.add_arguments(
    sub.add_parser('conv', help="conv gradients: XLA's and models/conv.py's")
  )
  bench_test_time.add_arguments(
    sub.add_parser('test-time', help='test time with stitching/resizes on the host vs the device')
  )
  bench_evaluate.add_arguments(
    sub.add_parser('evaluate', help='images/s of the CRF and PNG writes: serial vs overlapped')
  )
  return parser


def main(argv) -> int:
  args = _parser().parse_args(argv)
  if args.what == 'device':
    from cows_jax.tools import bench_device  # its parts import this module

    return bench_device.run(args)
  benches = {
    'train-step': train_step_bench,
    'segment-step': segment_step_bench,
    'localize': localize_bench,
    'features': features_bench,
    'inference': inference_bench,
    'input': input_bench,
    'localize-memory': localize_memory_bench,
    'export': export_bench,
    'conv': bench_conv.run,
    'test-time': bench_test_time.run,
    'evaluate': bench_evaluate.run,
  }
  benches[args.what](args)
  return 0
