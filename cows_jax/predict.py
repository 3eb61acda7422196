"""`cows-jax predict-split`: the segmenter's label maps of a whole split as VOC-format PNGs
(palette PNGs of class indices, the evaluation server's format) in WORKDIR/predictions/SPLIT/,
after the dense CRF when evaluate.crf is set."""

from absl import logging

from cows_jax import config, crf, inference, run_dir
from cows_jax.data import sources


def write_split(cfg, workdir: str, split: str, supervision: str = 'pseudo') -> str:
  """VOC-format index PNGs (<id>.png, original image sizes) of every image of `split`,
  after the CRF when evaluate.crf; returns their directory."""
  cfg = config.finalize(cfg)
  splits = sources.load_splits(cfg)
  if split not in splits:
    raise ValueError(
      f'--split={split!r} is not a split of dataset {cfg.data.name!r} (splits: {", ".join(splits)})'
    )
  crf_params = cfg.crf if cfg.evaluate.crf else None
  if crf_params is not None:
    crf.check_available()
  probabilities = inference.load_predictor(cfg, workdir, supervision)
  source = splits[split]
  out = run_dir.RunDir(workdir).predictions(split, supervision)
  for i in range(len(source)):
    record = source[i]
    plain, refined = inference.label_maps(record['image'], probabilities, crf_params)
    run_dir.save_label_png(out / f'{record["id"]}.png', plain if refined is None else refined)
  logging.info(
    'predict-split: %d label maps of %r (%s) -> %s',
    len(source),
    split,
    'with CRF' if crf_params is not None else 'no CRF',
    out,
  )
  return str(out)
