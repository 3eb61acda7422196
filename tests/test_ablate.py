"""The ablation's variants really differ in what the issue says, and only in that."""

import jax
import jax.numpy as jnp
import numpy as np

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
