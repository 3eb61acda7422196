"""Label maps from a trained segmenter: `cows-jax predict-split` (a dataset split, VOC-format
PNGs for the evaluation server, in WORKDIR/predictions/SPLIT/) and `cows-jax predict` (image
files of any size, from a run directory or from an export)."""

import io

import numpy as np
from absl import logging
from etils import epath
from PIL import Image, UnidentifiedImageError

from cows_jax import (
  config,
  crf,
  host_pool,
  inference,
  parallel,
  preemption,
  progress,
  run_dir,
  visualize,
)
from cows_jax.data import sources

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def write_split(cfg, workdir: str, split: str, supervision: str = 'pseudo') -> str:
  """VOC-format index PNGs (<id>.png, original image sizes) of every image of `split`,
  after the CRF when evaluate.crf; returns their directory."""
  cfg = config.finalize(cfg)
  splits = sources.load_splits(cfg)
  if split not in splits:
    raise ValueError(
      f'--split={split!r} is not a split of dataset {cfg.data.name!r} (splits: {", ".join(splits)})'
    )
  crf_params = crf.Params.from_config(cfg.crf) if cfg.evaluate.crf else None
  if crf_params is not None:
    crf.check_available()
  probabilities = inference.load_predictor(cfg, workdir, supervision)
  source = splits[split]
  out = run_dir.RunDir(workdir).predictions(split, supervision)
  share = parallel.process_share(len(source))
  workers = host_pool.workers(cfg)
  with host_pool.HostPool(workers, 'predict-split', processes=crf_params is not None) as pool:
    write_labels((source[i] for i in share), len(share), probabilities, crf_params, out, pool)
  parallel.barrier('predict-split')
  logging.info(
    'predict-split: %d label maps of %r (%s) -> %s',
    len(source),
    split,
    'with CRF' if crf_params is not None else 'no CRF',
    out,
  )
  return str(out)


def write_labels(records, total: int, probabilities, crf_params, out, pool) -> None:
  """<id>.png (index PNG, after the CRF unless `crf_params` is None) in `out` for each of the
  `total` {'id', 'image'} records: the device call of a record on this thread, then its CRF in
  a worker process of `pool` (host_pool.HostPool) and its PNG encoded and written by a worker
  thread while the next records' device calls run. Returns when every file is written; a
  stop request stops after a written file (preemption)."""
  counter = progress.Progress('predict-split', total)
  for record in records:
    plain, refined = inference.label_maps_pooled(record['image'], probabilities, crf_params, pool)
    label = plain if refined is None else refined
    written = pool.thread(run_dir.save_label_png, out / f'{record["id"]}.png', label)
    pool.then(lambda _: counter.update(), written)
  pool.drain()
  counter.close()


def _write_prediction(directory, stem: str, image, label, overlay: bool) -> None:
  """<stem>.png (class indices) and, with `overlay`, <stem>_overlay.png."""
  run_dir.save_label_png(directory / f'{stem}.png', label)
  if overlay:
    blend = 0.5 * image + 0.5 * visualize.colorize(label)
    run_dir.save_png(directory / f'{stem}_overlay.png', blend.round().astype(np.uint8))


def image_files(paths: list[str], overlay: bool = False) -> list[epath.Path]:
  """The files named, and the image files (by suffix) of the directories named, sorted; an
  error when two would write the same output (with `overlay`, <name>_overlay.png too)."""
  out = []
  for p in map(epath.Path, paths):
    if p.is_dir():
      out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    elif p.exists():
      out.append(p)
    else:
      raise FileNotFoundError(f'{p} does not exist')
  stems = [f.stem for f in out] + ([f'{f.stem}_overlay' for f in out] if overlay else [])
  twice = sorted({s for s in stems if stems.count(s) > 1})
  if twice:
    raise ValueError(f'two inputs would write the same output: {", ".join(twice)}')
  return out


def read_image(path: epath.Path) -> np.ndarray | None:
  """uint8 RGB [H, W, 3], or None for a file that is not a readable image."""
  try:
    with Image.open(io.BytesIO(path.read_bytes())) as im:
      return np.asarray(im.convert('RGB'))
  except (UnidentifiedImageError, OSError, ValueError):
    return None


def image_size(path: epath.Path) -> tuple[int, int] | None:
  """(width, height) from the file's header, or None for a file that is not an image."""
  try:
    with path.open('rb') as f, Image.open(f) as im:
      return im.size
  except (UnidentifiedImageError, OSError, ValueError):
    return None


BATCH_IMAGES = 4  # images of one size per call of `probabilities` (cows-jax predict).


def write_files(
  probabilities,
  paths: list[str],
  out: str,
  overlay: bool = False,
  crf_params=None,
  batch: int = BATCH_IMAGES,
  workers: int = 1,
) -> dict:
  """A palette PNG of class indices per image (and an overlay PNG of its colours over the
  image) in `out`; files that are not readable images are skipped and counted. Returns
  {'written': n, 'skipped': [paths]}.

  `probabilities`: a list of uint8 images -> their probabilities [H, W, C] (an export's
  `tta.Export`, which runs images of one size in one call of the network). The files
  are grouped by image size (read from their headers), `batch` images of one size a call.
  With `workers` > 1 the CRFs run in that many worker processes and the PNGs are written by
  worker threads (host_pool.HostPool) while the next images go through the network; the
  files are the same either way."""
  if crf_params is not None:
    crf.check_available()
  files, directory, skipped = image_files(paths, overlay), run_dir.path(out), []
  counter = progress.Progress('predict', len(files))

  def skip(i):
    logging.warning('predict: %s is not a readable image, skipped', files[i])
    skipped.append(i)
    counter.update()

  same_size = {}
  for i, f in enumerate(files):
    size = image_size(f)
    if size is None:
      skip(i)
    else:
      same_size.setdefault(size, []).append(i)
  # One image in flight per worker: a photo's probabilities can take a gigabyte.
  processes = crf_params is not None
  with host_pool.HostPool(workers, 'predict', processes=processes, depth=workers) as pool:
    for indices in same_size.values():
      for start in range(0, len(indices), batch):
        read = [(i, read_image(files[i])) for i in indices[start : start + batch]]
        for i in [i for i, image in read if image is None]:
          skip(i)
        read = [(i, image) for i, image in read if image is not None]
        probs = probabilities([image for _, image in read]) if read else []
        for (i, image), p in zip(read, probs):
          plain, refined = inference.labels_pooled(image, p, crf_params, pool)
          written = pool.thread(
            _write_prediction,
            directory,
            files[i].stem,
            image,
            plain if refined is None else refined,
            overlay,
          )
          pool.then(lambda _: counter.update(), written)
        preemption.check('predict')
  counter.close()
  written = len(files) - len(skipped)
  logging.info('predict: %d label maps -> %s, %d files skipped', written, directory, len(skipped))
  return {'written': written, 'skipped': [str(files[i]) for i in sorted(skipped)]}
