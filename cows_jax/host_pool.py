"""Host work that overlaps the device: the dense CRF over a pool of processes, files encoded
and written by a pool of threads, each item finished in order.

`HostPool(workers, what)`, used by evaluate, predict-split, localize and label:
- `process(fn, *args)`: fn(*args) in a worker process (the CRF: pydensecrf holds the GIL);
- `thread(fn, *args)`: fn(*args) in a worker thread (PNG and .npz encoding and the atomic
  writes of run_dir: zlib and file I/O release the GIL); arguments that are futures (a CRF's
  labels) are waited for in the thread;
- `then(fn, *values)`: fn(*their results) on the calling thread, in the order of the calls,
  then `preemption.check(what)`: an item is finished, and a stop may happen, only once its
  host work is done and its file written. At most `depth` items are in flight: `then` waits
  for the oldest beyond that, so memory stays flat however long the split.

So the loop issues the device call of image i+1 while the CRF of image i runs in a worker.
One worker (`host_workers=1`) runs everything at once on the calling thread, in the same
order: the serial path, whose outputs the pooled ones equal byte for byte
(tests/test_host_pool.py).

Worker processes are spawned, never forked (a fork of a process whose XLA runtime has started
threads can deadlock), all of them when the pool opens, with `__main__` hidden meanwhile: a
spawned process otherwise imports the parent's main module, and the `cows-jax` script would
cost each one JAX and every stage (5 s and 340 MiB on this project's CPU); they import only
what their tasks need (cows_jax.crf, numpy, pydensecrf). They ignore SIGINT and SIGTERM (a
scheduler's SIGTERM often reaches the whole process group): stopping is the parent's to do.

Leaving the `with` block drains every item; on an exception (a stop request included) the
items not started are cancelled and the running ones finish, so every file that exists is
complete (run_dir writes atomically) and a rerun resumes.

This module imports nothing heavy at the top: the workers import it for their initializer.
"""

import collections
import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import sys
import types
from typing import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def cores() -> int:
  """The cores this process may run on (its CPU affinity where the OS tells)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def workers(cfg) -> int:
  """`host_workers` of the config: 0 is every core of this host."""
  return count(cfg.host_workers)


def count(n: int) -> int:
  """A `host_workers` value as a worker count: 0 is every core of this host."""
  n = int(n)
  if n < 0:
    raise ValueError(f'host_workers={n}: expected 0 (every core) or a positive count')
  return n or cores()


def _ignore_stop_signals() -> None:
  """A worker process's initializer."""
  for s in STOP_SIGNALS:
    signal.signal(s, signal.SIG_IGN)


@contextlib.contextmanager
def _starting_workers():
  """While worker processes start: `__main__` hidden (they do not import it) and the stop
  signals blocked on this thread (inherited, so a signal that comes before a worker's
  initializer runs does not kill it; one sent to this process waits until the end)."""
  main = sys.modules['__main__']
  sys.modules['__main__'] = types.ModuleType('__main__')
  blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
  try:
    yield
  finally:
    sys.modules['__main__'] = main
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _result(value):
  return value.result() if isinstance(value, cf.Future) else value


def _done(value) -> cf.Future:
  future = cf.Future()
  future.set_result(value)
  return future


class HostPool:
  """See the module's docstring. `workers` <= 1: serial, no pool; `processes=False`: threads
  only (no host work needs a process); `depth`: items in flight (default twice the workers).
  """

  def __init__(self, workers: int, what: str, processes: bool = True, depth: int | None = None):
    self.workers, self.what = max(int(workers), 1), what
    self.depth = max(depth or 2 * self.workers, 1)
    self._pending = collections.deque()
    self._threads = self._processes = None
    if self.workers == 1:
      return
    self._threads = cf.ThreadPoolExecutor(self.workers, thread_name_prefix=f'{what} host')
    if processes:
      self._processes = cf.ProcessPoolExecutor(
        self.workers,
        mp_context=multiprocessing.get_context('spawn'),
        initializer=_ignore_stop_signals,
      )
      with _starting_workers():  # one task per worker starts them all, now.
        for _ in range(self.workers):
          self._processes.submit(os.getpid)

  def process(self, fn: Callable, *args) -> cf.Future:
    """fn(*args) in a worker process (fn and args picklable; fn's module light to import)."""
    if self._processes is None:
      return _done(fn(*args))
    return self._processes.submit(fn, *args)

  def thread(self, fn: Callable, *args) -> cf.Future:
    """fn(*args) in a worker thread; futures among args are waited for there."""
    if self._threads is None:
      return _done(fn(*map(_result, args)))
    return self._threads.submit(lambda: fn(*map(_result, args)))

  def then(self, fn: Callable, *values) -> None:
    """fn(*results of values) on this thread once they are done, in the order of the calls,
    then a stop check. Finishes every item that is done at the head of the queue, and waits
    while more than `depth` are in flight."""
    self._pending.append((fn, values))
    while self._pending and (
      len(self._pending) > self.depth
      or all(not isinstance(v, cf.Future) or v.done() for v in self._pending[0][1])
    ):
      self._finish_oldest()

  def drain(self) -> None:
    """Finish every item in flight."""
    while self._pending:
      self._finish_oldest()

  def _finish_oldest(self) -> None:
    from cows_jax import preemption  # pylint: disable=import-outside-toplevel (imports JAX)

    fn, values = self._pending.popleft()
    fn(*map(_result, values))
    preemption.check(self.what)

  def close(self, cancel: bool = False) -> None:
    """Shut the pools down: after the running tasks, and the queued ones unless `cancel`."""
    if cancel:
      self._pending.clear()
    if self._threads is not None:
      self._threads.shutdown(wait=False, cancel_futures=cancel)  # no new write starts.
    if self._processes is not None:
      self._processes.shutdown(wait=True, cancel_futures=cancel)
    if self._threads is not None:
      self._threads.shutdown(wait=True)  # the running writes end: their files are whole.
    self._threads = self._processes = None

  def __enter__(self) -> 'HostPool':
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    try:
      if exc_type is None:
        self.drain()
    except BaseException:
      self.close(cancel=True)
      raise
    self.close(cancel=exc_type is not None)
