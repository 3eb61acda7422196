"""The parts of `cows-jax bench device` (bench/device.py), each run in its own process: what a
part measures, through the benches' own functions, and returns as its JSON entry. A part
imports what it uses when it runs (the parent never starts a JAX backend)."""

import argparse
import contextlib
import functools
import importlib.metadata
import importlib.util
import os
import platform
import time
import traceback

TINY_CONFIG = 'synthetic:tiny'
# --smoke trains the pseudo-label segmenter only (as `cows-jax ablate` does).
SMOKE_OVERRIDES = {'segment.supervisions': ('pseudo',)}

# The optional extras and tools a part may miss: (import name, distribution).
EXTRAS = {
  'torch': ('torch', 'torch'),
  'crf': ('pydensecrf', 'pydensecrf2'),
  'profile_viewer': ('tensorboard_plugin_profile', 'tensorboard-plugin-profile'),
  'xprof': ('xprof', 'xprof'),
}


def one_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f'{type(error).__name__}: {lines[0] if lines else ""}'.rstrip(': ')


class Skipped(Exception):
  """A part that cannot run here (an optional extra is missing): {'skipped': reason}."""


# --- the parts, each in its own process ------------------------------------------------------

PROGRESS = [None]  # in a part's process: sends what it has measured so far to the parent.


def _progress(partial: dict) -> None:
  """What a part has measured so far: kept in the JSON if the part runs past its share."""
  if PROGRESS[0] is not None:
    PROGRESS[0](('progress', partial))


def _bench_args(bench, what: str, payload: dict) -> argparse.Namespace:
  """A bench's arguments of a part (its module `bench`, its command `what`), with the bench's
  defaults for the rest."""
  parser = argparse.ArgumentParser(prog=f'cows-jax bench {what}')
  bench.add_arguments(parser)
  return parser.parse_args(payload['argv'], argparse.Namespace(what=what))


def _settings(args) -> dict:
  return {k: v for k, v in vars(args).items() if k not in ('what', 'json')}


@contextlib.contextmanager
def _traced(payload: dict, name: str = ''):
  """A jax.profiler trace into the part's profile directory, if --profile."""
  if not payload.get('profile'):
    yield
    return
  import jax

  options = {}
  if hasattr(jax.profiler, 'ProfileOptions'):
    # No Python tracer: it records every Python call (a tiny training stage: 90 MB and twice
    # the time on the CPU); the host's and the device's events stay.
    options['profiler_options'] = jax.profiler.ProfileOptions()
    options['profiler_options'].python_tracer_level = 0
  with jax.profiler.trace(os.path.join(payload['profile'], name), **options):
    yield


def _traced_steps(payload: dict) -> None:
  """bench's timed steps run inside a trace, if --profile."""
  from cows_jax.bench import common

  if payload.get('profile'):
    common.timed_calls = functools.partial(_traced, payload)


def _timed(r: dict, args, unit: str, per_unit: int) -> dict:
  """A bench row as a part's numbers: time, images/s, FLOPs, TFLOP/s, MFU, peak memory."""
  from cows_jax.bench import common

  derived = common.derived(r)
  tflops = lambda x: None if x is None else x / 1e12
  return {
    f'seconds_per_{unit}': r['seconds'],
    'images_per_s': per_unit / r['seconds'],
    'first_call_s': r['first'],
    f'flops_per_{unit}': r.get('flops'),
    'tflop_per_s': tflops(derived['flop_per_s']),
    'mfu': derived['mfu'],
    'peak': derived['peak_name'],
    'peak_tflop_per_s': tflops(derived['peak_flop_per_s']),
    'memory_mib': r['peak'][0],
    'memory': r['peak'][1],
    **{k: r[k] for k in ('device', 'device_kind', 'dtype')},
    'settings': _settings(args),
  }


def _version(distribution: str) -> str | None:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None


def _outside_ranges() -> list[str]:
  """The installed dependencies whose versions are outside pyproject's ranges."""
  try:
    from packaging.requirements import Requirement
  except ImportError:
    return ['(not checked: packaging is not installed)']
  out = []
  for text in importlib.metadata.requires('cows_jax') or []:
    req = Requirement(text)
    version = _version(req.name)
    if req.marker is None and version and not req.specifier.contains(version, prereleases=True):
      out.append(f'{req.name} {version} (pyproject: {req.specifier})')
  return out


def devices(payload: dict) -> dict:
  import jax

  from cows_jax import tta
  from cows_jax.bench import common

  devices = jax.devices()
  kind = devices[0].device_kind
  name, peaks = common.device_peak(kind)
  try:
    memory = (devices[0].memory_stats() or {}).get('bytes_limit')
  except Exception:  # not every backend has memory_stats.
    memory = None
  backend = jax.default_backend()
  names = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'cows_jax')
  return {
    'backend': backend,
    'export_platform': tta.machine_platform(),
    'dtype': 'float32' if backend == 'cpu' else 'bfloat16',
    'device_kind': kind,
    'count': len(devices),
    'local_count': jax.local_device_count(),
    'process_count': jax.process_count(),
    'devices': [
      {'id': d.id, 'platform': d.platform, 'device_kind': d.device_kind} for d in devices
    ],
    'memory_bytes': memory,
    'peak': name,
    'peak_tflop_per_s': {k: None if v is None else v / 1e12 for k, v in peaks.items()},
    'versions': {'python': platform.python_version(), **{n: _version(n) for n in names}},
    'outside_pyproject_ranges': _outside_ranges(),
    'extras': {key: _version(dist) for key, (_, dist) in EXTRAS.items()},
    'host_cpus': os.cpu_count(),
  }


def train_step(payload: dict) -> dict:
  from cows_jax.bench import train_step as bench

  args = _bench_args(bench, 'train-step', payload)
  _traced_steps(payload)
  return _timed(bench.jax_step(args, False), args, 'step', 2 * args.batch)


def torch_train_step(payload: dict) -> dict:
  from cows_jax.bench import train_step as bench

  if importlib.util.find_spec('torch') is None:
    raise Skipped('torch is not installed (the extra cows_jax[torch])')
  args = _bench_args(bench, 'train-step', payload)
  return _timed(bench.torch_step(args), args, 'step', 2 * args.batch)


def segment_step(payload: dict) -> dict:
  from cows_jax.bench import segment_step as bench

  args = _bench_args(bench, 'segment-step', payload)
  _traced_steps(payload)
  return _timed(bench.jax_step(args), args, 'step', args.batch)


def localize(payload: dict) -> dict:
  from cows_jax.bench import localize as bench

  args = _bench_args(bench, 'localize', payload)
  return _timed(bench.jax_maps(args, False), args, 'image', 1)


def inference(payload: dict) -> dict:
  from cows_jax.bench import inference as bench

  args = _bench_args(bench, 'inference', payload)
  return _timed(bench.measure(args), args, 'image', 1)


def input_pipeline(payload: dict) -> dict:
  from cows_jax.bench import inputs as bench

  args = _bench_args(bench, 'input', payload)
  rows = [
    {
      'name': name,
      'workers': r['workers'],
      'pairs_per_s': args.batch / r['seconds'],
      'seconds_per_batch': r['seconds'],
      'first_s': r['first'],
    }
    for name, r in bench.pipeline_rates(args)
  ]
  return {'rows': rows, 'settings': _settings(args)}


def export(payload: dict) -> dict:
  from cows_jax import tta
  from cows_jax.bench import export as bench

  args = _bench_args(bench, 'export', payload)
  platform_ = tta.machine_platform()
  settings = {k: v for k, v in _settings(args).items() if k != 'platforms'}
  return {'platform': platform_, **bench.export_one(args, platform_), 'settings': settings}


def _tiny_config(payload: dict):
  """configs/synthetic.py:tiny with its data under the run's root (and SMOKE_OVERRIDES with
  --smoke); the CRF off where pydensecrf2 is missing."""
  from cows_jax import config

  cfg = config.load(TINY_CONFIG)
  cfg.data.data_dir = os.path.join(payload['root'], 'data')
  if payload['smoke']:
    cfg.segment.supervisions = SMOKE_OVERRIDES['segment.supervisions']
  if importlib.util.find_spec('pydensecrf') is None:
    cfg.evaluate.crf = False
  return cfg


def pipeline(payload: dict) -> dict:
  """The tiny pipeline's stages one after the other (stages.run_stage), as `cows-jax pipeline`
  runs them; the dataset's build timed apart. The training stages are traced with --profile."""
  from cows_jax import config, stages
  from cows_jax.data import sources

  cfg = _tiny_config(payload)
  workdir = os.path.join(payload['root'], 'run')
  out = {'config': TINY_CONFIG, 'overrides': SMOKE_OVERRIDES if payload['smoke'] else {}}
  out['stages'] = {}
  if not cfg.evaluate.crf:
    out['crf'] = {'skipped': 'pydensecrf2 is not installed (the extra cows_jax[crf])'}
  steps = {'data': lambda: sources.load(config.finalize(cfg))}
  steps.update(
    {name: functools.partial(stages.run_stage, name, cfg, workdir) for name in stages.STAGES}
  )
  for name, step in steps.items():
    traced = name in ('classify', 'segment')
    start = time.perf_counter()
    try:
      with _traced(payload if traced else {}, name):
        step()
    except Exception as e:
      traceback.print_exc()
      out['stages'][name] = {'error': one_line(e)}
      out['error'] = f'{name}: {one_line(e)}'
      break
    out['stages'][name] = {'seconds': time.perf_counter() - start}
    _progress(out)
  out['seconds_total'] = sum(s.get('seconds', 0.0) for s in out['stages'].values())
  return out


def predict(payload: dict) -> dict:
  """`cows-jax export` of the tiny run's segmenter for this machine's platform, then
  `cows-jax predict --export` (predict.write_files) on VOC-sized JPEGs: the first image (it
  compiles) and the others timed."""
  import numpy as np
  from PIL import Image

  from cows_jax import export, inference, predict
  from cows_jax.bench import common

  root, n = payload['root'], payload['images']
  cfg = _tiny_config(payload)
  out = os.path.join(root, 'export')
  start = time.perf_counter()
  meta = export.export_segmenter(cfg, os.path.join(root, 'run'), out)
  export_s = time.perf_counter() - start
  start = time.perf_counter()
  probabilities, _ = inference.load_export(out)
  load_s = time.perf_counter() - start
  rng = np.random.default_rng(0)
  h, w = common.image_size(payload['image'])
  images = os.path.join(root, 'images')
  os.makedirs(images, exist_ok=True)
  files = []
  for k in range(n):
    files.append(os.path.join(images, f'{k:03d}.jpg'))
    Image.fromarray(common.photo(rng, h, w)).save(files[-1], quality=90)
  labels = os.path.join(root, 'labels')
  start = time.perf_counter()
  predict.write_files(probabilities, files[:1], labels)
  first_s = time.perf_counter() - start
  start = time.perf_counter()
  written = predict.write_files(probabilities, files[1:], labels)['written'] if n > 1 else 0
  seconds = (time.perf_counter() - start) / max(n - 1, 1)
  return {
    'platform': meta['platforms'][0],
    'export_s': export_s,
    'mib': os.path.getsize(os.path.join(out, 'model.jax')) / 2**20,
    'load_s': load_s,
    'first_image_s': first_s,
    'seconds_per_image': seconds if written else None,
    'images_per_s': written / (seconds * max(n - 1, 1)) if written else None,
    'images': n,
    'image': payload['image'],
    'config': TINY_CONFIG,
  }
