"""The ablation's variants really differ in what the issue says, and only in that."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cows_jax import ablate, classify, config
from cows_jax.models import from_config


def test_variants_change_only_their_axis(tiny_config):
  slugs = [v.slug for v in ablate.VARIANTS]
  assert slugs == [
    'baseline_cam',
    'baseline_views',
    'coattention_loss',
    'contrastive_loss',
    'full_views',
    'full_method',
    'related_only',
  ]
  cfgs = [ablate.variant_config(tiny_config, v) for v in ablate.VARIANTS]
  c = [x.classify for x in cfgs]
  assert [x.loss_weight_coattention for x in c] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
  assert [x.loss_weight_contrastive for x in c] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
  methods = [x.localize.method for x in cfgs]
  assert methods == ['cam', 'cam_views', 'cam', 'cam', 'cam_views', 'coattention', 'coattention']
  views = [x.localize.self_views for x in cfgs]
  assert views[-1] == () and all(v == tiny_config.localize.self_views for v in views[:-1])
  # The controls share their classifier with the variant they control for.
  trainings = [v.training for v in ablate.VARIANTS]
  assert trainings == ['single', 'single', 'coattention', 'full', 'full', 'full', 'full']
  # Everything else equals the base config.
  varied = {f for v in ablate.VARIANTS for f, _ in v.overrides}

  def rest(cfg):
    d = cfg.to_dict()
    for field in varied:
      section, name = field.split('.')
      del d[section][name]
    return d

  assert all(rest(x) == rest(tiny_config) for x in cfgs)
  assert tiny_config.localize.method == 'coattention'  # the input is left alone.


def test_baseline_trains_no_coattention_layer(tiny_config):
  """With the co-attention and contrastive weights at 0 the co-attention layers get no
  gradient: variant 1 is a plain single-image classifier."""
  overrides = ablate.VARIANTS[0].overrides + (('model.norm', 'none'), ('input.size', 32))
  cfg = config.with_overrides(tiny_config, overrides)
  model = from_config.classifier(cfg)
  params = from_config.init_variables(model, cfg, jax.random.key(0))['params']
  rng = np.random.default_rng(0)
  size = cfg.input.size
  batch = {
    'image_m': rng.normal(size=(2, size, size, 3)).astype(np.float32),
    'image_n': rng.normal(size=(2, size, size, 3)).astype(np.float32),
    'labels_m': np.eye(cfg.data.num_classes, dtype=np.float32)[[0, 1]],
    'labels_n': np.eye(cfg.data.num_classes, dtype=np.float32)[[0, 2]],
  }
  grads = jax.grad(
    lambda p: classify.loss_fn(
      p,
      {},
      batch,
      jnp.asarray(True),
      model=model,
      weights=classify.loss_weights(cfg),
      self_views=('flip',),
    )[0]
  )(params)
  for name in ('co_weight', 'co_classifier', 'gate'):
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads[name])), name
  assert np.any(grads['classifier']['kernel'] != 0)


def test_markdown_table_rows():
  rows = [{'variant': 'a', 'cam_miou': 12.345, 'pseudo_label_miou': 20.0, 'cam_bg_threshold': 0.3}]
  table = ablate.markdown_table(rows)
  assert table.splitlines()[2] == '| a | 12.3 | 20.0 | 0.30 |'
  assert 'edge' not in table
  rows[0]['cam_bg_threshold_at_edge'] = True
  table = ablate.markdown_table(rows)
  assert table.splitlines()[2] == '| a | 12.3 | 20.0 | 0.30 (edge) |'
  assert 'may be higher' in table


def test_ablate_on_the_parts_world_reports_every_variant_with_its_recalls(tmp_path):
  """synthetic:parts,tiny through `ablate` with the real stages: every variant and control has
  a row, and each row its part and body recall (the dataset has part masks)."""
  from cows_jax import run_dir, stages

  c = config.load('synthetic:parts,tiny')
  c.data.data_dir = str(tmp_path / 'data')
  c.classify.epochs, c.classify.lr_decay_epochs, c.localize.after_epochs = 1, (), 1
  rows = ablate.run(config.finalize(c), str(tmp_path / 'ablate'), stages.STAGES)
  assert [r['slug'] for r in rows] == [v.slug for v in ablate.VARIANTS]
  for r in rows:
    assert 0 <= r['part_recall'] <= 100 and 0 <= r['body_recall'] <= 100, r
  table = (run_dir.RunDir(str(tmp_path / 'ablate')).reports() / 'ablation.md').read_text()
  assert '| part recall % | body recall % |' in table.splitlines()[0]
  assert len(table.splitlines()) >= 2 + len(rows)


def _seed_rows(values: dict) -> list[dict]:
  """`run` rows of one seed: {slug: cam_miou}, the other measures derived from it."""
  return [
    {'slug': slug, 'cam_miou': v, 'pseudo_label_miou': v + 10, 'part_recall': 2 * v}
    for slug, v in values.items()
  ]


def test_paired_report_follows_the_preregistered_rule():
  """Means, standard errors and verdicts against the statistics module, on differences built
  to land on each side of the rule: a gain, a loss, a mean within two standard errors, and a
  mean beyond them that only 3 of the 5 seeds share."""
  import statistics

  base = [40.0, 42.0, 38.0, 41.0, 39.0]
  cases = {
    'full_method': [1, 2, 3, 4, 5],  # gain
    'related_only': [-1, -2, -3, -4, -5],  # loss
  }
  rows = {
    seed: _seed_rows(
      {
        'baseline_views': base[i],
        **{slug: base[i] + d[i] for slug, d in cases.items()},
      }
    )
    for i, seed in enumerate(range(5))
  }
  report = ablate.paired_report(rows)
  assert report['seeds'] == [0, 1, 2, 3, 4]
  stat = report['variants']['baseline_views']['cam_miou']
  assert stat['mean'] == statistics.mean(base)
  assert np.isclose(stat['se'], statistics.stdev(base) / 5**0.5, rtol=1e-12)
  assert 'body_recall' not in report['variants']['baseline_views']  # no such measure here
  verdicts = {(p['variant'], p['measure']): p for p in report['paired']}
  assert verdicts[('full_method', 'cam_miou')]['verdict'] == 'gain'
  assert verdicts[('full_method', 'cam_miou')]['agreeing'] == 5
  assert np.isclose(verdicts[('full_method', 'part_recall')]['difference']['mean'], 6.0)
  assert verdicts[('related_only', 'pseudo_label_miou')]['verdict'] == 'loss'
  assert ablate.compare([1, -1, 2, -2, 0.5])['verdict'] == 'no measurable difference'
  # mean 5.96, standard error 2.42: beyond two of them, but 3 of 5 seeds agree
  assert ablate.compare([10, 10, 10, -0.1, -0.1])['verdict'] == 'no measurable difference'
  assert ablate.compare([10, 10, 10, 10, -0.1])['verdict'] == 'gain'
  table = ablate.seeds_table(report).splitlines()
  assert '| full_method − baseline_views | cam_miou | 3.0 ± 0.7 | 5 of 5 | gain |' in table


def test_run_seeds_runs_every_seed_in_its_own_directory(tmp_path, monkeypatch, tiny_config):
  """The seeds reach the config (seed and localize.seed, not the dataset's data.seed), each
  seed has its own directory, and the report is written after every seed, marked interim
  until the last."""
  from cows_jax import run_dir

  calls, interim = [], []
  reports = run_dir.RunDir(str(tmp_path)).reports()

  def fake_run(cfg, workdir, stages, variants, lock):
    calls.append((cfg.seed, cfg.localize.seed, cfg.data.seed, workdir))
    if (reports / 'ablation_seeds.md').is_file():
      interim.append((reports / 'ablation_seeds.md').read_text().splitlines()[:2])
    return _seed_rows(
      {'baseline_views': 40.0 + cfg.seed, 'full_method': 41.0, 'related_only': 40.0}
    )

  monkeypatch.setattr(ablate, 'run', fake_run)
  report = ablate.run_seeds(tiny_config, str(tmp_path), {}, [3, 7])
  assert calls == [
    (3, 3, tiny_config.data.seed, str(tmp_path / 'seed3')),
    (7, 7, tiny_config.data.seed, str(tmp_path / 'seed7')),
  ]
  assert report['variants']['baseline_views']['cam_miou']['values'] == [43.0, 47.0]
  assert interim == [
    [
      'Mean ± standard error over 1 seed (3).',
      '**Interim:** 1 seed (7) still to run; the verdicts are the pre-registered decision only '
      'once every planned seed is in.',
    ]
  ]
  assert run_dir.read_json(reports / 'ablation_seeds.json', 'test')['seeds'] == [3, 7]
  final = (reports / 'ablation_seeds.md').read_text()
  assert 'related_only − baseline_views' in final and 'Interim' not in final
  with pytest.raises(ValueError, match='distinct seeds'):
    ablate.run_seeds(tiny_config, str(tmp_path), {}, [1, 1])


def test_run_records_each_variant_once_so_jobs_can_split_the_variants(tmp_path, monkeypatch):
  """Two jobs given the variants of different classifiers fill one table, in the variants'
  order; each variant runs while its classifier's run and its own directory are locked; a
  rerun skips every recorded variant."""
  import contextlib
  import os

  from cows_jax import run_dir

  held, calls = [], []

  @contextlib.contextmanager
  def lock(directory):
    held.append(os.path.relpath(directory, tmp_path))
    yield
    held.pop()

  def stage(name):
    return lambda cfg, directory: calls.append((name, os.path.relpath(directory, tmp_path), *held))

  stages = {name: stage(name) for name in ('classify', 'localize', 'label')}
  monkeypatch.setattr(
    ablate,
    '_score',
    lambda vcfg, v, run: {
      'variant': v.name,
      'slug': v.slug,
      'cam_miou': len(v.slug),
      'pseudo_label_miou': 1.0,
      'cam_bg_threshold': 0.3,
    },
  )
  cfg = config.finalize(config.load('synthetic:tiny'))
  workdir = str(tmp_path)
  baseline = [ablate.variant('baseline_views'), ablate.variant('baseline_cam')]
  full = ablate.run(cfg, workdir, stages, [ablate.variant('full_method')], lock)
  assert [r['slug'] for r in full] == ['full_method']
  rows = ablate.run(cfg, workdir, stages, baseline, lock)
  assert [r['slug'] for r in rows] == ['baseline_cam', 'baseline_views', 'full_method']
  assert calls[:3] == [
    ('classify', 'train/full', 'train/full'),
    ('localize', 'full_method', 'full_method'),
    ('label', 'full_method', 'full_method'),
  ]
  assert calls[3] == ('classify', 'train/single', 'train/single')
  assert len(calls) == 9 and not held
  recorded = run_dir.read_json(tmp_path / 'reports' / 'ablation.json', 'test')
  assert recorded == rows
  assert (tmp_path / 'reports' / 'ablation.md').read_text().count('\n| ') == 3
  calls.clear()
  assert ablate.run(cfg, workdir, stages, ablate.VARIANTS[:2], lock) == rows
  assert calls == []
  with pytest.raises(ValueError, match="unknown variant 'nope'; choose from baseline_cam, "):
    ablate.variant('nope')
