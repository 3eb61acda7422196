"""The parts world's gate (docs/ablation.md): the baseline CAM's part and body recall.

  python -m cows_jax.tools.parts_gate --workdir DIR [--config synthetic:parts] [KEY=VALUE ...]

Trains the classifier of `cows-jax ablate`'s variant 1 (single-image loss only) in
DIR/train/single, makes its CAMs (localize.method=cam) in DIR/baseline_cam, sweeps the
background threshold (evaluate.cam_thresholds) and, at the threshold of the best CAM mIoU,
reports the part recall and body recall (map_metrics.part_body_recall: means over the
classes). Both stages resume. The gate: part recall >= 0.8, body recall <= 0.3, best
threshold <= 0.5. Also reports `raw_cam_means` and `body_cam_by_distance` (`occlusion`):
whether the body's CAM comes from the body's pixels or from the part's, and how far from the
part's centre it reaches. Writes DIR/reports/parts_gate.json and prints it.
KEY=VALUE arguments override config fields (`data.data_dir=/tmp/data`).
"""

import argparse
import collections
import json
import os

import numpy as np
from absl import logging

from cows_jax import ablate, classify, config, localize, map_metrics, run_dir, validation
from cows_jax.data import sources, transforms
from cows_jax.imagenet_standin import train as standin_train

PART_RECALL_MIN, BODY_RECALL_MAX, THRESHOLD_MAX = 0.8, 0.3, 0.5
OCCLUSION_IMAGES = 200  # train images of the occlusion check


def paint_over_parts(image: np.ndarray, mask: np.ndarray, part_mask: np.ndarray) -> np.ndarray:
  """The image with each object's part painted in the median colour of the object's other
  pixels: the object as the classifier would see it without its part."""
  out = image.copy()
  for k in np.unique(part_mask[part_mask > 0]):
    body = (mask == k) & (part_mask != k)
    if body.any():
      out[part_mask == k] = np.median(image[body], axis=0).round().astype(np.uint8)
  return out


def occlusion(cfg, run: run_dir.RunDir, train, n: int = OCCLUSION_IMAGES) -> tuple[dict, list]:
  """Where a class's CAM over its body comes from, on the first `n` train images.

  (1) The mean raw class-k CAM (before the ReLU and the max normalization) over the map cells
  of k's part, of k's body and of the background, for the images as they are and with their
  parts painted over (`paint_over_parts`). A body CAM that falls with the part painted over
  is the part's evidence spread over the body through the receptive field, not the body's
  own. (2) How far it spreads: per distance from the part's centre (in map cells, rounded),
  the mean over body cells of CAM / the object's mean part CAM (objects whose part CAM is
  positive)."""
  model, variables, _ = localize.restore_classifier(cfg, run)
  computer = localize.MapComputer(model, variables)
  sums = {
    f'{region}{suffix}': []
    for region in ('part', 'body', 'background')
    for suffix in ('', '_painted')
  }
  ratios = collections.defaultdict(list)
  bs = cfg.localize.batch_size
  for start in range(0, min(n, len(train)), bs):
    records = [train[i] for i in range(start, min(start + bs, n, len(train)))]
    images = {
      '': [r['image'] for r in records],
      '_painted': [paint_over_parts(r['image'], r['mask'], r['part_mask']) for r in records],
    }
    cams = {}
    for suffix, batch in images.items():
      x = localize.input_batch([{'image': im} for im in batch], range(len(batch)), cfg)
      cams[suffix] = computer.cams(computer.features(x))  # [B, h, w, C]
    h, w = cams[''].shape[1:3]
    yy, xx = np.mgrid[:h, :w]
    for j, r in enumerate(records):
      part_cells = transforms.resize_label(r['part_mask'], (h, w))
      mask_cells = transforms.resize_label(r['mask'], (h, w))
      for k in np.unique(part_cells[part_cells > 0]):
        regions = {
          'part': part_cells == k,
          'body': (mask_cells == k) & (part_cells != k),
          'background': mask_cells == 0,
        }
        if not all(where.any() for where in regions.values()):
          continue
        for suffix, cam in cams.items():
          for region, where in regions.items():
            sums[region + suffix].append(float(cam[j, ..., k - 1][where].mean()))
        cam, part, body = cams[''][j, ..., k - 1], regions['part'], regions['body']
        part_mean = cam[part].mean()
        if part_mean <= 0:  # a part the classifier does not see: no scale to read.
          continue
        distance = np.hypot(yy - yy[part].mean(), xx - xx[part].mean()).round().astype(int)
        for d, value in zip(distance[body], cam[body] / part_mean):
          ratios[int(d)].append(value)
  means = {key: float(np.mean(v)) if v else None for key, v in sums.items()}  # None: no object
  means['objects'] = len(sums['part'])
  by_distance = [
    {'cells': d, 'body_over_part': float(np.mean(ratios[d])), 'body_cells': len(ratios[d])}
    for d in sorted(ratios)
  ]
  return means, by_distance


def _value(text: str):
  try:
    return json.loads(text)
  except ValueError:
    return text


def measure(cfg, workdir: str) -> dict:
  variant = ablate.VARIANTS[0]
  vcfg = ablate.variant_config(cfg, variant)
  train_dir = os.path.join(workdir, 'train', variant.training)
  classify.train(vcfg, train_dir)
  variant_dir = os.path.join(workdir, variant.slug)
  ablate._link_classifier(run_dir.RunDir(train_dir), run_dir.RunDir(variant_dir))
  localize.run(vcfg, variant_dir)
  run = run_dir.RunDir(variant_dir)
  train = sources.load(vcfg)['train']
  ids = [train[i]['id'] for i in range(len(train))]
  best_t, miou, curve, _ = map_metrics.evaluate_cams(vcfg, train, ids, run)
  recall = map_metrics.evaluate_part_recall(vcfg, train, ids, run)
  at_best = next(r for r in recall if r['threshold'] == best_t)
  result = {
    'cam_miou': miou,
    'best_bg_threshold': best_t,
    'part_recall': at_best['part_recall'],
    'body_recall': at_best['body_recall'],
    'part_recall_per_class': at_best['part_recall_per_class'],
    'body_recall_per_class': at_best['body_recall_per_class'],
    'sweep': [
      {'threshold': t, 'miou': m, 'part_recall': r['part_recall'], 'body_recall': r['body_recall']}
      for (t, m), r in zip(curve, recall)
    ],
  }
  result['raw_cam_means'], result['body_cam_by_distance'] = occlusion(vcfg, run, train)
  result['passed'] = bool(
    result['part_recall'] >= PART_RECALL_MIN
    and result['body_recall'] <= BODY_RECALL_MAX
    and best_t <= THRESHOLD_MAX
  )
  return result


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='synthetic:parts')
  parser.add_argument('--workdir', required=True)
  parser.add_argument('overrides', nargs='*', help='config KEY=VALUE')
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)  # the stages' progress lines, as the CLI shows them.
  c = config.load(args.config)
  try:
    config.set_fields(c, [(k, _value(v)) for k, _, v in (o.partition('=') for o in args.overrides)])
  except ValueError as e:
    parser.error(f'config: {e}')
  # As `cows-jax ablate`: the config's problems before anything runs, then the stand-in
  # backbone it names, made if missing.
  found = validation.problems(c, 'ablate')
  if found:
    parser.error('config: ' + '; '.join(found))
  standin_train.make_if_missing(c)
  result = measure(config.finalize(c), args.workdir)
  out = run_dir.RunDir(args.workdir).reports()
  out.mkdir(parents=True, exist_ok=True)
  run_dir.write_json(out / 'parts_gate.json', result)
  tables = ('sweep', 'body_cam_by_distance')
  print(json.dumps({k: v for k, v in result.items() if k not in tables}, indent=1))
  for row in result['sweep']:
    print(
      f'{row["threshold"]:.2f}  mIoU {row["miou"]:5.1f}  part {row["part_recall"]:.3f}  '
      f'body {row["body_recall"]:.3f}'
    )
  print("body CAM / part CAM by distance from the part's centre (map cells):")
  for row in result['body_cam_by_distance']:
    print(f'{row["cells"]:3d}  {row["body_over_part"]:6.2f}  ({row["body_cells"]} cells)')
  return result


if __name__ == '__main__':
  main()
