"""`cows-jax bench localize`: localization maps of query images. Ours is the stage's own work
on each batch (localize.batch_maps, as localize.run calls it, with the related images'
features computed per batch), against the reference's procedure in JAX (a full pair forward
for every (query, related image) pairing and every self view) and, where torch is importable,
the PyTorch reference (tools/torch_reference.py)."""

import functools
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np

from cows_jax import localize, maps, views
from cows_jax.bench import common
from cows_jax.configs.defaults import paper_defaults
from cows_jax.models import from_config, random_init

HELP = 'localization maps of query images'
CLASSES_PER_IMAGE = 2  # classes of each query image (VOC train averages ~1.5).


def localize_data(args):
  """Random uint8 images of args.size px as the records of a split (the queries, and the
  pool of their related images), their classes, and K related images per (query, class)
  drawn from the other images."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.images, args.size, args.size, 3), np.uint8)
  classes = [
    np.sort(rng.choice(args.classes, CLASSES_PER_IMAGE, replace=False)) for _ in range(args.images)
  ]
  related = []
  for q in range(args.images):
    others = [i for i in range(args.images) if i != q] or [q]
    related.append([[int(n) for n in rng.choice(others, args.related)] for _ in classes[q]])
  return [{'image': image} for image in images], classes, related


def _ours(model, variables, cfg, source, classes, related, counter):
  """localize.batch_maps on batches of localize.batch_size queries (fewer if there are fewer
  images), with the related images' features computed by each batch that needs them and
  nothing kept across batches (localize.RelatedFeatures with localize.feature_memory_mib 0),
  the maps fetched to the host. `counter` counts the FLOPs of the MapComputer's jitted
  pieces (its `wrap`); the features, one image at a time on a CPU, as the batched network."""
  batched = jax.jit(lambda v, x: model.apply(v, x, method=model.features))
  wrap = lambda name, fn: counter.wrap(fn, count_as=batched if name == 'features' else None)
  computer = localize.MapComputer(model, variables, wrap=wrap)
  cfg.localize.batch_size = bs = min(len(source), cfg.localize.batch_size)
  cfg.localize.feature_memory_mib = 0
  related_features = localize.RelatedFeatures(computer, source, cfg)

  def run(queries):
    out = []
    for s in range(0, len(queries), bs):
      chunk = queries[s : s + bs]
      batch = localize.pad_batch(chunk, bs)
      per_batch, counts = localize.batch_maps(
        computer,
        source,
        batch,
        [classes[i] for i in batch],
        [related[i] for i in batch],
        related_features,
        cfg,
      )
      per_batch = np.asarray(per_batch)
      out += [per_batch[j, : counts[j]] for j in range(len(chunk))]
    return out

  return run


def _naive(model, variables, cfg, images, classes, related, counter):
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


def jax_maps(args, naive: bool) -> dict:
  """Ours (`_ours`) or the reference's procedure in JAX (`_naive`, on the same images
  normalized as localize makes its inputs)."""
  cfg = common.classifier_config(args)
  model = from_config.classifier(cfg)
  variables = {'params': random_init.classifier_params(model, args.size, 0)}
  source, classes, related = localize_data(args)
  counter = common.FlopCounter()
  if naive:
    images = localize.input_batch(source, range(len(source)), cfg)
    run = _naive(model, variables, cfg, images, classes, related, counter)
  else:
    run = _ours(model, variables, cfg, source, classes, related, counter)
  result = _timed_localization(run, args.images, counter.take)
  return {**result, **common.jax_device(args.dtype)}


def torch_maps(args) -> dict:
  common.cpu_only_jax()
  from cows_jax.tools import torch_reference as ref

  device, kind = common.torch_device()
  cfg = common.classifier_config(args)
  model = ref.CoAttentionClassifier(args.classes, args.width).to(device)
  source, classes, related = localize_data(args)
  images = localize.input_batch(source, range(len(source)), cfg)
  to_torch = lambda x: ref.nchw(x).to(device)

  def run(queries):
    out = []
    for q in queries:
      x_m = images[q : q + 1]
      view_images = [(v, to_torch(views.make_view(x_m, v))) for v in cfg.localize.self_views]
      partners = [to_torch(images[r]) for r in related[q]]
      with common.torch_autocast(device, args.dtype):
        out.append(
          ref.localization_maps(
            model, to_torch(x_m), classes[q], partners, view_images, cfg.localize.gate
          )
        )
    return out

  result = _timed_localization(run, args.images)
  # Every query has the same classes and pairings: the FLOPs of one are those of each.
  result['flops'] = common.torch_flops(lambda: run([0]))
  return {**result, **common.torch_result(device, kind, args.dtype)}


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


def run(args) -> None:
  rows = [
    ('jax, features reused', common.isolated(jax_maps, args, False)),
    ('jax, pair forward each', common.isolated(jax_maps, args, True)),
  ]
  if importlib.util.find_spec('torch'):
    rows.append(('torch, pair forward each', common.isolated(torch_maps, args)))
  self_views = paper_defaults().localize.self_views
  pairings = CLASSES_PER_IMAGE * args.related + len(self_views)
  title = (
    f'bench localize: size {args.size}, {args.images} images x {CLASSES_PER_IMAGE} classes, '
    f'{args.related} related per class, views {"/".join(map(str, self_views))} '
    f'({pairings} pairings per image), width {args.width}, classes {args.classes}, {args.dtype}'
  )
  common.report(args, title, rows, 's/image', 'images', 1)


def add_arguments(parser) -> None:
  parser.add_argument('--images', type=int, required=True, help='query images')
  parser.add_argument('--related', type=int, default=3, help='related images per class (K)')
  common.add_size(parser)
  common.add_model(parser)
  common.add_dtype_and_json(parser)
