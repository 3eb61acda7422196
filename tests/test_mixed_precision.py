"""Mixed precision (model.dtype / segment.dtype = 'bfloat16', the `:gpu` and `:tpu` config
arguments): bfloat16 compute, float32 parameters and optimizer state, and the co-attention
affinity and both its softmaxes in float32.

Tolerances, at tiny sizes on the CPU: co_attend on the same bfloat16 inputs equals its float32
result to the rounding of its bfloat16 output (2^-8 of the largest value); the classifier's
scores and maps agree with float32 to 2% of their largest value, the segmenter's logits to 4%
(bfloat16 keeps 8 significant bits through every layer).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cows_jax import classify, config, segment, training
from cows_jax.models import from_config
from cows_jax.models.coattention import CoAttentionNet, co_attend
from cows_jax.models.deeplab import DeepLab


def _rel_error(ours, reference) -> float:
  """max |ours - reference| / max |reference|."""
  ours, reference = np.asarray(ours, np.float32), np.asarray(reference, np.float32)
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


def _equations(jaxpr):
  """Every equation of a jaxpr, those of its sub-jaxprs (pjit, custom_jvp, ...) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _equations(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _equations(sub)


def _bf16_pair(rng, n=1024, d=64):
  """Feature maps already representable in bfloat16 (both precisions see the same inputs)."""
  f_m = jnp.asarray(2 * rng.normal(size=(1, n, d)), jnp.bfloat16)
  f_n = jnp.asarray(2 * rng.normal(size=(1, n, d)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(d, d)) / 8, jnp.float32)
  return f_m, f_n, w


def test_co_attend_in_bfloat16_equals_float32_to_output_rounding():
  f_m, f_n, w = _bf16_pair(np.random.default_rng(0))
  ours = co_attend(f_m, f_n, w)
  reference = co_attend(f_m.astype(jnp.float32), f_n.astype(jnp.float32), w)
  assert all(x.dtype == jnp.bfloat16 for x in ours)
  for a, b in zip(ours, reference):
    assert _rel_error(a, b) <= 2**-8
  # What the float32 island buys: the same attention computed in bfloat16 throughout is off
  # by far more (a logit error of the 1,024-way softmax is an error of its exponent).
  affinity = jnp.einsum('bid,de,bje->bij', f_m, w.astype(jnp.bfloat16), f_n)
  naive = jnp.einsum('bij,bjd->bid', jax.nn.softmax(affinity, axis=2), f_n)
  assert _rel_error(naive, reference[0]) > 10 * 2**-8


def test_affinity_and_both_softmaxes_are_float32_under_bfloat16():
  model = CoAttentionNet(4, width=0.125, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 32, 32, 3), jnp.float32)
  variables = model.init(jax.random.key(0), x, x)
  feats = jnp.zeros((2, 4, 4, model.apply(variables, x, method=model.features).shape[-1]))
  feats = feats.astype(jnp.bfloat16)
  jaxpr = jax.make_jaxpr(lambda f_m, f_n: model.apply(variables, f_m, f_n, method=model.pair_head))(
    feats, feats
  )
  eqns = list(_equations(jaxpr.jaxpr))
  exps = [e for e in eqns if e.primitive.name == 'exp']
  assert len(exps) >= 2  # one per softmax.
  assert all(e.outvars[0].aval.dtype == jnp.float32 for e in exps)
  affinities = [
    e for e in eqns if e.primitive.name == 'dot_general' and e.outvars[0].aval.shape == (2, 16, 16)
  ]
  assert affinities
  for e in affinities:
    assert all(v.aval.dtype == jnp.float32 for v in (*e.invars, *e.outvars))
    assert e.params['precision'] in (
      jax.lax.Precision.HIGHEST,
      (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST),
    )
  # The convolutions around it do run in bfloat16.
  convs = [e for e in eqns if e.primitive.name == 'conv_general_dilated']
  assert convs and all(e.outvars[0].aval.dtype == jnp.bfloat16 for e in convs)


def test_classifier_scores_and_maps_in_bfloat16_agree_with_float32():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  full = CoAttentionNet(4, width=0.125, dtype=jnp.float32)
  mixed = CoAttentionNet(4, width=0.125, dtype=jnp.bfloat16)
  variables = full.init(jax.random.key(0), x, y)
  reference, ours = full.apply(variables, x, y), mixed.apply(variables, x, y)
  for name in reference._fields:
    assert getattr(ours, name).dtype == jnp.float32
    assert _rel_error(getattr(ours, name), getattr(reference, name)) < 2e-2, name
  feats = full.apply(variables, jnp.concatenate([x, y]), method=full.features)
  f_m, f_n = jnp.split(feats, 2)
  maps_ref = full.apply(variables, f_m, f_n, method=full.pair_maps)
  maps = mixed.apply(variables, f_m, f_n, method=mixed.pair_maps)
  for a, b in zip(maps, maps_ref):
    assert a.dtype == jnp.bfloat16 and _rel_error(a, b) < 2e-2


def test_segmenter_logits_in_bfloat16_agree_with_float32():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 32, 32, 3)), jnp.float32)
  kwargs = dict(backbone='resnet101', width=0.0625, resnet_stages=(1, 1, 1, 1), head_dilation=2)
  full, mixed = DeepLab(5, dtype=jnp.float32, **kwargs), DeepLab(5, dtype=jnp.bfloat16, **kwargs)
  variables = full.init(jax.random.key(1), x)
  ours = mixed.apply(variables, x)
  assert ours.dtype == jnp.float32
  assert _rel_error(ours, full.apply(variables, x)) < 4e-2


def _all_float32(tree) -> bool:
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return bool(leaves) and all(jnp.asarray(x).dtype == jnp.float32 for x in leaves)


@pytest.fixture
def gpu_config(tmp_path):
  cfg = config.load('synthetic:tiny,gpu')
  cfg.data.data_dir = str(tmp_path / 'data')
  cfg.classify.self_views = ('flip', 0.75)
  return config.finalize(cfg)


def _one_step(variables, tx, loss_fn, batch, *args):
  state = training.TrainState.create(variables, tx.init(variables['params']))
  assert _all_float32(state.params) and _all_float32(state.opt_state)
  step = jax.jit(lambda s, b, *a: training.train_step(s, b, *a, loss_fn=loss_fn, tx=tx))
  state, scalars = step(state, batch, *args)
  assert np.isfinite(float(scalars['loss']))
  return state


def test_classifier_params_and_optimizer_state_stay_float32_in_bfloat16(gpu_config):
  cfg = gpu_config
  assert cfg.model.dtype == 'bfloat16'
  model = from_config.classifier(cfg)
  variables = from_config.init_variables(model, cfg, jax.random.key(0))
  assert _all_float32(variables)  # params and BatchNorm statistics.
  rng = np.random.default_rng(0)
  s, c = cfg.input.size, cfg.data.num_classes
  labels = np.eye(c, dtype=np.float32)[[0, 1]]
  batch = {
    'image_m': rng.normal(size=(2, s, s, 3)).astype(np.float32),
    'image_n': rng.normal(size=(2, s, s, 3)).astype(np.float32),
    'labels_m': labels,
    'labels_n': labels,
  }
  loss_fn = lambda *a: classify.loss_fn(
    *a, model=model, weights=classify.loss_weights(cfg), self_views=tuple(cfg.classify.self_views)
  )
  tx = classify.make_optimizer(cfg, variables['params'], 10)
  state = _one_step(variables, tx, loss_fn, batch, jnp.asarray(True))
  assert _all_float32(state.params) and _all_float32(state.opt_state)
  assert _all_float32(state.collections)


def test_segmenter_params_and_optimizer_state_stay_float32_in_bfloat16(gpu_config):
  cfg = gpu_config
  assert cfg.segment.dtype == 'bfloat16'
  model = from_config.segmenter(cfg)
  variables = from_config.init_variables(model, cfg, jax.random.key(1))
  assert _all_float32(variables)
  s = cfg.segment.crop_size
  rng = np.random.default_rng(0)
  batch = {
    'image': rng.normal(size=(2, s, s, 3)).astype(np.float32),
    'label': rng.integers(0, cfg.data.num_classes + 1, size=(2, s, s)).astype(np.int32),
  }
  loss_fn = lambda *a: segment.loss_fn(
    *a, model=model, ignore_index=255, align_corners=cfg.segment.upsample_align_corners
  )
  state = _one_step(variables, segment.make_optimizer(cfg, variables['params']), loss_fn, batch)
  assert _all_float32(state.params) and _all_float32(state.opt_state)


# --- the :gpu and :tpu config arguments ----------------------------------------------------


def _flat(cfg) -> dict:
  out = {}

  def walk(node, prefix):
    for key, value in node.items():
      if hasattr(value, 'items'):
        walk(value, f'{prefix}{key}.')
      else:
        out[prefix + key] = value

  walk(cfg, '')
  return out


ACCELERATOR_FIELDS = {'model.dtype', 'segment.dtype', 'input.worker_count', 'input.prefetch'}


@pytest.mark.parametrize(
  'base,arg,workers',
  [
    ('voc12', 'gpu', 8),
    ('voc12', 'tpu', 16),
    ('voc12:runlocal', 'runlocal,gpu', 8),
    ('lid20', 'tpu', 16),
    ('voc12_web', 'gpu', 8),
    ('synthetic:tiny', 'tiny,tpu', 16),
  ],
)
def test_accelerator_arguments_change_precision_and_input_only(base, arg, workers):
  name = base.partition(':')[0]
  before, after = _flat(config.load(base)), _flat(config.load(f'{name}:{arg}'))
  assert {k for k in before if before[k] != after[k]} == ACCELERATOR_FIELDS
  assert after['model.dtype'] == after['segment.dtype'] == 'bfloat16'
  assert after['input.worker_count'] == workers and after['input.prefetch'] == 4


@pytest.mark.parametrize(
  'spec,message',
  [
    ('voc12:gpu,tpu', 'names an argument twice or both gpu and tpu'),
    ('voc12:runlocal,runlocal', 'names an argument twice'),
    ('voc12:runlocal,fast', "unknown config argument 'fast' (known: runlocal)"),
    (
      'synthetic:cuda',
      "unknown config argument 'cuda' (known: parts, tiny, tiny_pretrained, scratch",
    ),
  ],
)
def test_bad_accelerator_argument_is_an_error(spec, message):
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    config.load(spec)
