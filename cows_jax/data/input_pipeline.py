"""grain pipelines: pairs of images for the classifier, crops with pseudo labels for the
segmenter. Batches are this process's slice of the global batch (one slice per host).

Both pipelines are random-access MapDatasets indexed by step, so resuming at step k
replays exactly the batches a run without interruption would have seen. `iterate` reads them
ahead (in grain worker processes with input.worker_count > 0); `DevicePrefetch` puts the next
ones on the devices while a step runs (training.fit).
"""

import collections
import gc
from typing import Callable, Iterator

import grain
import jax
import numpy as np
from absl import flags

from cows_jax import views
from cows_jax.data import transforms
from cows_jax.data.mixing import MixPlan
from cows_jax.data.pairs import ClassIndex


def _batches(ds, global_batch: int, epoch_len: int | None = None, keep_partial: bool = False):
  """This process's part of each global batch.

  The stream `ds` is cut into epochs of `epoch_len` examples (default: one epoch, all of it);
  an epoch's batch j holds its examples [j * global_batch, (j + 1) * global_batch), and its
  last, partial batch is kept (`keep_partial`) or dropped, so every step belongs to one epoch.
  A batch is padded to the next multiple of the device count (and a partial one to the full
  batch) with copies of its first example, marked by 'weight' 0 (1 for real examples), which
  the losses and BatchNorm statistics leave out. The recipe's batch then runs unchanged on any
  device count. Process p takes the p-th contiguous slice, so the examples of a step and their
  order are those of a one-device run."""
  devices, processes = jax.device_count(), jax.process_count()
  epoch_len = epoch_len or len(ds)
  per_epoch = -(-epoch_len // global_batch) if keep_partial else epoch_len // global_batch
  padded = -(-global_batch // devices) * devices
  local = padded // processes
  slots = range(jax.process_index() * local, (jax.process_index() + 1) * local)
  weighted = padded != global_batch or (keep_partial and epoch_len % global_batch)

  def batch(k):
    epoch, j = divmod(k, per_epoch)
    real = min(global_batch, epoch_len - j * global_batch)
    first = epoch * epoch_len + j * global_batch
    indices = [first + (s if s < real else 0) for s in slots]
    loaded = {i: ds[i] for i in set(indices)}  # padding repeats one example: made once.
    items = [loaded[i] for i in indices]
    out = {key: np.stack([item[key] for item in items]) for key in items[0]}
    if weighted:
      out['weight'] = np.asarray([float(s < real) for s in slots], np.float32)
    return out

  return grain.MapDataset.range(len(ds) // epoch_len * per_epoch).map(batch)


def _prepare(image, rng, cfg, jitter: bool = True, size: int | None = None):
  size = size or cfg.input.size
  image = transforms.resize_image(image, (size, size))
  if jitter and cfg.input.color_jitter is not None and any(cfg.input.color_jitter):
    image = transforms.color_jitter(image, rng, tuple(cfg.input.color_jitter))
  return transforms.normalize(image, cfg.input.mean, cfg.input.std)


def pair_dataset(
  source,
  class_index: ClassIndex,
  cfg,
  num_epochs: int,
  global_batch: int,
  seed: int,
  plan: MixPlan | None = None,
):
  """MapDataset of batches {'image_m','image_n','labels_m','labels_n'} over all epochs
  (and 'image_m_plain', m without colour jitter, when the classifier uses self views, and
  its scaled views from the original image, views.input_key, when input.views_from_original).

  `plan` says which record each anchor slot of an epoch holds (extra images mixed in);
  by default every record once per epoch.
  """

  def make_pair(anchor, rng):
    partner = class_index.sample_partner(int(anchor), rng, not cfg.classify.partner_excludes_anchor)
    m, n = source[int(anchor)], source[partner]
    pair = {
      'image_m': _prepare(m['image'], rng, cfg),
      'image_n': _prepare(n['image'], rng, cfg),
      'labels_m': m['labels'].astype(np.float32),
      'labels_n': n['labels'].astype(np.float32),
    }
    if cfg.classify.self_views:  # the reference makes m's self views before colour jitter.
      pair['image_m_plain'] = _prepare(m['image'], None, cfg, jitter=False)
    for view in views.from_original(cfg.classify.self_views, cfg):
      size = views.view_size(cfg.input.size, view)
      pair[views.input_key(view)] = _prepare(m['image'], None, cfg, jitter=False, size=size)
    return pair

  plan = plan or MixPlan(len(source))
  epoch_len = plan.epoch_length
  slots = grain.MapDataset.range(epoch_len).shuffle(seed=seed).repeat(num_epochs)
  ds = grain.MapDataset.range(len(slots)).map(lambda i: plan.anchor(i // epoch_len, slots[i], seed))
  keep = cfg.classify.keep_last_partial_batch
  return _batches(ds.random_map(make_pair, seed=seed), global_batch, epoch_len, keep)


def segment_dataset(source, labels_for, cfg, num_updates: int, plan, seed: int):
  """MapDataset of micro-batches {'image','label'}: random scale/mirror/crop of each training
  image with its pseudo label (`labels_for(index, record)` -> uint8 HxW). The crops come in
  one order whatever the plan (update_plan: `plan.examples` per update, cut into
  `plan.micro_steps` micro-batches of up to `plan.slots`), so a folded update trains on the
  crops of the update it replaces."""
  seg = cfg.segment

  def make_example(index, rng):
    record = source[int(index)]
    image, label = transforms.random_scale_crop(
      record['image'],
      labels_for(int(index), record),
      rng,
      tuple(seg.scales),
      seg.scale_sampling == 'discrete',
      seg.crop_size,
      seg.mirror,
      seg.mean,
    )
    return {
      'image': transforms.normalize(image, seg.mean, seg.std),
      'label': label.astype(np.int32),
    }

  epochs = -(-num_updates * plan.examples // len(source))
  ds = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(epochs)
  crops = ds.random_map(make_example, seed=seed)
  return _batches(crops, plan.micro_batch, plan.examples, keep_partial=True)


DEFAULT_DEVICE_PREFETCH = 2


class Batches:
  """This process's numpy batches from a step on (`iterate`), and how many of them the
  trainer keeps on the devices ahead of the step (`device_prefetch`: input.prefetch, or
  DEFAULT_DEVICE_PREFETCH). `close()` stops grain's threads and worker processes."""

  def __init__(self, it, device_prefetch: int, workers: int = 0):
    self._it, self.device_prefetch, self._workers = it, device_prefetch, workers

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._it)

  def close(self) -> None:
    close = getattr(self._it, 'close', None)
    if close is not None:
      close()
    if self._workers:
      # Batches from worker processes live in shared memory, unlinked when the arrays are
      # freed; some sit in reference cycles: free them now, not at exit (where Python's
      # resource tracker would warn of leaked shared memory).
      gc.collect()


def iterate(ds, start: int, cfg) -> Batches:
  """Batches start, start+1, ... of `ds`, made ahead in the background: by 2 threads of this
  process, or with input.worker_count > 0 by that many grain worker processes (decode,
  resize, jitter; each makes whole batches, in the same order, so the batches equal those of
  worker_count=0)."""
  it = ds[start:].to_iter_dataset(
    grain.ReadOptions(num_threads=2, prefetch_buffer_size=cfg.input.prefetch)
  )
  if cfg.input.worker_count:
    # grain reads its absl flags when it starts the workers. The CLI parses them; a Python
    # caller (tests, `cows-jax bench input`) may not have, and grain then takes their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.input.worker_count))
  return Batches(iter(it), cfg.input.prefetch or DEFAULT_DEVICE_PREFETCH, cfg.input.worker_count)


class DevicePrefetch:
  """`put(batch)` of each batch of `batches`, `depth` batches ahead: when batch k is returned,
  the transfers of batches k+1 .. k+depth are already issued (jax.device_put and
  make_array_from_process_local_data return at once and copy in the background), so the
  next batch is on the device while step k runs. `close()` closes `batches` too."""

  def __init__(self, batches: Iterator, put: Callable, depth: int = DEFAULT_DEVICE_PREFETCH):
    self._batches, self._put, self._depth = batches, put, max(int(depth), 1)
    self._ahead = collections.deque()

  def __iter__(self):
    return self

  def __next__(self):
    while len(self._ahead) <= self._depth:
      try:
        batch = next(self._batches)
      except StopIteration:
        break
      self._ahead.append(self._put(batch))
    if not self._ahead:
      raise StopIteration
    return self._ahead.popleft()

  def close(self) -> None:
    self._ahead.clear()
    close = getattr(self._batches, 'close', None)
    if close is not None:
      close()
