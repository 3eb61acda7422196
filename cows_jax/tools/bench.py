"""`cows-jax bench train-step|localize`: our jitted code against the reference's procedure
(and, where torch is importable, the PyTorch reference of cows_jax/tools/torch_reference.py) on
random images and a randomly initialised classifier.

Each measurement runs in its own fresh process, so that its peak memory is its own and one
framework's threads do not compete with the other's.
"""

import argparse
import concurrent.futures
import functools
import importlib.util
import json
import multiprocessing
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import export as jax_export

from cows_jax import (
  checkpoints,
  classify,
  config,
  export,
  localize,
  losses,
  maps,
  run_dir,
  training,
  views,
)
from cows_jax.configs.defaults import paper_defaults
from cows_jax.data import sources
from cows_jax.models import from_config

SELF_VIEWS = {'pair': (), 'full': ('flip', 0.75, 2.0)}
CLASSES_PER_IMAGE = 2  # localize: classes of each query image (VOC train averages ~1.5).


def random_params(model, size: int, seed: int):
  """He-scaled normal weights and small non-zero biases in the model's shapes, drawn with
  numpy (compiling model.init takes longer than a step at full width on a CPU)."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, x)['params']
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == 'bias':
      return 0.1 * rng.normal(size=leaf.shape).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _config(args):
  cfg = paper_defaults()
  cfg.input.size = args.size
  cfg.model.width = args.width
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
  params = random_params(model, args.size, 0)
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
  state = (params, tx.init(params))
  batch = jax.tree.map(jnp.asarray, _pair_batch(args))
  on = jnp.asarray(True)
  start = time.perf_counter()
  state = jax.block_until_ready(step(*state, batch, on))
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(args.steps):
    state = step(*state, batch, on)
  jax.block_until_ready(state)
  per_step = (time.perf_counter() - start) / args.steps
  device = jax.devices()[0]
  return {
    'first': first,
    'per_step': per_step,
    'device': str(device),
    'peak': _peak_mib(device.memory_stats()),
  }


def _torch_train_step(args) -> dict:
  """The reference step: a full pair forward per pairing, backward, SGD."""
  _cpu_only_jax()
  import torch

  from cows_jax.tools import torch_reference as ref

  cuda = torch.cuda.is_available()
  device = 'cuda' if cuda else 'cpu'
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
  step = functools.partial(
    ref.train_step,
    model,
    opt,
    *tensors,
    view_images,
    c.contrastive_from_epoch,
    c.contrastive_from_epoch,
  )
  start = time.perf_counter()
  step()  # float(loss): waits for the device.
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(args.steps):
    step()
  per_step = (time.perf_counter() - start) / args.steps
  stats = {'peak_bytes_in_use': torch.cuda.max_memory_allocated()} if cuda else None
  return {'first': first, 'per_step': per_step, 'device': device, 'peak': _peak_mib(stats)}


def train_step_bench(args) -> None:
  pairings = 1 + len(SELF_VIEWS[args.views])
  rows = [
    ('jax, anchor features reused', _isolated(_jax_train_step, args, False)),
    ('jax, pair forward each', _isolated(_jax_train_step, args, True)),
  ]
  if importlib.util.find_spec('torch'):
    rows.append(('torch, pair forward each', _isolated(_torch_train_step, args)))
  print(
    f'bench train-step: size {args.size}, batch {args.batch} pairs, views {args.views} '
    f'({pairings} pairings), width {args.width}, classes {args.classes}, '
    f'{args.steps} timed steps; device {rows[0][1]["device"]}'
  )
  images = 2 * args.batch  # the pairs' images consumed per step (views are derived).
  _table(rows, 's/step', 'per_step', images)
  ours = rows[0][1]['per_step']
  print('  '.join(f'{name} / ours: {r["per_step"] / ours:.2f}x' for name, r in rows[1:]))


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


def _jax_localize_ours(model, variables, cfg, images, classes, related):
  """localize.run's procedure: per batch of queries, features once per query, view and
  related image the batch needs, the head per pairing; nothing kept across batches."""
  computer = localize.MapComputer(model, variables)
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
      partners = sorted({n for i in batch for ks in related[i] for n in ks})
      at = {n: j for j, n in enumerate(partners)}
      out += localize.image_maps(
        computer,
        computer.features(images[batch]),
        features(partners),
        view_feats,
        [[[at[n] for n in ks] for ks in related[i]] for i in batch],
        [classes[i] for i in batch],
        cfg,
      )[: len(chunk)]
    return out

  return run


def _jax_localize_naive(model, variables, cfg, images, classes, related):
  """The reference's procedure: a full pair forward (both images through the backbone) for
  every (query, related image) and every self view."""
  apply = functools.partial(model.apply, variables)
  pair = jax.jit(
    lambda x_m, x_n: apply(
      apply(x_m, method=model.features), apply(x_n, method=model.features), method=model.pair_maps
    )
  )

  def run(queries):
    out = []
    for q in queries:
      x_m = images[q : q + 1]
      self_maps = []
      for j, v in enumerate(cfg.localize.self_views):
        maps_m, maps_v = pair(x_m, views.make_view(x_m, v))
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
  variables = {'params': random_params(model, args.size, 0)}
  method = _jax_localize_naive if naive else _jax_localize_ours
  run = method(model, variables, cfg, *_localize_data(args))
  device = jax.devices()[0]
  result = _timed_localization(run, args.images)
  return {**result, 'device': str(device), 'peak': _peak_mib(device.memory_stats())}


def _torch_localize(args) -> dict:
  _cpu_only_jax()
  import torch

  from cows_jax.tools import torch_reference as ref

  cuda = torch.cuda.is_available()
  device = 'cuda' if cuda else 'cpu'
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
      out.append(
        ref.localization_maps(
          model, to_torch(x_m), classes[q], partners, view_images, cfg.localize.gate
        )
      )
    return out

  result = _timed_localization(run, args.images)
  stats = {'peak_bytes_in_use': torch.cuda.max_memory_allocated()} if cuda else None
  return {**result, 'device': device, 'peak': _peak_mib(stats)}


def _timed_localization(run, n: int) -> dict:
  """First call on one query (compiles), then all n queries timed; maps are fetched to the
  host, which waits for the device."""
  start = time.perf_counter()
  run([0])
  first = time.perf_counter() - start
  start = time.perf_counter()
  run(list(range(n)))
  return {'first': first, 'per_image': (time.perf_counter() - start) / n}


def localize_bench(args) -> None:
  rows = [
    ('jax, features reused', _isolated(_jax_localize, args, False)),
    ('jax, pair forward each', _isolated(_jax_localize, args, True)),
  ]
  if importlib.util.find_spec('torch'):
    rows.append(('torch, pair forward each', _isolated(_torch_localize, args)))
  self_views = paper_defaults().localize.self_views
  pairings = CLASSES_PER_IMAGE * args.related + len(self_views)
  print(
    f'bench localize: size {args.size}, {args.images} images x {CLASSES_PER_IMAGE} classes, '
    f'{args.related} related per class, views {"/".join(map(str, self_views))} '
    f'({pairings} pairings per image), width {args.width}, classes {args.classes}; '
    f'device {rows[0][1]["device"]}'
  )
  _table(rows, 's/image', 'per_image', 1)
  ours = rows[0][1]['per_image']
  print('  '.join(f'{name} / ours: {r["per_image"] / ours:.2f}x' for name, r in rows[1:]))


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
  import tempfile

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


def _segmenter_variables(model, size: int, seed: int) -> dict:
  """Random variables of every collection (frozen BN: positive variances and scales)."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key in ('var', 'scale'):
      return (1.0 + 0.1 * np.abs(rng.normal(size=leaf.shape))).astype(np.float32)
    fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
    return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, dict(shapes))


def _export_one(args, platform: str) -> dict:
  """Export the segmenter for one platform; size, export and load (deserialize) seconds, and
  the first call on this machine's platform."""
  cfg = paper_defaults()
  cfg.data.num_classes, cfg.model.width = args.classes, args.width
  cfg.segment.backbone, cfg.segment.head = args.backbone, args.head
  model = from_config.segmenter(cfg)
  variables = _segmenter_variables(model, args.size, 0)
  start = time.perf_counter()
  data = export.segmenter_function(model, variables, True, True, (platform,)).serialize()
  export_s = time.perf_counter() - start
  start = time.perf_counter()
  loaded = jax_export.deserialize(bytearray(data))
  out = {'mib': len(data) / 2**20, 'export_s': export_s, 'load_s': time.perf_counter() - start}
  if platform == jax.default_backend():
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


def _table(rows, unit: str, key: str, images_per_unit: int) -> None:
  """One aligned line per measurement."""
  width = max(len(name) for name, _ in rows)
  print(f'{"":{width}}  {"time":>15}  {"images/s":>9}  {"first call s":>12}  {"peak MiB":>9}')
  for name, r in rows:
    seconds = r[key]
    print(
      f'{name:{width}}  {seconds:8.3f} {unit:>6}  {images_per_unit / seconds:9.3g}  '
      f'{r["first"]:12.1f}  {r["peak"][0]:9.0f}  ({r["peak"][1]})'
    )


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='cows-jax bench', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='what', required=True)
  step = sub.add_parser('train-step', help='one classifier SGD step')
  step.add_argument(
    '--views',
    choices=list(SELF_VIEWS),
    required=True,
    help="'pair': (m, n) only; 'full': plus the flip, 0.75x and 2x self-pairs",
  )
  step.add_argument('--batch', type=int, required=True, help='pairs per step')
  step.add_argument('--steps', type=int, default=5, help='timed steps after the first')
  loc = sub.add_parser('localize', help='localization maps of query images')
  loc.add_argument('--images', type=int, required=True, help='query images')
  loc.add_argument('--related', type=int, default=3, help='related images per class (K)')
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
  for p in (step, loc, exp):
    p.add_argument('--size', type=int, required=True, help='square input size in pixels')
    p.add_argument('--width', type=float, default=1.0, help='channel multiplier (1.0: paper)')
    p.add_argument('--classes', type=int, default=20, help='number of classes')
  return parser


def main(argv) -> int:
  args = _parser().parse_args(argv)
  benches = {
    'train-step': train_step_bench,
    'localize': localize_bench,
    'localize-memory': localize_memory_bench,
    'export': export_bench,
  }
  benches[args.what](args)
  return 0
