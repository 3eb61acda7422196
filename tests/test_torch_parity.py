"""The JAX classifier against an independent PyTorch reference (cows_jax/tools/torch_reference.py)
with the same weights: forward scores and co-attention maps, the reference step's loss terms
and gradients (4 full pair forwards), the SGD update, and the localization maps."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from tolerances import float32_sums

from cows_jax import classify, localize, views
from cows_jax.configs.defaults import paper_defaults
from cows_jax.models.coattention import CoAttentionNet, PairScores
from cows_jax.models.random_init import classifier_params

torch = pytest.importorskip(
  'torch', reason='PyTorch parity tests need torch (CI installs it: pip install torch==2.13.0)'
)
from cows_jax.tools import torch_reference as ref  # noqa: E402  (needs torch)

# Tiny tensors: one thread, or OpenMP workers spin against each other on a small shared CPU
# (seconds instead of milliseconds per step).
torch.set_num_threads(1)

NUM_CLASSES = 5
WIDTH = 0.125
SIZE = 32
VIEWS = ('flip', 0.75, 2.0)
TERMS = ('single', 'coattention', 'contrastive', 'self_single', 'self_coattention')
LABELS_M = [[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]]
LABELS_N = {  # contrastive loss on both sides / the n side has no class that m lacks.
  'both_sides': [[1, 0, 0, 1, 0], [0, 1, 0, 0, 1]],
  'n_side_empty': [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0]],
}
# These programs are tiny: XLA CPU's default optimization takes ~20 s to compile the
# gradient; without it, ~2 s.
FAST_COMPILE = {
  'xla_backend_optimization_level': 0,
  'xla_llvm_disable_expensive_passes': True,
  'xla_cpu_use_fusion_emitters': False,
}


# JAX and PyTorch run the same float32 network with their own convolution algorithms: every
# sum in another order (tests/tolerances.py). The forward's sums are 3 x 3 x 64 taps through
# 16 layers, whose roundings add up like ~16 x 576 ~ 1e4 terms; the gradients add the backward
# pass and the kernel gradients' sums over the pixels of 2 pairs x 4 pairings (~1e5 terms).
# Values agree to float32_sums of that, relative to their largest magnitude (measured: below
# 2e-6 and 1e-6 of it). A loss term, a view or a parameter group off changes them by percents.
FORWARD = float32_sums(10_000, 1.0)  # 1e-4
GRADIENT = float32_sums(100_000, 1.0)  # 3e-4


def assert_close(actual, expected, rtol):
  """Relative agreement; atol is rtol times the largest magnitude, for entries near zero."""
  expected = np.asarray(expected)
  np.testing.assert_allclose(
    np.asarray(actual), expected, rtol=rtol, atol=rtol * max(np.abs(expected).max(), 1e-6)
  )


def at(tree, path):
  """The leaf of a nested dict at a jax key path."""
  for key in path:
    tree = tree[key.key]
  return np.asarray(tree)


def nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope='module')
def models():
  """(flax model, its variables, the torch reference holding the same weights)."""
  model = CoAttentionNet(num_classes=NUM_CLASSES, width=WIDTH)
  # Random params (He-scaled, non-zero biases, so bias copying is tested too).
  variables = {'params': classifier_params(model, SIZE, 0)}
  torch_model = ref.CoAttentionClassifier(NUM_CLASSES, WIDTH)
  ref.load_flax_params(torch_model, variables['params'])
  return model, variables, torch_model


@pytest.fixture(scope='module')
def computer(models):
  """localize's jitted features and co-attention maps, shared by the tests (one compile)."""
  model, variables, _ = models
  return localize.MapComputer(model, variables)


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(0).normal(size=(6, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.parametrize('partner', ['image', 2.0])
def test_forward_scores_and_coattention_maps(models, computer, images, partner):
  model, variables, torch_model = models
  x_m = images[:2]
  x_n = images[2:4] if partner == 'image' else np.asarray(views.make_view(x_m, partner))
  f_m, f_n = computer.features(x_m), computer.features(x_n)
  head = jax.jit(
    lambda a, b: model.apply(variables, a, b, method=model.pair_head), compiler_options=FAST_COMPILE
  )
  scores = head(f_m, f_n)
  maps_m, maps_n = computer.pair_maps(f_m, f_n)
  with torch.no_grad():
    out = torch_model(ref.nchw(x_m), ref.nchw(x_n))
  for name in PairScores._fields:
    assert_close(getattr(scores, name), getattr(out, name), FORWARD)
  assert_close(maps_m, nhwc(out.maps_m), FORWARD)
  assert_close(maps_n, nhwc(out.maps_n), FORWARD)


@pytest.fixture(scope='module')
def jax_loss_and_grads(models):
  """classify.loss_fn with the paper's self views, compiled once for every label case."""
  model, _, _ = models
  weights = {k: 1.0 for k in TERMS}

  def loss(params, batch, use_contrastive):
    return classify.loss_fn(
      params, {}, batch, use_contrastive, model=model, weights=weights, self_views=VIEWS
    )

  return jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=FAST_COMPILE)


@pytest.mark.parametrize(
  'labels_n,epoch', [('both_sides', 2), ('n_side_empty', 2), ('both_sides', 1)]
)
def test_loss_terms_and_gradients_match_the_reference_step(
  models, images, jax_loss_and_grads, labels_n, epoch
):
  _, variables, torch_model = models
  contrastive_from_epoch = paper_defaults().classify.contrastive_from_epoch
  l_m = np.asarray(LABELS_M, np.float32)
  l_n = np.asarray(LABELS_N[labels_n], np.float32)
  batch = {'image_m': images[:2], 'image_n': images[2:4], 'labels_m': l_m, 'labels_n': l_n}
  (total, (terms, _)), grads = jax_loss_and_grads(
    variables['params'], batch, jnp.asarray(epoch >= contrastive_from_epoch)
  )

  torch_model.zero_grad(set_to_none=True)
  view_images = [ref.nchw(views.make_view(images[:2], v)) for v in VIEWS]
  ref_terms = ref.reference_losses(
    torch_model,
    ref.nchw(images[:2]),
    ref.nchw(images[2:4]),
    torch.from_numpy(l_m),
    torch.from_numpy(l_n),
    view_images,
    epoch,
    contrastive_from_epoch,
  )
  ref_total = sum(ref_terms.values())
  ref_total.backward()

  for name in TERMS:
    assert_close(terms[name], ref_terms[name].item(), FORWARD)
  assert_close(total, ref_total.item(), FORWARD)
  assert (terms['contrastive'] == 0) == (epoch < contrastive_from_epoch)
  ref_grads = ref.to_flax(torch_model, grads=True)
  leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert len(leaves) == len(jax.tree.leaves(ref_grads))
  for path, g in leaves:
    assert_close(g, at(ref_grads, path), GRADIENT)


def test_sgd_updates_match_torch_param_groups(models):
  """Two steps of classify.make_optimizer and of torch SGD with the reference's four param
  groups (lr x1/x2 backbone weights/biases, x10/x20 new layers), on the same gradients."""
  _, variables, _ = models
  cfg = paper_defaults()
  c = cfg.classify
  params = variables['params']
  rng = np.random.default_rng(1)
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
  tx = classify.make_optimizer(cfg, params, 100)

  def two_steps(p):
    state = tx.init(p)
    for _ in range(2):
      updates, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, updates)
    return p

  new = jax.jit(two_steps, compiler_options=FAST_COMPILE)(params)

  moving, carrier = (ref.CoAttentionClassifier(NUM_CLASSES, WIDTH) for _ in range(2))
  ref.load_flax_params(moving, params)
  ref.load_flax_params(carrier, grads)  # the gradients, laid out as torch parameters.
  for p, g in zip(moving.parameters(), carrier.parameters()):
    p.grad = g.detach().clone()
  opt = ref.sgd(
    moving,
    c.base_lr,
    c.momentum,
    c.nesterov,
    c.weight_decay,
    c.lr_mult_pretrained_weight,
    c.lr_mult_pretrained_bias,
    c.lr_mult_new_weight,
    c.lr_mult_new_bias,
  )
  opt.step()
  opt.step()
  moved = ref.to_flax(moving)
  # Elementwise updates, compared as differences of float32 parameters ~20x larger than the
  # updates: their rounding, eps32 of the parameters, is ~2e-6 of the updates; 1e-4 of them.
  for path, p0 in jax.tree_util.tree_flatten_with_path(params)[0]:
    assert_close(at(new, path) - p0, at(moved, path) - p0, 1e-4)


def test_localization_maps_match_full_pair_forwards(models, computer, images):
  """localize.image_maps (features once per image and view, the head per pairing) against
  the torch model running a full pair forward per pairing; both resize view maps with
  views.map_back, so that only the procedure and the model are compared."""
  _, _, torch_model = models
  cfg = ml_collections.ConfigDict(
    {'localize': {'num_related': 2, 'gate': 0.1}, 'data': {'num_classes': NUM_CLASSES}}
  )
  queries = [0, 3]
  classes = [np.array([1, 2]), np.array([0])]
  related = [[[1, 2], [5, 1]], [[2, 4]]]
  all_feats = np.concatenate([computer.features(images[s : s + 2]) for s in (0, 2, 4)])
  view_feats = {
    v: computer.features(np.asarray(views.make_view(images[queries], v))) for v in VIEWS
  }
  fast = localize.image_maps(
    computer, all_feats[queries], all_feats, view_feats, related, classes, cfg
  )

  def map_back(maps, view, size):
    return ref.nchw(np.asarray(views.map_back(nhwc(maps), view, size)))

  for qi, q in enumerate(queries):
    x_m = images[q : q + 1]
    view_images = [(v, ref.nchw(views.make_view(x_m, v))) for v in VIEWS]
    partners = [ref.nchw(images[r]) for r in related[qi]]
    naive = ref.localization_maps(
      torch_model,
      ref.nchw(x_m),
      classes[qi],
      partners,
      view_images,
      cfg.localize.gate,
      map_back=map_back,
    )
    assert_close(np.stack(fast[qi]), naive, FORWARD)
