"""`cows-jax bench input`: the classifier's input pipeline alone (input_pipeline.pair_dataset and
iterate, as classify.train runs them), in pairs/s with each worker count, next to the training
step's pairs/s (`bench train-step`)."""

import math
import os
import tempfile
import time

import numpy as np
from PIL import Image

from cows_jax import classify, config
from cows_jax.bench import common, train_step
from cows_jax.data import input_pipeline, sources

HELP = "the input pipeline's pairs/s next to the train step's"


def _write_jpegs(root: str, n: int, size: tuple[int, int], classes: int) -> dict:
  """n VOC-like JPEGs (quality 90) with 1 to 3 classes each, as an image-list dataset: the
  fields data.lists.* of a config."""
  rng = np.random.default_rng(0)
  images = os.path.join(root, 'images')
  os.makedirs(images, exist_ok=True)
  lines = []
  for k in range(n):
    Image.fromarray(common.photo(rng, *size)).save(os.path.join(images, f'{k:05d}.jpg'), quality=90)
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
  cfg = common.classifier_config(args)
  cfg.data.name, cfg.data.image_size, cfg.data.data_dir = 'image_lists', 0, data_dir
  cfg.data.classify_split = cfg.data.train_split = cfg.data.eval_split = 'train'
  for key, value in lists.items():
    cfg.data.lists[key] = value
  cfg.classify.batch_pairs = args.batch
  cfg.classify.self_views = common.SELF_VIEWS[args.views]
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
    lists = _write_jpegs(tmp, args.images, common.image_size(args.jpeg), args.classes)
    cfg = _input_config(args, lists, os.path.join(tmp, 'data'))
    pool = sources.classifier_pool(cfg)
    for workers in args.workers:
      r = _pipeline_rate(cfg, pool, workers, args.batches)
      rows.append((f'input pipeline, {workers} workers', {**r, 'workers': workers}))
  return rows


def run(args) -> None:
  """The classifier's input pipeline alone (pairs/s) next to its training step (pairs/s)."""
  step = common.isolated(train_step.jax_step, args, False)
  rows = pipeline_rates(args)
  rows.append(('train step (jax, bench train-step)', step))
  views_text = '/'.join(map(str, common.SELF_VIEWS[args.views])) or 'none'
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
  common.write_json(args, {'bench': 'input', 'rows': out, 'limit': limit})


def add_arguments(parser) -> None:
  common.add_views(parser, required=False)
  parser.add_argument('--batch', type=int, default=5, help='pairs per step')
  parser.add_argument('--steps', type=int, default=2, help='timed steps')
  parser.add_argument(
    '--workers',
    type=lambda t: [int(x) for x in t.split(',')],
    default=[0],
    help='input.worker_count, a comma list: one row each',
  )
  parser.add_argument('--images', type=int, default=64, help='JPEGs written to a temporary dir')
  parser.add_argument('--jpeg', default='500x375', help='their size, width x height (VOC-like)')
  parser.add_argument('--batches', type=int, default=40, help='timed batches per row')
  parser.add_argument('--prefetch', type=int, default=2, help='input.prefetch')
  common.add_size(parser, 256)
  common.add_model(parser)
  common.add_dtype_and_json(parser)
