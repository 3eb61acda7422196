"""Stopping cleanly when the job is told to stop (SIGTERM: how Cloud TPU spot and preemptible
VMs and batch schedulers end a job), on any number of processes.

The handler only records the request; the loops check it at safe points (after a training
step, after an image's outputs are written) and raise `Preempted`: a trainer first saves a
checkpoint at that step. The command line exits with EXIT_CODE, which asks a scheduler to run
the job again.

Several processes: every process installs the handler (replacing the one of JAX's preemption
notifier, which only a training loop would ask). A process that got the signal says so in the
coordination service's key-value store, so every process stops even where only one was
signalled. Trainers agree on the step through the step itself (training.fit), and barriers
(parallel.barrier) give up when a stop is requested, so no process waits for one that stopped.
"""

import signal
import threading
import time

import jax

from cows_jax import coordination

EXIT_CODE = 75  # EX_TEMPFAIL: a temporary failure, rerun to resume.
STOP_KEY = 'cows_jax/stop'  # in the coordination service: the process that was told to stop.
POLL_SECONDS = 1.0  # how often a process asks the store whether another one was told to stop.
_requested = threading.Event()
_shared = {'said': False, 'asked_at': float('-inf')}


class Preempted(Exception):
  """The job was asked to stop; its finished work is saved and a rerun resumes."""


def install() -> None:
  """Record SIGTERM instead of dying on it (after jax.distributed.initialize on several
  processes: the last handler installed wins)."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, lambda signum, frame: _requested.set())


def requested() -> bool:
  """Whether to stop now: this process was told to, or (several processes) another one was."""
  if jax.process_count() == 1:
    return _requested.is_set()
  if _requested.is_set():
    if not _shared['said']:
      coordination.set_value(STOP_KEY, str(jax.process_index()))
      _shared['said'] = True
    return True
  now = time.monotonic()
  if now - _shared['asked_at'] >= POLL_SECONDS:
    _shared['asked_at'] = now
    if coordination.get_value(STOP_KEY) is not None:
      _requested.set()
  return _requested.is_set()


def check(what: str) -> None:
  """Raise Preempted at a safe point of a loop that writes one output per item."""
  if requested():
    raise Preempted(f'{what}: stopped on request; finished outputs are kept, rerun to resume')
