"""grain pipelines: pairs of images for the classifier, crops with pseudo labels for the
segmenter. Batches are this process's slice of the global batch (one slice per host).

Both pipelines are random-access MapDatasets indexed by step, so resuming at step k
replays exactly the batches a run without interruption would have seen.
"""

import grain
import jax
import numpy as np

from cows_jax.data import transforms
from cows_jax.data.mixing import MixPlan
from cows_jax.data.pairs import ClassIndex


def _batches(ds, global_batch: int):
  """This process's part of each global batch. Global batch k holds examples
  [k * global_batch, (k + 1) * global_batch); when the devices do not divide it, it is padded
  to the next multiple of the device count with copies of its first example, marked by
  'weight' 0 (1 for real examples), which the losses and BatchNorm statistics leave out. The
  recipe's batch then runs unchanged on any device count. Process p takes the p-th contiguous
  slice, so the examples of a step and their order are those of a one-device run."""
  devices, processes = jax.device_count(), jax.process_count()
  padded = -(-global_batch // devices) * devices
  local = padded // processes
  slots = range(jax.process_index() * local, (jax.process_index() + 1) * local)

  def batch(k):
    indices = [k * global_batch + (j if j < global_batch else 0) for j in slots]
    loaded = {i: ds[i] for i in set(indices)}  # padding repeats one example: made once.
    items = [loaded[i] for i in indices]
    out = {key: np.stack([item[key] for item in items]) for key in items[0]}
    if padded != global_batch:
      out['weight'] = np.asarray([float(j < global_batch) for j in slots], np.float32)
    return out

  return grain.MapDataset.range(len(ds) // global_batch).map(batch)


def _prepare(image, rng, cfg, jitter: bool = True):
  image = transforms.resize_image(image, (cfg.input.size, cfg.input.size))
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
  (and 'image_m_plain', m without colour jitter, when the classifier uses self views).

  `plan` says which record each anchor slot of an epoch holds (extra images mixed in);
  by default every record once per epoch.
  """

  def make_pair(anchor, rng):
    partner = class_index.sample_partner(int(anchor), rng)
    m, n = source[int(anchor)], source[partner]
    pair = {
      'image_m': _prepare(m['image'], rng, cfg),
      'image_n': _prepare(n['image'], rng, cfg),
      'labels_m': m['labels'].astype(np.float32),
      'labels_n': n['labels'].astype(np.float32),
    }
    if cfg.classify.self_views:  # the reference makes m's self views before colour jitter.
      pair['image_m_plain'] = _prepare(m['image'], None, cfg, jitter=False)
    return pair

  plan = plan or MixPlan(len(source))
  epoch_len = plan.epoch_length
  slots = grain.MapDataset.range(epoch_len).shuffle(seed=seed).repeat(num_epochs)
  ds = grain.MapDataset.range(len(slots)).map(lambda i: plan.anchor(i // epoch_len, slots[i], seed))
  # Drop each epoch's remainder so that every step belongs to exactly one epoch.
  steps_per_epoch = epoch_len // global_batch
  ds = _whole_batches(ds, epoch_len, steps_per_epoch * global_batch)
  return _batches(ds.random_map(make_pair, seed=seed), global_batch)


def _whole_batches(ds, epoch_len: int, kept: int):
  """Keep the first `kept` elements of each epoch of length `epoch_len`."""
  if kept == epoch_len:
    return ds
  n_epochs = len(ds) // epoch_len
  keep = (np.arange(n_epochs)[:, None] * epoch_len + np.arange(kept)[None]).ravel()
  return grain.MapDataset.range(len(keep)).map(lambda i: ds[int(keep[i])])


def segment_dataset(source, labels_for, cfg, num_steps: int, global_batch: int, seed: int):
  """MapDataset of batches {'image','label'}: random scale/mirror/crop of each training image
  with its pseudo label (`labels_for(index, record)` -> uint8 HxW)."""
  seg = cfg.segment

  def make_example(index, rng):
    record = source[int(index)]
    image, label = transforms.random_scale_crop(
      record['image'],
      labels_for(int(index), record),
      rng,
      tuple(seg.scale_range),
      seg.crop_size,
      seg.mirror,
      seg.mean,
    )
    return {
      'image': transforms.normalize(image, seg.mean, seg.std),
      'label': label.astype(np.int32),
    }

  epochs = -(-num_steps * global_batch // len(source))
  ds = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(epochs)
  return _batches(ds.random_map(make_example, seed=seed), global_batch)


def iterate(ds, start: int, cfg):
  """Iterator over batches start, start+1, ... with background prefetching."""
  it = ds[start:].to_iter_dataset(
    grain.ReadOptions(num_threads=2, prefetch_buffer_size=cfg.input.prefetch)
  )
  if cfg.input.worker_count:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.input.worker_count))
  return iter(it)
