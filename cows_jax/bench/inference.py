"""`cows-jax bench inference`: images/s of the segmenter's test-time procedure
(tta.predict around inference.window_probabilities, as inference.load_predictor runs it)
on random VOC-sized images."""

import time

import jax
import numpy as np

from cows_jax import inference, tta
from cows_jax.bench import common
from cows_jax.models import random_init

HELP = "images/s of the segmenter's test-time procedure"


def inference_config(args):
  return common.with_inference_args(common.segmenter_config(args), args)


def measure(args) -> dict:
  """The segmenter's test-time procedure (tta.predict around
  inference.window_probabilities, as inference.load_predictor runs it) on random VOC-sized
  images: scales, mirror, windows, softmax averaged, resized back."""
  cfg = inference_config(args)
  settings = inference.Settings.from_config(cfg)
  model = common.segmenter(args, cfg)
  variables = jax.device_put(random_init.segmenter_variables(model, 64, 0))
  probs = inference.window_probabilities(
    model, settings.flip_windows, cfg.segment.upsample_align_corners
  )
  batched = inference.window_probabilities(
    model, settings.flip_windows, cfg.segment.upsample_align_corners, one_at_a_time=False
  )
  counter = common.FlopCounter()
  counted = counter.wrap(probs, count_as=batched)
  h, w = common.image_size(args.image)
  images = np.random.default_rng(0).integers(0, 256, (args.images + 1, h, w, 3), np.uint8)

  def predict(image):
    return tta.predict(
      image,
      lambda x: counted(variables, x),
      mean=cfg.segment.mean,
      std=cfg.segment.std,
      **settings.predict_kwargs(),
    )

  start = time.perf_counter()
  predict(images[0])
  first = time.perf_counter() - start
  counter.take()
  start = time.perf_counter()
  for image in images[1:]:
    predict(image)
  seconds = (time.perf_counter() - start) / args.images
  flops = counter.take()
  return {
    'first': first,
    'seconds': seconds,
    'flops': None if flops is None else flops / args.images,
    **common.jax_device(args.dtype),
  }


def run(args) -> None:
  cfg = inference_config(args)
  i = cfg.inference
  rows = [('jax, tta.predict', common.isolated(measure, args))]
  title = (
    f'bench inference: {args.backbone}-{args.head} (stages {args.stages}), width '
    f'{args.width}, {args.classes + 1} classes, {args.dtype}; images of {args.image} (w x h), '
    f'scales {"/".join(map(str, i.scales))}, flip {i.flip}, window {i.window or "none"}; '
    f'{args.images} timed images'
  )
  common.report(args, title, rows, 's/image', 'images', 1)


def add_arguments(parser) -> None:
  parser.add_argument('--images', type=int, default=2, help='timed images (after a first one)')
  parser.add_argument('--image', default='500x375', help='image size, width x height')
  parser.add_argument('--window', type=int, default=None, help='inference.window (default 401)')
  parser.add_argument('--scales', default='', help='comma list (default the paper: 0.5,...,1.5)')
  common.add_segmenter(parser)
  common.add_model(parser)
  common.add_dtype_and_json(parser)
