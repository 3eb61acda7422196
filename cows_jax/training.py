"""The one trainer both trained stages share, and the training state it carries.

`classify` and `segment` describe what differs (model, loss, data, schedule) in a `Task`;
`fit` does the rest, top to bottom: checkpoints (skip a finished run, resume a killed one),
the device mesh, init or restore (an unreadable checkpoint is set aside and the one before it
used), the jitted step with the state donated, the loop, metric logs, a guard that stops on a
non-finite loss before it reaches a checkpoint, and a checkpoint at the current step when the
job is told to stop (preemption.py).
"""

import dataclasses
import functools
import json
import time
from typing import Any, Callable, Iterator

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metrics as clu_metrics
from etils import epath

from cows_jax import checkpoints, parallel, preemption, progress, run_dir, summaries
from cows_jax.data import input_pipeline


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes: one pytree to jit, donate and checkpoint."""

  step: jax.Array  # optimizer steps taken (micro-steps for an accumulating optimizer).
  params: Any
  collections: dict  # the model's other variables: BatchNorm statistics, frozen BN.
  opt_state: Any

  @classmethod
  def create(cls, variables: dict, opt_state, step: int = 0) -> 'TrainState':
    collections = {k: v for k, v in variables.items() if k != 'params'}
    return cls(jnp.asarray(step, jnp.int32), variables['params'], collections, opt_state)

  @property
  def variables(self) -> dict:
    """{'params': ..., **collections}: what `model.apply` and later stages take."""
    return {'params': self.params, **self.collections}


def train_step(state: TrainState, batch, *args, loss_fn: Callable, tx):
  """One step, pure: `loss_fn(params, collections, batch, *args)` returns
  (loss, (loss terms, updated collections)); returns the new state and {'loss', **terms}."""
  (loss, (terms, collections)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params, state.collections, batch, *args
  )
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    collections=collections,
    opt_state=opt_state,
  )
  return new, {'loss': loss, **terms}


def train_step_agreeing_to_stop(state: TrainState, batch, stop, *args, loss_fn: Callable, tx):
  """`train_step`, and whether any process asked to stop (`stop`: one flag per device, each
  process's own on its devices): reduced over the devices with the step's gradients, so
  every process reads the same answer and all stop after the same step."""
  state, scalars = train_step(state, batch, *args, loss_fn=loss_fn, tx=tx)
  return state, scalars, jnp.any(stop)


@dataclasses.dataclass(frozen=True)
class Task:
  """What one trained model brings to `fit`."""

  name: str  # in log lines, e.g. 'classify'.
  checkpoint_dir: epath.Path
  log_path: epath.Path
  tensorboard: epath.Path  # TensorBoard event files.
  total_steps: int
  init_variables: Callable[[], dict]  # random init or imported weights.
  optimizer: Callable[[Any], optax.GradientTransformation]  # of the params.
  loss_fn: Callable  # (params, collections, batch, *step_args) -> (loss, (terms, collections))
  # This process's numpy batches from a step on (input_pipeline.iterate: it also says how many
  # to keep on the devices ahead of the step).
  batches: Callable[[int], Iterator]
  log_every: int
  checkpoint_every: int  # resume points; rotated.
  keep_period: int  # checkpoints at multiples of it are kept (the classifier's epoch ends).
  learning_rate: Callable[[int], float] = lambda step: float('nan')  # of a step, for the logs.
  step_args: Callable[[int], tuple] = lambda step: ()  # extra arguments of the loss by step.


class NonFiniteLoss(ValueError):
  """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class MetricLog:
  """Appends {'step', **scalars} lines to a .jsonl file, logs them with throughput and the time
  left (at the rate since the first logged step, which leaves compilation out), and writes them
  to TensorBoard."""

  def __init__(self, target: epath.Path, total_steps: int, tensorboard: epath.Path):
    self.target, self.total = target, total_steps
    self._last_time, self._last_step, self._first = time.time(), None, None
    self._tb = summaries.Writer(tensorboard)

  def write(self, step: int, scalars: dict) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    now = time.time()
    if self._last_step is not None and step > self._last_step:
      scalars['steps_per_sec'] = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    if jax.process_index() == 0:
      run_dir.append_line(self.target, json.dumps({'step': step, **scalars}))
    self._tb.scalars(step, scalars)
    text = ', '.join(f'{k}={v:.4g}' for k, v in sorted(scalars.items()))
    self._first = self._first or (now, step)
    rate = (step - self._first[1]) / max(now - self._first[0], 1e-9)
    left = progress.duration((self.total - step) / rate if rate > 0 else float('inf'))
    logging.info('[%d/%d] %s, %s left', step, self.total, text, left)

  def close(self) -> None:
    self._tb.close()


def step_means(scalars: list[dict]) -> dict:
  """The mean of each loss term over the steps since the last log line (clu.metrics: one
  Average per term, merged over the steps). Host values: no device work, on any process."""
  scalars = jax.device_get(scalars)
  collection = clu_metrics.Collection.create(
    **{k: clu_metrics.Average.from_output(k) for k in scalars[0]}
  )
  merged = functools.reduce(
    lambda acc, s: acc.merge(collection.single_from_model_output(**s)),
    scalars[1:],
    collection.single_from_model_output(**scalars[0]),
  )
  return {k: float(v) for k, v in merged.compute().items()}


def check_finite(task: Task, first_step: int, scalars: list[dict]) -> None:
  """Raises NonFiniteLoss naming the first step (1-based) whose loss terms are not finite."""
  for i, values in enumerate(jax.device_get(scalars)):
    if not all(np.isfinite(v) for v in values.values()):
      terms = ', '.join(f'{k}={float(v):.4g}' for k, v in sorted(values.items()))
      raise NonFiniteLoss(
        f'{task.name}: non-finite loss at step {first_step + i} ({terms}); training stopped, '
        f'the last good checkpoint in {task.checkpoint_dir} is kept'
      )


def fit(task: Task) -> None:
  """Train `task` to `total_steps`, resuming from its latest checkpoint; skips a finished run."""
  # Checkpoints: a finished run is skipped, a killed one resumes.
  preemption.install()
  make_manager = lambda: checkpoints.manager(
    task.checkpoint_dir, keep_period=task.keep_period, max_to_keep=2
  )
  mngr = make_manager()
  start = mngr.latest_step() or 0
  if start >= task.total_steps:
    logging.info(
      '%s: complete (step %d of %d in %s), skipping',
      task.name,
      start,
      task.total_steps,
      task.checkpoint_dir,
    )
    mngr.close()
    return

  checkpoints.check_resumable(task.checkpoint_dir, task.total_steps, task.name)
  # Devices, then the state: initialized, replicated, and restored when resuming.
  mesh = parallel.data_mesh()
  variables = task.init_variables()
  tx = task.optimizer(variables['params'])
  state = parallel.replicate(TrainState.create(variables, tx.init(variables['params'])), mesh)
  while start:  # the latest readable checkpoint; unreadable ones are set aside.
    try:
      variables, opt_state = checkpoints.restore(mngr, start, state.variables, state.opt_state)
    except Exception as e:  # orbax raises many types for truncated or garbage files.
      mngr.close()
      checkpoints.set_aside(task.checkpoint_dir, start, e)
      mngr = make_manager()
      start = mngr.latest_step() or 0
      continue
    state = TrainState.create(variables, opt_state, start)
    logging.info('%s: resumed from step %d', task.name, start)
    break

  # The loop: one jitted step; logs every `log_every` steps; checkpoints only checked steps.
  step_fn = jax.jit(
    functools.partial(train_step_agreeing_to_stop, loss_fn=task.loss_fn, tx=tx),
    donate_argnums=(0,),
  )
  local_devices = len(set(mesh.devices.flat) & set(jax.local_devices()))
  stop_flags = lambda: parallel.shard_batch(np.full(local_devices, preemption.requested()), mesh)
  # The next batches go to the devices while a step runs (depth: input.prefetch, from iterate).
  host_batches = task.batches(start)
  batches = input_pipeline.DevicePrefetch(
    host_batches,
    lambda batch: parallel.shard_batch(batch, mesh),
    getattr(host_batches, 'device_prefetch', input_pipeline.DEFAULT_DEVICE_PREFETCH),
  )
  log = MetricLog(task.log_path, task.total_steps, task.tensorboard)
  logging.info(
    '%s: steps %d..%d, %d devices', task.name, start, task.total_steps, mesh.devices.size
  )
  unlogged, unchecked = [], 0
  # The agreed stop request of the step before: read one step late, so the host does not wait
  # for each step to finish before it issues the next.
  stop_before = jnp.asarray(False)
  try:
    for step in range(start, task.total_steps):
      state, scalars, stop_asked = step_fn(
        state, next(batches), stop_flags(), *task.step_args(step)
      )
      unlogged.append(scalars)
      done = step + 1
      last = done == task.total_steps
      save = last or done % task.keep_period == 0 or done % task.checkpoint_every == 0
      stop = not last and bool(stop_before)
      stop_before = stop_asked
      if save or stop or done % task.log_every == 0:  # nothing unchecked is ever saved.
        check_finite(task, done - len(unlogged) + 1 + unchecked, unlogged[unchecked:])
        unchecked = len(unlogged)
      if done % task.log_every == 0 or last:
        log.write(done, {**step_means(unlogged), 'learning_rate': task.learning_rate(step)})
        unlogged, unchecked = [], 0
      if save or stop:
        checkpoints.save(mngr, done, state.variables, state.opt_state)
      if stop:
        mngr.wait_until_finished()
        raise preemption.Preempted(
          f'{task.name}: stopped on request at step {done}; its checkpoint is saved, rerun to '
          'resume'
        )
  finally:
    batches.close()
    log.close()
    mngr.wait_until_finished()
    mngr.close()
