"""`cows-jax bench export`: the size, export and load seconds of the exported segmenter for each
platform, and its first call on this machine's."""

import json
import time

import jax
import numpy as np
from jax import export as jax_export

from cows_jax import export, tta
from cows_jax.bench import common
from cows_jax.configs.defaults import paper_defaults
from cows_jax.models import from_config, random_init

HELP = 'size and load time of the exported segmenter'


def export_one(args, platform: str) -> dict:
  """Export the segmenter for one platform; size, export and load (deserialize) seconds, and
  the first call on this machine's platform."""
  cfg = paper_defaults()
  cfg.data.num_classes, cfg.model.width = args.classes, args.width
  cfg.segment.backbone, cfg.segment.head = args.backbone, args.head
  model = from_config.segmenter(cfg)
  variables = random_init.segmenter_variables(model, args.size, 0)
  start = time.perf_counter()
  data = export.segmenter_function(model, variables, True, True, (platform,)).serialize()
  export_s = time.perf_counter() - start
  start = time.perf_counter()
  loaded = jax_export.deserialize(bytearray(data))
  out = {'mib': len(data) / 2**20, 'export_s': export_s, 'load_s': time.perf_counter() - start}
  if platform == tta.machine_platform():  # jax.default_backend() 'gpu' is 'cuda'.
    x = np.zeros((1, args.size, args.size, 3), np.float32)
    start = time.perf_counter()
    jax.block_until_ready(loaded.call(x))
    out['first_call_s'] = time.perf_counter() - start
  return out


def run(args) -> None:
  rows = [(p, common.isolated(export_one, args, p)) for p in export.parse_platforms(args.platforms)]
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


def add_arguments(parser) -> None:
  parser.add_argument('--backbone', choices=('resnet101', 'vgg16'), default='resnet101')
  parser.add_argument('--head', choices=('largefov', 'aspp'), default='largefov')
  parser.add_argument('--platforms', default='cpu,cuda,tpu', help='comma list, one export each')
  common.add_size(parser)
  common.add_model(parser)
