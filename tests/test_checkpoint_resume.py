"""A classifier run resumed from its epoch-1 checkpoint ends with exactly the params of an
uninterrupted run: data order, partners and optimizer state all come back. A segmenter
resumes only under the update plan it started with."""

import copy
import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from cows_jax import checkpoints, classify, config, run_dir, segment
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


def test_a_segmenter_resumes_only_under_the_update_plan_it_started_with(
  tiny_run, tmp_path, monkeypatch
):
  """Segmenter steps count micro-steps, whose number per update depends on the devices when
  the accumulation is folded: a run finished under another plan is complete, an unfinished
  one is a one-line error saying what it started with."""
  cfg, original = tiny_run
  workdir = tmp_path / 'run'
  shutil.copytree(original, workdir, symlinks=True)
  run = run_dir.RunDir(str(workdir))
  plan = segment.update_plan_of(config.finalize(cfg))
  record = json.loads((run.segmenter() / 'update_plan.json').read_text())
  assert record == dataclasses.asdict(plan)
  iterations = cfg.segment.iterations
  assert segment.recorded_plan_allows(run.segmenter(), plan, iterations)

  # Finished with `plan`; asked again with twice the micro-steps per update: skipped whole.
  other = dataclasses.replace(plan, micro_steps=2 * plan.micro_steps, devices=8)
  monkeypatch.setattr(segment, 'update_plan_of', lambda cfg: other)
  before = sorted(p.name for p in run.segmenter().iterdir())
  segment.train(cfg, str(workdir))
  assert sorted(p.name for p in run.segmenter().iterdir()) == before

  # Unfinished under its plan (its last checkpoint an earlier step): no resume with another.
  final = max(int(p.name) for p in run.segmenter().iterdir() if p.name.isdigit())
  os.rename(run.segmenter() / str(final), run.segmenter() / str(final - 1))
  assert segment.recorded_plan_allows(run.segmenter(), plan, iterations)
  with pytest.raises(
    ValueError,
    match=r'started with \d+ micro-steps per update \(\d+ examples each on 1 device\) and cannot resume with',
  ):
    segment.recorded_plan_allows(run.segmenter(), other, iterations)

  # No checkpoint yet: the plan of this run is recorded, whatever an earlier start wrote.
  shutil.rmtree(run.segmenter() / str(final - 1))
  assert segment.recorded_plan_allows(run.segmenter(), other, iterations)
  assert json.loads((run.segmenter() / 'update_plan.json').read_text())['devices'] == 8
