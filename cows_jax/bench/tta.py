"""`cows-jax bench test-time`: the segmenter's test-time procedure with the stitching, the
resize back and the average in numpy on the host (tta.predict, what exports run)
against the same on the device (inference.predict_on_device, the in-process predictor), in
one process, image by image back to back on the same network and random VOC-sized images.
"""

import argparse
import functools
import json
import time

import jax
import numpy as np

from cows_jax import inference, tta
from cows_jax.bench import common
from cows_jax.models import from_config, random_init

HELP = 'test time with stitching/resizes on the host vs the device'


def random_segmenter(args, cfg):
  """(the test-time settings, the probabilities function of the windows) of a random
  segmenter with the arguments' --stages: bench test-time and evaluate."""
  settings = inference.Settings.from_config(cfg)
  stages = tuple(int(x) for x in args.stages.split(','))
  model = from_config.segmenter(cfg).clone(resnet_stages=stages)
  variables = jax.device_put(random_init.segmenter_variables(model, 64, 0))
  probs = inference.window_probabilities(
    model, settings.flip_windows, cfg.segment.upsample_align_corners
  )
  return settings, functools.partial(probs, variables)


def run(args) -> dict:
  cfg = common.test_time_config(args)
  settings, probs_fn = random_segmenter(args, cfg)
  w, h = (int(x) for x in args.image.lower().split('x'))
  images = np.random.default_rng(0).integers(0, 256, (args.images + 1, h, w, 3), np.uint8)
  procedures = {
    'host (tta.predict)': tta.predict,
    'device (inference.predict_on_device)': inference.predict_on_device,
  }
  kwargs = dict(mean=cfg.segment.mean, std=cfg.segment.std, **settings.predict_kwargs())
  first, seconds, outputs = {}, {k: 0.0 for k in procedures}, {}
  for name, fn in procedures.items():  # the first image: compiles.
    start = time.perf_counter()
    outputs[name] = fn(images[0], probs_fn, **kwargs)
    first[name] = time.perf_counter() - start
  diff = float(np.abs(np.subtract(*outputs.values())).max())
  for image in images[1:]:  # back to back, image by image.
    for name, fn in procedures.items():
      start = time.perf_counter()
      fn(image, probs_fn, **kwargs)
      seconds[name] += time.perf_counter() - start
  rows = {
    name: {'s_per_image': seconds[name] / args.images, 'first_s': first[name]}
    for name in procedures
  }
  i = cfg.inference
  print(
    f'bench test-time: {args.backbone}-{args.head} (stages {args.stages}), width {args.width}, '
    f'{args.classes + 1} classes; images of {args.image} (w x h), scales '
    f'{"/".join(map(str, i.scales))}, flip {i.flip}, window {i.window or "none"}; '
    f'{args.images} timed images each, alternating; device {jax.devices()[0]}'
  )
  width = max(map(len, rows))
  print(f'{"":{width}}  {"s/image":>8}  {"images/s":>8}  {"first call s":>12}')
  for name, r in rows.items():
    print(
      f'{name:{width}}  {r["s_per_image"]:8.3f}  {1 / r["s_per_image"]:8.3f}  {r["first_s"]:12.1f}'
    )
  host, device = (r['s_per_image'] for r in rows.values())
  print(f'host / device: {host / device:.2f}x; largest difference of the probabilities: {diff:.1e}')
  out = {'bench': 'test-time', 'args': vars(args), 'rows': rows, 'max_abs_diff': diff}
  print(json.dumps(out))
  return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--backbone', choices=('resnet101', 'vgg16'), default='resnet101')
  parser.add_argument('--head', choices=('largefov', 'aspp'), default='largefov')
  parser.add_argument('--stages', default='3,4,23,3', help='ResNet blocks per stage')
  parser.add_argument('--width', type=float, default=1.0, help='channel multiplier (1.0: paper)')
  parser.add_argument('--classes', type=int, default=20, help='number of (object) classes')
  parser.add_argument('--images', type=int, default=2, help='timed images (after a first one)')
  parser.add_argument('--image', default='500x375', help='image size, width x height')
  parser.add_argument('--window', type=int, default=None, help='inference.window (default 401)')
  parser.add_argument('--scales', default='', help='comma list (default the paper: 0.5,...,1.5)')


def main(argv) -> int:
  parser = argparse.ArgumentParser(
    prog='cows-jax bench test-time', description=__doc__.split('\n')[0]
  )
  add_arguments(parser)
  run(parser.parse_args(argv))
  return 0


if __name__ == '__main__':
  import sys

  raise SystemExit(main(sys.argv[1:]))
