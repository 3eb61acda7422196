"""orbax checkpoints of a training state, resumable after a kill.

One CheckpointManager per trained model, with two items: `variables` (params and the other
collections, such as BatchNorm statistics) and `opt_state`, so that later stages restore the
variables alone. Every epoch end (a multiple of `keep_period`) is kept, so `localize` can
load a given epoch; periodic checkpoints in between are rotated (`max_to_keep`) and only
serve resuming. Directories are epath paths (run_dir), local or gs://.
"""

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from cows_jax import parallel


class CorruptCheckpoint(ValueError):
  """A checkpoint orbax cannot read (truncated or garbage files); it has been set aside."""


def set_aside(directory: epath.Path, step: int, error: Exception) -> epath.Path:
  """Rename an unreadable checkpoint to <step>.corrupt (orbax ignores it from then on, and a
  rerun can save that step again); returns the new path. Every process calls it: process 0
  renames, the others wait for it at a barrier (each renaming would race)."""
  parallel.barrier(f'set aside {directory}/{step}')  # every process names the same target.
  target, n = directory / f'{step}.corrupt', 1
  while target.exists():
    target, n = directory / f'{step}.corrupt{n}', n + 1
  parallel.barrier(f'set aside {directory}/{step}: named')
  if parallel.is_writer():
    (directory / str(step)).rename(target)
  parallel.barrier(f'set aside {directory}/{step}: renamed')
  logging.warning(
    'checkpoint %s/%d is unreadable (%s: %s); set aside as %s',
    directory,
    step,
    type(error).__name__,
    str(error).splitlines()[0][:200] if str(error) else '',
    target.name,
  )
  return target


def manager(
  directory: epath.Path,
  keep_period: int | None = None,
  max_to_keep: int = 2,
  read_only: bool = False,
) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    keep_period=keep_period,
    create=not read_only,
    read_only=read_only,
    enable_async_checkpointing=not read_only,
  )
  return ocp.CheckpointManager(directory, options=options, item_names=('variables', 'opt_state'))


def _abstract(tree):
  """ShapeDtypeStructs of arrays (or of already abstract leaves)."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def save(mngr: ocp.CheckpointManager, step: int, variables, opt_state) -> None:
  """Asynchronous save; the manager finalizes it atomically (tmp dir + rename)."""
  mngr.save(
    step,
    args=ocp.args.Composite(
      variables=ocp.args.StandardSave(variables), opt_state=ocp.args.StandardSave(opt_state)
    ),
  )


def restore(mngr: ocp.CheckpointManager, step: int, variables, opt_state):
  """Restore `step` into the structure, dtypes and shardings of the given state."""
  out = mngr.restore(
    step,
    args=ocp.args.Composite(
      variables=ocp.args.StandardRestore(_abstract(variables)),
      opt_state=ocp.args.StandardRestore(_abstract(opt_state)),
    ),
  )
  return out['variables'], out['opt_state']


def _key(path) -> str:
  return '/'.join(str(getattr(p, 'key', p)) for p in path)


def _shape_mismatch(item: epath.Path, like) -> str:
  """The first differences between the arrays a checkpoint item holds and `like`, or '' when
  they agree or its metadata is unreadable (restoring then reports that)."""
  try:
    stored = ocp.StandardCheckpointHandler().metadata(item)
    got = {_key(k): tuple(v.shape) for k, v in jax.tree.leaves_with_path(stored)}
  except Exception:  # unreadable metadata: left to the restore below.
    return ''
  want = {_key(k): tuple(v.shape) for k, v in jax.tree.leaves_with_path(like)}
  both = sorted(set(want) & set(got))
  problems = [f'{k}: stored {got[k]}, model {want[k]}' for k in both if got[k] != want[k]]
  problems += [f'{k} not in the checkpoint' for k in sorted(set(want) - set(got))]
  problems += [f'{k} not in the model' for k in sorted(set(got) - set(want))]
  return '; '.join(problems[:4]) + (f'; {len(problems) - 4} more' if len(problems) > 4 else '')


def check_resumable(directory: epath.Path, total_steps: int, stage: str) -> None:
  """Training resumes from the latest checkpoint before `total_steps`; one without optimizer
  state is a model imported by `cows-jax weights import`, which training must neither resume
  from nor set aside as corrupt: a one-line error says what to run instead."""
  if not directory.is_dir():
    return
  steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)
  if steps and steps[0] < total_steps and (directory / str(steps[0]) / 'variables').exists():
    if not (directory / str(steps[0]) / 'opt_state').exists():
      raise ValueError(
        f'{directory / str(steps[0])} holds an imported model (no optimizer state) that '
        f'`cows-jax {stage}` cannot resume; run the later stages on their own (not `pipeline`) '
        'to use it, or train in another WORKDIR'
      )


def restore_variables(directory: epath.Path, step: int | None, like, stage: str):
  """Variables of a finished stage (latest step if `step` is None), with an error that
  names the command producing them when they are missing."""
  hint = f'run `cows-jax {stage}` first'
  if not directory.is_dir():
    raise FileNotFoundError(f'{stage} checkpoints not found: {directory} is missing; {hint}')
  mngr = manager(directory, read_only=True)
  steps = mngr.all_steps()
  if not steps:
    raise FileNotFoundError(f'{stage} checkpoints not found: {directory} is empty; {hint}')
  step = max(steps) if step is None else step
  if step not in steps:
    raise FileNotFoundError(
      f'{stage} checkpoint for step {step} not found in {directory} (have {sorted(steps)}); {hint}'
    )
  # Explicitly replicated on this process's devices: inference needs no other host's arrays.
  sharding = parallel.replicated(parallel.local_mesh())
  like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), like)
  mismatch = _shape_mismatch(directory / str(step) / 'variables', like)
  if mismatch:  # a readable checkpoint of another model: the config differs, nothing is corrupt.
    mngr.close()
    raise ValueError(
      f'{stage} checkpoint {directory}/{step} holds another model than the config builds '
      f'({mismatch}); run with the config that made it (data.num_classes, model.width, '
      'model.feature_dim, model.norm, segment.*)'
    )
  try:
    out = mngr.restore(step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(like)))
  except Exception as e:  # orbax raises many types for truncated or garbage files.
    mngr.close()
    set_aside(directory, step, e)
    raise CorruptCheckpoint(
      f'{stage} checkpoint {directory}/{step} is unreadable ({type(e).__name__}); it was set '
      f'aside as {step}.corrupt: rerun `cows-jax {stage}` to remake it'
    ) from None
  mngr.close()
  return out['variables'], step
