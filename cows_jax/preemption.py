"""Stopping cleanly when the job is told to stop (SIGTERM: how Cloud TPU spot and preemptible
VMs and batch schedulers end a job).

The handler only records the request; the loops check it at safe points (after a training
step, after an image's outputs are written) and raise `Preempted`: a trainer first saves a
checkpoint at that step. On several processes the request is agreed on through JAX's
preemption sync point (orbax's `reached_preemption`), so every host stops at the same step.
The command line exits with EXIT_CODE, which asks a scheduler to run the job again.
"""

import signal
import threading

import jax

EXIT_CODE = 75  # EX_TEMPFAIL: a temporary failure, rerun to resume.
_requested = threading.Event()


class Preempted(Exception):
  """The job was asked to stop; its finished work is saved and a rerun resumes."""


def install() -> None:
  """Record SIGTERM instead of dying on it (one process; with several, JAX's distributed
  runtime watches for it and `requested` asks the sync point)."""
  if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, lambda signum, frame: _requested.set())


def requested(mngr=None, step: int | None = None) -> bool:
  """Whether to stop now. With a checkpoint manager and a step, on several processes: whether
  all processes reached the preemption sync point at this step."""
  if _requested.is_set():
    return True
  if mngr is not None and jax.process_count() > 1:
    return bool(mngr.reached_preemption(step))
  return False


def check(what: str) -> None:
  """Raise Preempted at a safe point of a loop that writes one output per item."""
  if requested():
    raise Preempted(f'{what}: stopped on request; finished outputs are kept, rerun to resume')
