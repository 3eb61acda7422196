"""The loop both trained stages share: step, accumulate metrics, log, checkpoint."""

from typing import Callable

import numpy as np

from cows_jax import checkpoints, parallel


def run_steps(
  step_fn: Callable,
  variables,
  opt_state,
  batches,
  mesh,
  mngr,
  log,
  start: int,
  total: int,
  log_every: int,
  should_save: Callable[[int], bool],
  step_args: Callable[[int], tuple] = lambda step: (),
):
  """Steps start..total-1. `step_fn(variables, opt_state, batch, *step_args(step))` returns
  (variables, opt_state, clu metrics); metrics are logged every `log_every` steps and at the
  end; a checkpoint is saved after step s when `should_save(s + 1)` or at the end."""
  acc = None
  for step in range(start, total):
    batch = parallel.shard_batch(next(batches), mesh)
    variables, opt_state, m = step_fn(variables, opt_state, batch, *step_args(step))
    acc = m if acc is None else acc.merge(m)
    done = step + 1
    if done % log_every == 0 or done == total:
      log.write(done, {k: np.asarray(v) for k, v in acc.compute().items()})
      acc = None
    if should_save(done) or done == total:
      checkpoints.save(mngr, done, variables, opt_state)
  mngr.wait_until_finished()
  mngr.close()
