"""Stage 2a: localization maps with cross-image context (paper.md, "Stage 2").

For image m and each of its classes c: the co-attention class map of m paired with K related
images that contain c (averaged over k), plus the maps of m's self-pair views (flip, scales),
aggregated by the paper's rule and resized to the image size.

In each batch of queries, backbone features are computed once per image and view, then only
the co-attention head runs for each pairing (the reference reruns the full pair forward for
every pairing; the maps are the same). The related images' features are kept for the whole
run when they fit in localize.feature_memory_mib, else computed per batch, so memory never
grows past that budget with the dataset (`RelatedFeatures`).
Batches are spread over processes and sharded over each process's devices. Per-image maps are
written atomically to WORKDIR/maps/<id>.npz (run_dir), so an interrupted run resumes where it
stopped; maps/index.json, written by process 0 after every process is done, marks the stage
complete.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cows_jax import (
  checkpoints,
  config,
  host_pool,
  maps,
  parallel,
  progress,
  run_dir,
  views,
)
from cows_jax.configs.defaults import SCHEMA
from cows_jax.data import sources, transforms
from cows_jax.data.pairs import ClassIndex
from cows_jax.models import from_config, per_image


def related_images(class_index: ClassIndex, m: int, c: int, cfg) -> list[int]:
  """localize.num_related images with class c, drawn with replacement from a generator seeded
  by (localize.seed, m, c); m itself among them unless localize.related_excludes_query."""
  rng = np.random.default_rng([cfg.localize.seed, m, c])
  exclude = m if cfg.localize.related_excludes_query else -1
  return [
    class_index.sample_with_class(c, rng, exclude=exclude) for _ in range(cfg.localize.num_related)
  ]


def input_batch(source, indices, cfg, side: int | None = None) -> np.ndarray:
  """The normalized inputs [B, S, S, 3] of `indices`, square resizes of the original images
  (`source[i]['image']`, uint8) to S = `side` (default input.size)."""
  size = (side or cfg.input.size,) * 2
  return np.stack(
    [
      transforms.normalize(
        transforms.resize_image(source[i]['image'], size), cfg.input.mean, cfg.input.std
      )
      for i in indices
    ]
  )


def _view_batch(source, indices, images: np.ndarray, view, cfg) -> np.ndarray:
  """A self view of a batch: made from the original images (input.views_from_original), or
  resampled from the batch's `images` (and always for the flip: the same either way)."""
  if views.from_original((view,), cfg):
    return input_batch(source, indices, cfg, views.view_size(cfg.input.size, view))
  return np.asarray(views.make_view(images, view))


def pad_batch(indices: list[int], batch: int) -> list[int]:
  """Pad a short last batch by repeating its first element (fixed shapes, one compile)."""
  return indices + [indices[0]] * (batch - len(indices))


# The jitted pieces of a MapComputer, as its `wrap` names them.
PIECES = ('features', 'pair_maps', 'cams', 'batch_maps', 'cam_maps')


class MapComputer:
  """Jitted pieces of the localization: features, and the co-attention head on pairs with the
  aggregation and selection of every (query, class) of a batch (`batch_maps`). The variables
  are arguments of the jitted functions (not constants of the executable), placed on this
  process's devices; batches are sharded over them where they divide.

  `wrap(name, fn)`, when given, replaces each jitted piece ('features', 'pair_maps', 'cams',
  'batch_maps', 'cam_maps') by what it returns, a function of the same arguments: `bench
  localize` counts their FLOPs that way."""

  def __init__(self, model, variables, mesh=None, wrap=None):
    self._mesh = mesh or parallel.local_mesh()
    self._variables = jax.device_put(variables, parallel.replicated(self._mesh))
    devices = self._mesh.devices.size
    self._f = jax.jit(
      lambda v, x: per_image.on_cpu(
        lambda xs: model.apply(v, xs, method=model.features), x, devices
      )
    )
    self._p = jax.jit(lambda v, a, b: model.apply(v, a, b, method=model.pair_maps))
    self._c = jax.jit(lambda v, f: model.apply(v, f, method=model.cam))
    self._maps = jax.jit(
      functools.partial(_batch_maps, model), static_argnames=('view_list', 'gate')
    )
    self._cam_maps = jax.jit(
      functools.partial(_cam_maps, model), static_argnames=('view_list', 'gate')
    )
    if wrap is not None:
      pieces = (self._f, self._p, self._c, self._maps, self._cam_maps)
      self._f, self._p, self._c, self._maps, self._cam_maps = map(wrap, PIECES, pieces)

  def _put(self, x):
    return parallel.to_local_devices(np.asarray(x), self._mesh)

  def features(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(self._f(self._variables, self._put(images)))

  def pair_maps(self, f_m, f_n):
    return self._p(self._variables, self._put(f_m), self._put(f_n))

  def cams(self, feats) -> np.ndarray:
    return np.asarray(self._c(self._variables, self._put(feats)))

  def batch_maps(self, feats_m, partner_feats, view_feats: dict, layout, gate: float):
    """Aggregated maps [B, J, h, w] on the device (`_batch_maps`) of a `_Layout`."""
    return self._maps(
      self._variables,
      self._put(feats_m),
      self._put(partner_feats),
      tuple(self._put(f) for f in view_feats.values()),
      *(self._put(a) for a in layout[:5]),
      view_list=tuple(view_feats),
      gate=float(gate),
    )

  def batch_cam_maps(self, feats, class_ids, view_feats: dict | None = None, gate: float = 0.0):
    """Aggregated CAMs [B, J, h, w] on the device (`_cam_maps`)."""
    view_feats = view_feats or {}
    return self._cam_maps(
      self._variables,
      self._put(feats),
      self._put(class_ids),
      tuple(self._put(f) for f in view_feats.values()),
      view_list=tuple(view_feats),
      gate=float(gate),
    )


def _batch_maps(
  model,
  variables,
  feats_m,
  partner_feats,
  view_feats,
  pair_q,
  pair_n,
  pair_c,
  slots,
  class_ids,
  *,
  view_list,
  gate,
):
  """Every query's aggregated maps [B, J, h, w] in one device call: the head on each (query,
  related image) pairing and on each self view, the maps of each query's classes picked, the
  mean over the K related images, then the aggregation rule over images and classes at once.
  pair_q, pair_n, pair_c: each pairing's query, related image and class; slots [B, J, K]: the
  pairings of class j of query b; class_ids [B, J] (padding: any class, cut by the caller)."""
  apply = lambda *a: model.apply(variables, *a, method=model.pair_maps)
  h, w = feats_m.shape[1:3]
  cross, _ = apply(feats_m[pair_q], partner_feats[pair_n])  # [pairs, h, w, C]
  cross = jnp.take_along_axis(cross, pair_c[:, None, None, None], axis=3)[..., 0]
  stack = []
  for j, (view, f_v) in enumerate(zip(view_list, view_feats)):
    maps_m, maps_v = apply(feats_m, f_v)
    if j == 0:
      stack.append(maps.select_classes(maps_m, class_ids))
    stack.append(maps.select_classes(views.map_back(maps_v, view, (h, w)), class_ids))
  stack.append(jnp.mean(cross[slots], axis=2))  # [B, J, K, h, w] -> over K
  return maps.aggregate_batch(jnp.stack(stack), gate)


def _cam_maps(model, variables, feats, class_ids, view_feats=(), *, view_list=(), gate=0.0):
  """[B, J, h, w]: each image's class maps, then each view's mapped back, aggregated by the
  paper's rule (over one map when there are no views)."""
  cam = lambda f: model.apply(variables, f, method=model.cam)
  h, w = feats.shape[1:3]
  stack = [maps.select_classes(cam(feats), class_ids)]
  for view, f_v in zip(view_list, view_feats):
    stack.append(maps.select_classes(views.map_back(cam(f_v), view, (h, w)), class_ids))
  return maps.aggregate_batch(jnp.stack(stack), gate)


class _Layout(NamedTuple):
  """Index arrays of a batch's (query, class, related image) pairings for `_batch_maps`: the
  pairings in (query, class, k) order padded to a multiple of B*K (few distinct shapes), the
  pairing of each (query, class slot, k), and the class of each slot; classes per query padded
  to a power of two."""

  pair_q: np.ndarray
  pair_n: np.ndarray
  pair_c: np.ndarray
  slots: np.ndarray  # [B, J, K]
  class_ids: np.ndarray  # [B, J]
  counts: list[int]  # classes of each query


def _class_slots(classes: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
  counts = [len(c) for c in classes]
  j = 1 << max(max(counts, default=1) - 1, 0).bit_length()
  ids = np.zeros((len(classes), j), np.int32)
  for i, cls in enumerate(classes):
    ids[i, : len(cls)] = cls
  return ids, counts


def _layout(related: list[list[list[int]]], classes: list[np.ndarray], k: int) -> _Layout:
  b = len(classes)
  class_ids, counts = _class_slots(classes)
  pairs = []  # (query, related image, class)
  slots = np.zeros((b, class_ids.shape[1], k), np.int32)
  for i in range(b):
    for j, partners in enumerate(related[i]):
      slots[i, j] = np.arange(len(pairs), len(pairs) + k)
      pairs += [(i, n, class_ids[i, j]) for n in partners]
  bucket = -(-max(len(pairs), 1) // (b * k)) * (b * k)
  pairs = np.asarray(pairs + [pairs[0] if pairs else (0, 0, 0)] * (bucket - len(pairs)), np.int32)
  return _Layout(*pairs.T, slots, class_ids, counts)


def _per_image(batch_maps, counts: list[int]) -> list[np.ndarray]:
  out = np.asarray(batch_maps)
  return [out[i, :c] for i, c in enumerate(counts)]


def image_maps(
  computer: MapComputer,
  feats_m: np.ndarray,
  partner_feats: np.ndarray | None,
  view_feats: dict,
  related: list[list[list[int]]],
  classes: list[np.ndarray],
  cfg,
  on_device: bool = False,
):
  """Aggregated co-attention maps at feature resolution for a batch of query images.

  feats_m [B,h,w,D]: the queries; partner_feats [N,h,w,D]: the related images; view_feats:
  {view: [B,hv,wv,D]}, in config order; related[b][j]: the K partners for class
  classes[b][j]. Per class the maps are, in the reference's order (its test script): m's
  map in the pair with the first view, each view's map mapped back, then the mean over the
  K related images; with the three default views that is the paper's 5 maps. Returns per
  query a [K_b, h, w] array (0..255); `on_device`: (the device array [B, J, h, w], K_b per
  query) instead, for `maps.resize_to_images`.
  """
  layout = _layout(related, classes, cfg.localize.num_related)
  if partner_feats is None:  # no classes in the batch: nothing to pair with.
    partner_feats = feats_m[:1]
  out = computer.batch_maps(feats_m, partner_feats, view_feats, layout, cfg.localize.gate)
  return (out, layout.counts) if on_device else _per_image(out, layout.counts)


def cam_maps(
  computer: MapComputer,
  feats: np.ndarray,
  classes: list[np.ndarray],
  on_device: bool = False,
  view_feats: dict | None = None,
  gate: float = 0.0,
):
  """Single-image CAMs (the ablation's baseline inference): the classifier's class maps of
  each image alone, ReLU and scaled to 0..255 by their max (the aggregation rule over one
  map). With `view_feats` ({view: [B,hv,wv,D]}, localize.method='cam_views'), each view's
  CAMs mapped back join the image's, aggregated by the paper's rule with `gate`: the
  multi-view average without cross-image context."""
  class_ids, counts = _class_slots(classes)
  out = computer.batch_cam_maps(feats, class_ids, view_feats, gate)
  return (out, counts) if on_device else _per_image(out, counts)


def restore_classifier(cfg, run: run_dir.RunDir):
  """(model, variables, step) of the classifier checkpoint the maps come from: the end of
  epoch localize.after_epochs of the run's classifier."""
  step = run_dir.classifier_epoch_step(run, cfg.localize.after_epochs)
  model = from_config.classifier(cfg)
  like = from_config.abstract_variables(model, cfg)
  variables, step = checkpoints.restore_variables(run.classifier(), step, like, 'classify')
  return model, variables, step


def run(cfg, workdir: str) -> None:
  """Maps for every training image; skips images whose maps exist."""
  cfg = config.finalize(cfg)
  run = run_dir.RunDir(workdir)
  if run_dir.complete(run.maps_index(), run.map_file, run_dir.maps_readable, 'localize'):
    return
  SCHEMA.require(cfg, 'localize.')  # the CLI validated them; a Python caller may not have.
  method = cfg.localize.method
  model, variables, step = restore_classifier(cfg, run)
  logging.info(
    'localize: classifier checkpoint of step %d (after %d epochs)',
    step,
    cfg.localize.after_epochs,
  )
  train = sources.load(cfg)['train']
  computer = MapComputer(model, variables)
  class_index = ClassIndex(sources.all_labels(train))
  ids = [str(train[i]['id']) for i in range(len(train))]

  todo = [i for i in range(len(train)) if not run_dir.maps_readable(run.map_file(ids[i]))]
  logging.info('localize: %s maps, %d of %d images to do', method, len(todo), len(train))
  _write_maps(computer, train, ids, todo, class_index, cfg, run)
  parallel.barrier('localize')
  if parallel.is_writer():
    run_dir.write_json(run.maps_index(), {'ids': ids, 'checkpoint_step': step, 'method': method})
  parallel.barrier('localize: marker')


class RelatedFeatures:
  """Backbone features of the related images. When the whole training set's features fit in
  localize.feature_memory_mib they are computed once, in fixed slices of the split, and kept
  (each image once per run, as fast as it gets); otherwise each batch computes the ones it
  needs that are not among its own queries and nothing is kept (memory flat in the dataset
  size, more backbone work). Either way an image's features come from the same computation
  in every run, so resumed and distributed runs write the same maps."""

  def __init__(self, computer: MapComputer, train, cfg):
    self.computer, self.train, self.cfg = computer, train, cfg
    bs, n = cfg.localize.batch_size, len(train)
    first = self._batch(list(range(min(bs, n))))
    self.store = None
    if first[0].nbytes * n <= cfg.localize.feature_memory_mib * 2**20:
      self.store = np.empty((n, *first.shape[1:]), first.dtype)
      self.store[: len(first)] = first
      for s in range(bs, n, bs):
        chunk = list(range(s, min(s + bs, n)))
        self.store[s : s + len(chunk)] = self._batch(chunk)
    logging.info(
      'localize: related-image features %s (%.1f MiB per 1,000 images)',
      'kept in memory' if self.store is not None else 'computed per batch',
      first[0].nbytes * 1000 / 2**20,
    )

  def _batch(self, chunk: list[int]) -> np.ndarray:
    bs = self.cfg.localize.batch_size
    images = input_batch(self.train, pad_batch(chunk, bs), self.cfg)
    return self.computer.features(images)[: len(chunk)]

  def of_queries(self, batch: list[int], images: np.ndarray) -> np.ndarray:
    """Features of a batch of queries (a fixed slice of the split, padded): kept ones when
    there are (the same computation), else computed from their `images`."""
    if self.store is not None:
      return self.store[np.asarray(batch)]
    return self.computer.features(images)

  def __call__(self, indices: list[int], batch: list[int], batch_feats: np.ndarray) -> np.ndarray:
    """Features of the related images `indices`: the kept ones; else those among the batch's
    queries `batch` are taken from their features `batch_feats` (`of_queries`) and the others
    computed, `localize.batch_size` at a time."""
    if self.store is not None:
      return self.store[np.asarray(indices)]
    bs = self.cfg.localize.batch_size
    compute = lambda rest: np.concatenate(
      [self._batch(rest[s : s + bs]) for s in range(0, len(rest), bs)]
    )
    return reuse_queries(indices, batch, batch_feats, compute)


def reuse_queries(indices: list[int], batch: list[int], batch_feats, compute) -> np.ndarray:
  """Features of the images `indices`: those among the queries `batch` taken from their
  features `batch_feats`, the others from `compute(others)` (one call)."""
  at = {i: j for j, i in enumerate(batch)}
  rest = [i for i in indices if i not in at]
  computed = dict(zip(rest, compute(rest))) if rest else {}
  return np.stack([batch_feats[at[i]] if i in at else computed[i] for i in indices])


def batch_maps(
  computer: MapComputer,
  source,
  batch: list[int],
  classes: list[np.ndarray],
  related: list[list[list[int]]] | None,
  related_features: RelatedFeatures | None,
  cfg,
):
  """The localization maps of one batch of queries at feature resolution, on the device:
  (maps [B, J, h, w] (0..255), the number of classes of each query), by localize.method.
  This is the stage's work on a batch (`_write_maps` runs it, and so does `bench localize`).

  source: the split's records (`source[i]['image']`, uint8); batch: the queries, padded to
  localize.batch_size (`pad_batch`); classes[b]: query b's classes; related[b][j]: the split
  indices of the K related images for classes[b][j] ('coattention': `related_images`), whose
  features come from `related_features`. The inputs are made (`input_batch`) with the self
  views (`_view_batch`), the backbone runs once per image and view, then the head on every
  pairing (`image_maps`) or the CAMs alone (`cam_maps`).
  """
  method = cfg.localize.method
  images = input_batch(source, batch, cfg)
  view_feats = {
    v: computer.features(_view_batch(source, batch, images, v, cfg))
    for v in (cfg.localize.self_views if method != 'cam' else ())
  }
  if method in ('cam', 'cam_views'):
    feats = computer.features(images)
    return cam_maps(computer, feats, classes, True, view_feats, cfg.localize.gate)
  partners = sorted({n for per_image in related for ks in per_image for n in ks})
  at = {n: j for j, n in enumerate(partners)}
  feats = related_features.of_queries(batch, images)
  return image_maps(
    computer,
    feats,
    related_features(partners, batch, feats) if partners else None,
    view_feats,
    [[[at[n] for n in ks] for ks in per_image] for per_image in related],
    classes,
    cfg,
    on_device=True,
  )


def _write_maps(
  computer: MapComputer,
  train,
  ids: list[str],
  todo: list[int],
  class_index: ClassIndex,
  cfg,
  run: run_dir.RunDir,
) -> None:
  """Maps of the training images `todo`, one file per image. Batches are fixed slices of the
  split, whatever is left to do, and each process takes every process_count()-th batch, so a
  resumed or distributed run computes every map in the same batch as a plain run (the same
  numbers to the bit). Related images' features: `RelatedFeatures`."""
  method, bs = cfg.localize.method, cfg.localize.batch_size
  todo = set(todo)
  starts = [s for s in range(0, len(train), bs) if not todo.isdisjoint(range(s, s + bs))]
  starts = [starts[j] for j in parallel.process_share(len(starts))]
  counter = progress.Progress('localize', sum(len(todo & set(range(s, s + bs))) for s in starts))
  related_features = (
    RelatedFeatures(computer, train, cfg) if method == 'coattention' and starts else None
  )
  # Each map file is compressed and written by one of host_workers threads while the device
  # computes the next batch (host_pool); an image is done, and a stop may come, once its file
  # is written.
  workers = host_pool.workers(cfg)
  with host_pool.HostPool(workers, 'localize', processes=False, depth=2 * max(bs, workers)) as pool:
    for s in starts:
      chunk = list(range(s, min(s + bs, len(train))))
      batch = pad_batch(chunk, bs)
      classes = [class_index.classes_of(i) for i in batch]
      related = None
      if method == 'coattention':
        related = [
          [related_images(class_index, i, int(c), cfg) for c in cls]
          for i, cls in zip(batch, classes)
        ]
      small = batch_maps(computer, train, batch, classes, related, related_features, cfg)
      # Every map of the batch at its image's size: one device call, one transfer.
      sizes = [train[i]['image'].shape[:2] for i in chunk]
      full = maps.resize_to_images(small[0][: len(chunk)], sizes, cfg.localize.quantize_maps)
      for j, i in enumerate(chunk):
        if i in todo:
          (h, w), k = sizes[j], small[1][j]
          written = pool.thread(
            run_dir.save_maps, run.map_file(ids[i]), full[j, :k, :h, :w], classes[j]
          )
          pool.then(lambda _: counter.update(), written)
  counter.close()
