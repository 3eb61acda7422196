"""`cows-jax data check --config FILE`: build the configured data, say what the stages will see.

Prints images per split and per class, labels per image, the files the build skipped and
why, saliency coverage and mask values; returns 1 when something needs the user's attention
(skipped files, a class without training images, missing saliency in the saliency mode, an
evaluation split without masks), else 0. Whole splits: data.max_per_split and
data.image_size do not apply here.
"""

import collections

import numpy as np

from cows_jax.data import records, sources

SAMPLE = 2000  # records per split decoded for the mask and saliency statistics
MAX_LISTED = 10  # skipped files listed per split


def _sample(n: int) -> np.ndarray:
  return np.unique(np.linspace(0, n - 1, min(n, SAMPLE)).round().astype(int))


def split_summary(source) -> dict:
  """Counts from the labels (all records) and from decoded masks/saliency (a sample)."""
  labels = records.all_labels(source)
  metadata = getattr(source, 'metadata', {})
  values, no_saliency, no_mask = np.zeros(256, np.int64), 0, 0
  sample = _sample(len(source))
  for i in sample:
    record = source[int(i)]
    values += np.bincount(record['mask'].ravel(), minlength=256)
    no_saliency += int(record['saliency'].size == 0)
    no_mask += int((record['mask'] == records.IGNORE_INDEX).all())
  return {
    'images': len(source),
    'per_class': labels.sum(0),
    'labels_per_image': collections.Counter(labels.sum(1).tolist()),
    'skipped': metadata.get('skipped', []),
    'no_saliency': max(
      metadata.get('no_saliency', 0), round(no_saliency * len(source) / len(sample))
    ),
    'no_mask': round(no_mask * len(source) / len(sample)),
    'mask_values': values,
    'sampled': len(sample),
  }


ROLES = {
  'classify_split': 'classifier',
  'train_split': 'maps, pseudo labels, segmenter',
  'eval_split': 'evaluation',
}


def problems(cfg, summaries: dict) -> list[str]:
  """What makes the check fail, one line each."""
  out = []
  for name, s in summaries.items():
    if s['skipped']:
      listed = '; '.join(f'{path}: {reason}' for _, path, reason in s['skipped'][:MAX_LISTED])
      out.append(f'{name}: {len(s["skipped"])} image(s) skipped by the build: {listed}')
  d = cfg.data
  names = sources.class_names(cfg)
  empty = [names[c] for c in np.flatnonzero(summaries[d.classify_split]['per_class'] == 0)]
  if empty:
    out.append(f'{d.classify_split}: no training image of class(es) {", ".join(empty)}')
  missing = summaries[d.train_split]['no_saliency']
  if cfg.label.use_saliency and missing:
    out.append(
      f'{d.train_split}: ~{missing} image(s) without a saliency map but '
      'label.use_saliency=True (set data.saliency_dir, or label.use_saliency=False '
      'for the saliency-free mode)'
    )
  unmasked = summaries[d.eval_split]['no_mask']
  if unmasked:
    out.append(
      f'{d.eval_split}: ~{unmasked} image(s) without a ground-truth mask (nothing to '
      'evaluate against)'
    )
  return out


def _histogram(counter: collections.Counter) -> str:
  return ', '.join(f'{k}: {counter[k]}' for k in sorted(counter))


def _mask_values(values: np.ndarray) -> str:
  total = values.sum()
  return ', '.join(f'{v}: {100 * values[v] / total:.1f}%' for v in np.flatnonzero(values))


def report(cfg, summaries: dict, found: list[str]) -> str:
  names = sources.class_names(cfg)
  lines = [
    f'dataset {cfg.data.name}: {len(names)} classes',
    'stages: ' + '; '.join(f'{role} <- {cfg.data[field]}' for field, role in ROLES.items()),
    '',
    f'{"split":<16}{"images":>8}{"skipped":>9}{"no saliency":>13}{"no mask":>9}  labels per image',
  ]
  for name, s in summaries.items():
    lines.append(
      f'{name:<16}{s["images"]:>8}{len(s["skipped"]):>9}{s["no_saliency"]:>13}'
      f'{s["no_mask"]:>9}  {_histogram(s["labels_per_image"])}'
    )
  for name in summaries:
    if name == cfg.data.classify_split or name.startswith('extra'):
      lines.append(
        f'\nimages per class ({name}): '
        + ', '.join(f'{n} {int(k)}' for n, k in zip(names, summaries[name]['per_class']))
      )
  lines.append('')
  for name, s in summaries.items():
    lines.append(f'mask values ({name}, {s["sampled"]} images): {_mask_values(s["mask_values"])}')
  lines += ['', 'problems:', *(f'  - {p}' for p in found)] if found else ['', 'no problems found']
  return '\n'.join(lines)


def run(cfg) -> int:
  """Builds what the config names, prints the report; 1 if there are problems."""
  splits = sources.load_splits(cfg)
  for field in ROLES:
    sources.split(cfg, splits, field)  # a configured split that does not exist is an error
  summaries = {name: split_summary(source) for name, source in splits.items()}
  extra = sources.load_extra(cfg)
  if extra:
    summaries[f'extra ({cfg.data.extra.layout})'] = split_summary(extra['train'])
  found = problems(cfg, summaries)
  print(report(cfg, summaries, found))
  return 1 if found else 0
