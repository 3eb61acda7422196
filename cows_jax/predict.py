"""The segmenter's label maps for a whole split: test-time inference (inference.py), then the
dense CRF when evaluate.crf is set; `cows-jax predict-split` writes them as VOC-format PNGs
(palette PNGs of class indices, the evaluation server's format) to WORKDIR/predictions/SPLIT/.
"""

import os

import numpy as np
from absl import logging

from cows_jax import crf, segment, visualize
from cows_jax.data import sources


def predictions_dir(workdir: str, split: str, supervision: str = 'pseudo') -> str:
  name = split if supervision == 'pseudo' else f'{split}_{supervision}'
  return os.path.join(workdir, 'predictions', name)


def label_maps(image: np.ndarray, probabilities, crf_params=None):
  """(argmax label map, argmax after the dense CRF or None), uint8 [H, W]."""
  p = probabilities(image)
  plain = np.argmax(p, -1).astype(np.uint8)
  if crf_params is None:
    return plain, None
  return plain, np.argmax(crf.refine(image, p, crf_params), -1).astype(np.uint8)


def predict_source(source, probabilities, crf_params=None):
  """([label map per record], [after the CRF per record] or None)."""
  pairs = [label_maps(source[i]['image'], probabilities, crf_params) for i in range(len(source))]
  plain = [p for p, _ in pairs]
  return plain, (None if crf_params is None else [r for _, r in pairs])


def write_split(cfg, workdir: str, split: str, supervision: str = 'pseudo') -> str:
  """VOC-format index PNGs (<id>.png, original image sizes) of every image of `split`,
  after the CRF when evaluate.crf; returns their directory."""
  splits = sources.load_splits(cfg)
  if split not in splits:
    raise ValueError(
      f'--split={split!r} is not a split of dataset {cfg.data.name!r} (splits: {", ".join(splits)})'
    )
  crf_params = cfg.crf if cfg.evaluate.crf else None
  if crf_params is not None:
    crf.check_available()
  probabilities = segment.load_predictor(cfg, workdir, supervision)
  source, out = splits[split], predictions_dir(workdir, split, supervision)
  for i in range(len(source)):
    record = source[i]
    plain, refined = label_maps(record['image'], probabilities, crf_params)
    visualize.save_label_png(
      os.path.join(out, f'{record["id"]}.png'), plain if refined is None else refined
    )
  logging.info(
    'predict-split: %d label maps of %r (%s) -> %s',
    len(source),
    split,
    'with CRF' if crf_params is not None else 'no CRF',
    out,
  )
  return out
