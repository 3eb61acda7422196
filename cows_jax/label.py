"""Stage 2b: pseudo labels from localization maps (+ saliency), written as PNGs.

WORKDIR/pseudo_labels/index/<id>.png holds class indices (0 bg, k+1 class k, 255 ignore),
WORKDIR/pseudo_labels/palette/<id>.png the same with the VOC palette for viewing.
Existing labels are kept (resume); each process labels its share of the images; index.json,
written by process 0 after every process is done, marks the stage complete.
"""

from absl import logging

from cows_jax import config, host_pool, map_metrics, parallel, progress, pseudo_labels, run_dir
from cows_jax.data import sources


def rules(cfg, fg_threshold=None, bg_threshold=None) -> pseudo_labels.LabelRules:
  """The config's rules; the saliency-free thresholds may come from the CAM sweep."""
  c = cfg.label
  return pseudo_labels.LabelRules(
    score_threshold=c.score_threshold,
    conflict_threshold=c.conflict_threshold,
    bg_saliency_ignore=c.bg_saliency_ignore,
    fg_confident=c.fg_confident,
    min_fg_fraction=c.min_fg_fraction,
    fg_threshold=c.fg_threshold if fg_threshold is None else fg_threshold,
    bg_threshold=c.bg_threshold if bg_threshold is None else bg_threshold,
    ignore_index=cfg.segment.ignore_index,
  )


def saliency_free_rules(cfg, train, ids, run: run_dir.RunDir) -> pseudo_labels.LabelRules:
  """label.thresholds='cam_sweep': the object threshold is the best background threshold of
  the CAM sweep on the split's masks (how peers choose a CAM threshold), the background one
  label.sweep_band below it; 'fixed', or a split without masks: label.fg/bg_threshold."""
  if cfg.label.thresholds == 'cam_sweep' and len(train) and train[0]['mask'].size:
    best = map_metrics.evaluate_cams(cfg, train, ids, run)[0]
    fg, bg = best, max(best - cfg.label.sweep_band, 0.0)
    logging.info('label: thresholds from the CAM sweep: object >= %.2f, background < %.2f', fg, bg)
    return rules(cfg, fg, bg)
  if cfg.label.thresholds == 'cam_sweep':
    logging.warning(
      'label: the train split has no masks for the CAM sweep; fixed thresholds %.2f / %.2f',
      cfg.label.fg_threshold,
      cfg.label.bg_threshold,
    )
  return rules(cfg)


def make_label(maps, classes, saliency, cfg, label_rules: pseudo_labels.LabelRules):
  """One image's pseudo label in the configured mode."""
  if cfg.label.use_saliency:
    return pseudo_labels.pseudo_label_with_saliency(maps, classes, saliency, label_rules)
  return pseudo_labels.pseudo_label_without_saliency(maps, classes, label_rules)


def run(cfg, workdir: str) -> None:
  cfg = config.finalize(cfg)
  run = run_dir.RunDir(workdir)
  if run_dir.complete(run.labels_index(), run.label_file, run_dir.label_readable, 'label'):
    return
  ids = run_dir.read_json(run.maps_index(), 'localize')['ids']
  train = sources.load(cfg)['train']
  if len(ids) != len(train):
    raise ValueError(
      f'{run.maps_index()} lists {len(ids)} images but the train '
      f'split has {len(train)}; rerun `cows-jax localize` in a fresh workdir'
    )
  share = [
    i
    for i in parallel.process_share(len(ids))
    if not (
      run_dir.label_readable(run.label_file(ids[i]))
      and run_dir.label_readable(run.label_file(ids[i], 'palette'))
    )
  ]
  label_rules = rules(cfg) if cfg.label.use_saliency else saliency_free_rules(cfg, train, ids, run)
  all_ignore = 0
  counter = progress.Progress('label', len(share))
  # Both PNGs of an image are encoded and written by host_workers threads while this thread
  # makes the next labels (host_pool); an image is done, and a stop may come, once both are.
  with host_pool.HostPool(host_pool.workers(cfg), 'label', processes=False) as pool:
    for i in share:
      image_id = ids[i]
      maps, classes = run_dir.load_maps(run.map_file(image_id))
      saliency = train[i]['saliency']
      if cfg.label.use_saliency and not saliency.size:
        raise ValueError(
          f'label: image {image_id} has no saliency map; give the maps with '
          '--config.data.saliency_dir=DIR (<id>.png) or use the saliency-free '
          'mode with --config.label.use_saliency=False'
        )
      label = make_label(maps, classes, saliency, cfg, label_rules)
      all_ignore += int((label == cfg.segment.ignore_index).all())
      palette = pool.thread(
        run_dir.save_label_png, run.label_file(image_id, 'palette'), label, True
      )
      index = pool.thread(run_dir.save_label_png, run.label_file(image_id), label, False)
      pool.then(lambda *_: counter.update(), palette, index)
  counter.close()
  written = counter.done
  logging.info(
    'label: wrote %d pseudo labels (%d all-ignore: too little foreground), mode=%s',
    written,
    all_ignore,
    'saliency' if cfg.label.use_saliency else 'confident map regions',
  )
  if written and all_ignore == written:
    logging.warning(
      'label: every pseudo label is all-ignore, so the segmenter gets no '
      'supervision; the classifier is too weak (train longer) or the '
      'thresholds in config.label are too strict'
    )
  parallel.barrier('label')
  if parallel.is_writer():
    run_dir.write_json(
      run.labels_index(),
      {
        'ids': ids,
        'use_saliency': cfg.label.use_saliency,
        'fg_threshold': label_rules.fg_threshold,
        'bg_threshold': label_rules.bg_threshold,
      },
    )
  parallel.barrier('label: marker')
