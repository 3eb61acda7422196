"""A classifier run resumed from its epoch-1 checkpoint ends with exactly the params of an
uninterrupted run: data order, partners and optimizer state all come back."""

import copy
import os

import jax
import numpy as np
import pytest

from cows_jax import checkpoints, classify, run_dir
from cows_jax.models import from_config


def _final_params(cfg, workdir):
  model = from_config.classifier(cfg)
  like = from_config.abstract_variables(model, cfg)
  params, step = checkpoints.restore_variables(
    run_dir.RunDir(workdir).classifier(), None, like, 'classify'
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
  # The same program on the same inputs and device count: equal to the bit.
  for a, b in zip(jax.tree.leaves(p_straight), jax.tree.leaves(p_resumed), strict=True):
    np.testing.assert_array_equal(a, b)
  # A finished run is skipped, not retrained.
  mtime = os.path.getmtime(os.path.join(run_dir.RunDir(resumed).classifier(), str(s2)))
  classify.train(cfg, resumed)
  assert os.path.getmtime(os.path.join(run_dir.RunDir(resumed).classifier(), str(s2))) == mtime


def test_an_imported_model_is_not_resumed_nor_set_aside(tmp_path):
  """A checkpoint without optimizer state (what `weights import` writes) stops training with
  one line, and stays where it is; once it covers the stage's steps, the stage is complete."""
  import orbax.checkpoint as ocp
  from etils import epath

  directory = epath.Path(tmp_path / 'classifier')
  mngr = checkpoints.manager(directory)
  variables = {'params': {'w': np.ones(3, np.float32)}}
  mngr.save(3, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables)))
  mngr.wait_until_finished()
  mngr.close()
  with pytest.raises(ValueError, match='imported model .* cannot resume'):
    checkpoints.check_resumable(directory, 10, 'classify')
  assert (directory / '3' / 'variables').exists()
  checkpoints.check_resumable(directory, 3, 'classify')  # complete: nothing to resume.
