"""`cows-jax bench localize-memory`: the peak memory of `localize.run` at several dataset sizes
(flat when it does not grow with the dataset)."""

import json
import os
import tempfile
import time

import jax
import numpy as np

from cows_jax import checkpoints, classify, config, localize, run_dir
from cows_jax.bench import common
from cows_jax.configs.defaults import paper_defaults
from cows_jax.data import sources
from cows_jax.models import from_config

HELP = 'peak memory of localize at dataset sizes'


def _memory_config(args, images: int, data_dir: str):
  cfg = paper_defaults()
  cfg.data.train_size, cfg.data.val_size, cfg.data.data_dir = images, 4, data_dir
  cfg.data.image_size = cfg.input.size = args.size
  cfg.data.num_classes, cfg.model.width = 10, args.width
  cfg.classify.epochs, cfg.localize.after_epochs, cfg.classify.lr_decay_epochs = 1, 1, ()
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
  return {'per_image': seconds / images, 'peak': common.peak_mib(None)}


def run(args) -> None:
  """Peak memory of `localize.run` at several dataset sizes: flat when it does not grow."""
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for n in args.images:
      common.isolated(_build, args, n, os.path.join(tmp, 'data'))
      r = common.isolated(
        _localize_run, args, n, os.path.join(tmp, 'data'), os.path.join(tmp, f'run{n}')
      )
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


def add_arguments(parser) -> None:
  parser.add_argument('--images', type=lambda t: [int(x) for x in t.split(',')], default=[200, 800])
  parser.add_argument('--size', type=int, default=64, help='square image size')
  parser.add_argument('--width', type=float, default=0.125, help='channel multiplier')
  parser.add_argument(
    '--feature_memory_mib', type=int, default=0, help='localize.feature_memory_mib (0: per batch)'
  )
