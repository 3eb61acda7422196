"""A classifier run resumed from its epoch-1 checkpoint ends with exactly the params of an
uninterrupted run: data order, partners and optimizer state all come back."""

import copy
import os

import jax
import numpy as np

from cows_jax import checkpoints, classify


def _final_params(cfg, workdir):
  model = classify.create_model(cfg)
  like = classify.abstract_variables(model, cfg)
  params, step = checkpoints.restore_variables(
    classify.checkpoint_dir(workdir), None, like, 'classify'
  )
  return jax.device_get(params), step


def test_resume_equals_uninterrupted(tiny_config, tmp_path):
  cfg = copy.deepcopy(tiny_config)
  cfg.data.train_size = 24
  cfg.classify.epochs = 2
  straight = str(tmp_path / 'straight')
  classify.train(cfg, straight)

  resumed = str(tmp_path / 'resumed')
  first = copy.deepcopy(cfg)
  first.classify.epochs = 1  # "killed" after the first epoch's checkpoint.
  classify.train(first, resumed)
  _, step = _final_params(cfg, resumed)
  assert step == 24 // cfg.classify.batch_pairs
  classify.train(cfg, resumed)

  (p_straight, s1), (p_resumed, s2) = _final_params(cfg, straight), _final_params(cfg, resumed)
  assert s1 == s2 == 2 * step
  for a, b in zip(jax.tree.leaves(p_straight), jax.tree.leaves(p_resumed)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # A finished run is skipped, not retrained.
  mtime = os.path.getmtime(os.path.join(classify.checkpoint_dir(resumed), str(s2)))
  classify.train(cfg, resumed)
  assert os.path.getmtime(os.path.join(classify.checkpoint_dir(resumed), str(s2))) == mtime
