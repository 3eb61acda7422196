"""Extra images in pair sampling: the epoch plan, plain mixing and the clean-partners option."""

import grain
import numpy as np
import pytest

from cows_jax.configs.defaults import paper_defaults
from cows_jax.data import input_pipeline, mixing


class OneHotSource:
  """Record i has class i % num_classes and a 4x4 image; labels() without decoding."""

  def __init__(self, n: int, num_classes: int, offset: int = 0):
    self._labels = np.eye(num_classes, dtype=np.uint8)[(np.arange(n) + offset) % num_classes]

  def __len__(self):
    return len(self._labels)

  def __getitem__(self, i):
    return {'image': np.zeros((4, 4, 3), np.uint8), 'labels': self._labels[int(i)]}

  def labels(self):
    return self._labels


def _cfg():
  c = paper_defaults()
  c.input.size, c.input.color_jitter = 4, None
  return c


def test_default_plan_keeps_the_reshuffled_epochs_of_the_unmixed_pipeline():
  n, batch, epochs, seed = 10, 3, 3, 7
  source = OneHotSource(n, n)  # labels_m is the anchor's one-hot
  pool = mixing.make_pool(source)
  ds = input_pipeline.pair_dataset(
    pool.source, pool.class_index, _cfg(), epochs, batch, seed, plan=pool.plan
  )
  order = grain.MapDataset.range(n).shuffle(seed=seed).repeat(epochs)
  # The reference keeps each epoch's last partial batch: 4 steps an epoch, the last one with
  # one real pair and two padding slots of weight 0.
  assert len(ds) == 4 * epochs
  weights = np.concatenate([ds[s]['weight'] for s in range(len(ds))])
  anchors = np.concatenate([np.argmax(ds[s]['labels_m'], 1) for s in range(len(ds))])
  assert weights.tolist() == ([1.0] * 10 + [0.0] * 2) * epochs
  assert anchors[weights > 0].tolist() == [order[i] for i in range(n * epochs)]
  # Without it, 3 whole batches an epoch and no weights.
  cfg = _cfg()
  cfg.classify.keep_last_partial_batch = False
  ds = input_pipeline.pair_dataset(
    pool.source, pool.class_index, cfg, epochs, batch, seed, plan=pool.plan
  )
  anchors = np.concatenate([np.argmax(ds[s]['labels_m'], 1) for s in range(len(ds))])
  assert 'weight' not in ds[0]
  assert anchors.tolist() == [order[e * n + i] for e in range(epochs) for i in range(9)]


def test_plan_holds_every_primary_once_and_cycles_through_the_extras():
  plan = mixing.MixPlan(num_primary=6, num_extra=5, extra_per_epoch=2)
  assert plan.epoch_length == 8
  per_epoch = [[plan.anchor(e, s, seed=0) for s in range(8)] for e in range(5)]
  for anchors in per_epoch:
    assert anchors[:6] == list(range(6)) and all(6 <= a < 11 for a in anchors[6:])
  extras = [a for anchors in per_epoch for a in anchors[6:]]
  assert sorted(extras[:5]) == list(range(6, 11)) and sorted(extras[5:10]) == list(range(6, 11))


def test_mixed_pipeline_draws_extra_anchors_at_the_ratio():
  primary, extra = OneHotSource(8, 4), OneHotSource(16, 4)
  pool = mixing.make_pool(primary, extra, ratio=0.5)
  assert pool.plan.epoch_length == 12
  ds = input_pipeline.pair_dataset(pool.source, pool.class_index, _cfg(), 2, 4, 0, pool.plan)
  assert len(ds) == 6  # 3 steps per epoch
  again = input_pipeline.pair_dataset(pool.source, pool.class_index, _cfg(), 2, 4, 0, pool.plan)
  for step in range(6):  # step-indexed: the same batch whenever it is asked for
    np.testing.assert_array_equal(ds[step]['labels_n'], again[step]['labels_n'])


def _partners(pool, anchors, draws=50):
  rng = np.random.default_rng(0)
  return np.array(
    [pool.class_index.sample_partner(a, rng, False) for a in anchors for _ in range(draws)]
  )


def test_clean_partners_never_draws_a_noisy_image_as_partner():
  primary, web = OneHotSource(8, 4), OneHotSource(8, 4)
  plain = mixing.make_pool(primary, web, 1.0, is_noisy_source=True, mixing='plain')
  robust = mixing.make_pool(primary, web, 1.0, is_noisy_source=True, mixing='clean_partners')
  assert robust.noisy.tolist() == [False] * 8 + [True] * 8
  everyone = range(16)
  assert plain.noisy[_partners(plain, everyone)].any()
  partners = _partners(robust, everyone)
  assert not robust.noisy[partners].any()
  labels = robust.source.labels()
  anchors = np.repeat(np.arange(16), 50)
  assert (labels[anchors] & labels[partners]).any(1).all()  # still sharing a class


def test_a_class_only_noisy_images_have_falls_back_to_them():
  primary, web = OneHotSource(4, 5), OneHotSource(4, 5, offset=4)  # class 4 is web-only
  pool = mixing.make_pool(primary, web, 1.0, is_noisy_source=True, mixing='clean_partners')
  only = [i for i in range(8) if pool.source.labels()[i, 4]]
  assert set(_partners(pool, only)) <= set(only)


@pytest.mark.parametrize(
  'kwargs,match',
  [
    ({'mixing': 'clean_partners'}, 'acts on noisy sources only'),
    ({'mixing': 'loss_weights'}, "data.extra.mixing='loss_weights'"),
    ({'ratio': -1.0}, 'data.extra.ratio=-1.0 must be >= 0'),
  ],
)
def test_mixing_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mixing.make_pool(OneHotSource(4, 2), OneHotSource(4, 2), **{'ratio': 1.0, **kwargs})
