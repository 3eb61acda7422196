"""What the benchmarks of `cows-jax bench` share: processes of their own, timing, FLOP
counting (XLA's cost analysis; torch's FlopCounterMode for the PyTorch rows), the devices' peak
FLOP/s and the MFU, the table and its JSON, and the configs, random inputs and images the
benches build from their arguments."""

import concurrent.futures
import contextlib
import json
import multiprocessing
import re
import resource
import time

import jax
import numpy as np
from PIL import Image

from cows_jax.configs.defaults import paper_defaults
from cows_jax.models import from_config

SELF_VIEWS = {'pair': (), 'full': ('flip', 0.75, 2.0)}


def classifier_config(args):
  cfg = paper_defaults()
  cfg.input.size = args.size
  cfg.model.width = args.width
  cfg.model.dtype = args.dtype
  cfg.data.num_classes = args.classes
  if args.what == 'localize':
    cfg.localize.num_related = args.related
  return cfg


def segmenter_config(args):
  cfg = paper_defaults()
  cfg.data.num_classes = args.classes
  cfg.model.width = args.width
  s = cfg.segment
  s.backbone, s.head, s.dtype = args.backbone, args.head, args.dtype
  if args.what == 'segment-step':
    s.crop_size, s.batch_size = args.size, args.batch
  return cfg


def stages(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(','))


def segmenter(args, cfg):
  """The config's segmenter, with `--stages` blocks per ResNet stage (default ResNet-101's)."""
  return from_config.segmenter(cfg).clone(resnet_stages=stages(args.stages))


def image_size(text: str) -> tuple[int, int]:
  """'500x375' (width x height, as VOC lists them) -> (height, width)."""
  w, h = (int(x) for x in text.lower().split('x'))
  return h, w


def with_inference_args(cfg, args):
  """`cfg` with --window and --scales applied (the paper's when not given): bench inference,
  test-time and evaluate."""
  if args.window is not None:
    cfg.inference.window = args.window
  if args.scales:
    cfg.inference.scales = tuple(float(x) for x in args.scales.split(','))
  return cfg


def test_time_config(args):
  """The paper's config with the segmenter of the arguments (--classes, --width, --backbone,
  --head) and their test-time settings: bench test-time and evaluate."""
  cfg = paper_defaults()
  cfg.data.num_classes, cfg.model.width = args.classes, args.width
  cfg.segment.backbone, cfg.segment.head = args.backbone, args.head
  return with_inference_args(cfg, args)


def photo(rng, height: int, width: int) -> np.ndarray:
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


def peak_mib(device_stats) -> tuple[float, str]:
  """Device peak bytes where the backend reports them, else this process's max RSS."""
  if device_stats and 'peak_bytes_in_use' in device_stats:
    return device_stats['peak_bytes_in_use'] / 2**20, 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'max RSS'


# What the measurements' processes import, imported once by the fork server they start from
# (about 2 s a process otherwise). None of it starts a JAX backend or a thread (JAX does not
# survive a fork once started), and torch is left out: a JAX row's memory does not count it.
PRELOAD = ['cows_jax.stages', 'cows_jax.export', 'cows_jax.predict', 'cows_jax.bench.main']


def fork_server_context():
  """The multiprocessing context whose processes fork from a server that preloaded PRELOAD."""
  ctx = multiprocessing.get_context('forkserver')
  ctx.set_forkserver_preload(PRELOAD)
  return ctx


def isolated(fn, *args):
  """fn(*args) in a process of its own (fork_server_context)."""
  ctx = fork_server_context()
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
    return pool.submit(fn, *args).result()


def cpu_only_jax():
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


def compile_with_flops(jitted, *args, **static) -> tuple:
  """(the executable of `jitted` for `args` (and its static keyword arguments), compiled ahead
  of time, and its FLOPs per call by XLA's cost analysis, or None where the backend does not
  count them)."""
  compiled = jitted.lower(*args, **static).compile()
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
    a scan's body once: models/per_image.py's scan is counted as the batched network).
    Keyword arguments are the jitted function's static ones (one executable per value)."""

    def call(*args, **static):
      key = (id(jitted), _signature(args), repr(sorted(static.items())))
      if key not in self._compiled:
        compiled, flops = compile_with_flops(jitted, *args, **static)
        if count_as is not None:
          flops = compile_with_flops(count_as, *args, **static)[1]
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


# A context around the timed calls of time_jitted: `bench device --profile` sets a
# jax.profiler trace (bench/device_parts.py).
timed_calls = contextlib.nullcontext


def time_jitted(jitted, args: tuple, steps: int, advance) -> dict:
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


def jax_device(dtype: str) -> dict:
  device = jax.devices()[0]
  return {
    'device': str(device),
    'device_kind': device.device_kind,
    'dtype': dtype,
    'peak': peak_mib(device.memory_stats()),
  }


def torch_device():
  """('cuda' or 'cpu', the device's name for the peak table)."""
  import torch

  if torch.cuda.is_available():
    return 'cuda', torch.cuda.get_device_name()
  return 'cpu', 'cpu'


def torch_result(device: str, kind: str, dtype: str) -> dict:
  import torch

  cuda = device == 'cuda'
  stats = {'peak_bytes_in_use': torch.cuda.max_memory_allocated()} if cuda else None
  return {'device': device, 'device_kind': kind, 'dtype': dtype, 'peak': peak_mib(stats)}


def torch_autocast(device: str, dtype: str):
  """bfloat16 autocast for `--dtype bfloat16` (float32 parameters, as ours), else nothing."""
  import torch

  return torch.autocast(device, torch.bfloat16, enabled=dtype == 'bfloat16')


def torch_flops(fn) -> float:
  """FLOPs of one call of fn (torch's FlopCounterMode: convolutions and matmuls)."""
  from torch.utils.flop_counter import FlopCounterMode

  with FlopCounterMode(display=False) as counter:
    fn()
  return float(counter.get_total_flops())


def torch_timed(step, steps: int) -> dict:
  """First call, the mean of `steps` later calls (each returns a Python float: it waits for
  the device), and the FLOPs of one more call."""
  start = time.perf_counter()
  step()
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    step()
  seconds = (time.perf_counter() - start) / steps
  return {'first': first, 'seconds': seconds, 'flops': torch_flops(step)}


# --- output ---------------------------------------------------------------------------


def derived(r: dict) -> dict:
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
    d = derived(r)
    gflop = '-' if r.get('flops') is None else f'{r["flops"] / 1e9:.4g}'
    tflops = '-' if d['flop_per_s'] is None else f'{d["flop_per_s"] / 1e12:.3g}'
    mfu = '-' if d['mfu'] is None else f'{100 * d["mfu"]:.1f}%'
    print(
      f'{name:{width}}  {r["seconds"]:8.3f} {unit:>6}  {per_unit / r["seconds"]:9.3g}  '
      f'{r["first"]:12.1f}  {r["peak"][0]:9.0f}  {gflop:>12}  {tflops:>8}  {mfu:>6}  '
      f'({r["peak"][1]})'
    )


def report(args, title: str, rows, unit: str, items: str, per_unit: int) -> None:
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
      **derived(r),
      **{k: r[k] for k in ('device', 'device_kind', 'dtype')},
    }
    for n, r in rows
  ]
  write_json(args, {'bench': args.what, 'title': title, 'rows': table, 'ratios': ratios})


def write_json(args, report: dict) -> None:
  if getattr(args, 'json', None):
    settings = {k: v for k, v in vars(args).items() if k != 'json'}
    with open(args.json, 'w') as f:
      json.dump({**report, 'args': settings}, f, indent=2)
      f.write('\n')


# --- arguments --------------------------------------------------------------------------


def add_size(parser, default=None, what: str = '') -> None:
  """--size: required without a default."""
  parser.add_argument(
    '--size',
    type=int,
    required=default is None,
    default=default,
    help='square input size in pixels' + what,
  )


def add_model(parser) -> None:
  parser.add_argument('--width', type=float, default=1.0, help='channel multiplier (1.0: paper)')
  parser.add_argument('--classes', type=int, default=20, help='number of (object) classes')


def add_segmenter(parser) -> None:
  parser.add_argument('--backbone', choices=('resnet101', 'vgg16'), default='resnet101')
  parser.add_argument('--head', choices=('largefov', 'aspp'), default='largefov')
  parser.add_argument(
    '--stages', default='3,4,23,3', help='ResNet blocks per stage (ResNet-101; fewer: smoke)'
  )


def add_dtype_and_json(parser) -> None:
  parser.add_argument(
    '--dtype',
    choices=('float32', 'bfloat16'),
    default='float32',
    help='compute dtype (model.dtype / segment.dtype; torch: autocast)',
  )
  parser.add_argument('--json', default='', help='also write the table to this JSON file')


def add_views(parser, required: bool) -> None:
  parser.add_argument(
    '--views',
    choices=list(SELF_VIEWS),
    required=required,
    default='full',
    help="'pair': (m, n) only; 'full': plus the flip, 0.75x and 2x self-pairs",
  )
