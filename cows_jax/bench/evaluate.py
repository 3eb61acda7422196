"""`cows-jax bench evaluate`: images/s of the segmenter's predictions with the dense CRF and
their PNGs, serial (host_workers=1) against overlapped (the CRF in worker processes and the
PNG writes in threads while the device predicts the next images; host_pool), for the host
part alone and end to end, through the code `evaluate` and `predict-split` run
(`predict.write_labels`).

The images are photo-like random colour fields of one VOC size (the CRF's bilateral filter
costs more on pure noise than on photos); the segmenter is randomly initialised. The rows run
in one process on the same images: the segmenter alone (its probabilities are kept), then
`--rounds` times in turn the CRF and the PNGs on those probabilities (serial, overlapped)
and everything (serial, overlapped); each row shows its fastest round (other jobs on the
machine slow some rounds). Every run must write the same files, byte for byte.
"""

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np

from cows_jax import crf, host_pool, inference, predict, run_dir
from cows_jax.bench import common, tta

HELP = 'images/s of the CRF and PNG writes: serial vs overlapped'


def _predictor(args, cfg):
  """The in-process predictor (inference.load_predictor's function) of a random segmenter."""
  settings, probs_fn = tta.random_segmenter(args, cfg)
  kwargs = dict(mean=cfg.segment.mean, std=cfg.segment.std, **settings.predict_kwargs())
  return lambda image: inference.predict_on_device(image, probs_fn, **kwargs)


def _images(args) -> list[np.ndarray]:
  w, h = (int(x) for x in args.image.lower().split('x'))
  rng = np.random.default_rng(0)
  return [common.photo(rng, h, w) for _ in range(args.images)]


def _timed_writes(images, probabilities, params, workers: int, out: str) -> tuple[float, dict]:
  """Seconds of predict.write_labels over `images` (its pool opened and its workers started
  before the clock starts), and the files it wrote."""
  records = [{'id': f'{k:04d}', 'image': image} for k, image in enumerate(images)]
  with host_pool.HostPool(workers, 'bench evaluate') as pool:
    # Every worker started and its imports done: one CRF on a small image each.
    small = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 2), 0.5, np.float32)
    for f in [pool.process(crf.labels, *small, params) for _ in range(pool.workers)]:
      f.result()
    start = time.perf_counter()
    predict.write_labels(records, len(records), probabilities, params, run_dir.path(out), pool)
    seconds = time.perf_counter() - start
  files = {}
  for name in sorted(os.listdir(out)):
    with open(os.path.join(out, name), 'rb') as f:
      files[name] = f.read()
  return seconds, files


def run(args) -> dict:
  crf.check_available()
  cfg = common.test_time_config(args)
  params = crf.Params.from_config(cfg.crf)
  workers = args.workers or host_pool.cores()
  images = _images(args)
  predictor = _predictor(args, cfg)
  start = time.perf_counter()
  predictor(images[0])  # compiles.
  first = time.perf_counter() - start
  start = time.perf_counter()
  kept = {id(image): predictor(image) for image in images}
  rows, outputs = {'device only (the segmenter)': time.perf_counter() - start}, []
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):  # serial and overlapped in turn; the fastest of the rounds.
      for part, probabilities in (
        ('CRF + PNG', lambda image: kept[id(image)]),
        ('end to end', predictor),
      ):
        for n in (1, workers):
          name = f'{part}, {"serial (host_workers=1)" if n == 1 else f"host_workers={n}"}'
          out = os.path.join(tmp, f'{r}_{name.replace(" ", "_")}')
          seconds, files = _timed_writes(images, probabilities, params, n, out)
          rows[name] = min(rows.get(name, seconds), seconds)
          outputs.append(files)
  same = all(files == outputs[0] for files in outputs)
  per_image = {name: seconds / len(images) for name, seconds in rows.items()}
  names = list(per_image)
  speedups = {
    'CRF + PNG': per_image[names[1]] / per_image[names[2]],
    'end to end': per_image[names[3]] / per_image[names[4]],
  }
  i = cfg.inference
  print(
    f'bench evaluate: {len(images)} photo-like images of {args.image} (w x h), '
    f'{args.classes + 1} classes; segmenter {args.backbone}-{args.head} (stages {args.stages}), '
    f'width {args.width}, random weights, scales {"/".join(map(str, i.scales))}, flip {i.flip}, '
    f'window {i.window or "none"} (first call {first:.1f} s); dense CRF of the paper '
    f'({params.iterations} iteration); {host_pool.cores()} cores; device {jax.devices()[0]}'
  )
  width = max(map(len, per_image))
  print(f'{"":{width}}  {"s/image":>8}  {"images/s":>8}  {"speedup":>7}')
  for k, (name, seconds) in enumerate(per_image.items()):
    speedup = '' if k in (0, 1, 3) else f'{speedups[name.split(",")[0]]:.2f}x'
    print(f'{name:{width}}  {seconds:8.3f}  {1 / seconds:8.3f}  {speedup:>7}')
  print(
    f'fastest of {args.rounds} rounds; the {len(outputs)} runs wrote the same {len(images)} '
    f'PNGs, byte for byte: {"yes" if same else "NO"}'
  )
  report = {
    'bench': 'evaluate',
    'args': {k: v for k, v in vars(args).items() if k != 'json'},
    'cores': host_pool.cores(),
    'host_workers': workers,
    'device': str(jax.devices()[0]),
    'first_call_s': first,
    'rows': [{'name': n, 's_per_image': s, 'images_per_s': 1 / s} for n, s in per_image.items()],
    'speedups': speedups,
    'byte_identical': same,
  }
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=2)
      f.write('\n')
  if not same:
    raise SystemExit('bench evaluate: the overlapped runs wrote other files than the serial ones')
  return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
  tta.add_arguments(parser)  # the segmenter, its test time, --image, --images.
  parser.set_defaults(images=8)
  parser.add_argument('--rounds', type=int, default=2, help='serial and overlapped in turn')
  parser.add_argument(
    '--workers', type=int, default=0, help='host_workers of the overlapped rows (0: every core)'
  )
  parser.add_argument('--json', default='', help='also write the table to this JSON file')
