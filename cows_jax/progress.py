"""Progress of the long loops (localize, label, evaluate, predict): done/total, items/s and the
time left, logged at least every 30 s, and a progress bar when stderr is a terminal."""

import sys
import time

from absl import logging


class Progress:
  """Counts items done out of `total`; `update(n)` after each batch."""

  def __init__(self, what: str, total: int, every_s: float = 30.0):
    self.what, self.total, self.every_s = what, total, every_s
    self.done, self._start, self._last = 0, time.time(), time.time()
    self._bar = None
    if sys.stderr.isatty() and total:
      from tqdm import tqdm

      self._bar = tqdm(total=total, desc=what, unit='img', leave=False)

  def update(self, n: int = 1) -> None:
    self.done += n
    if self._bar is not None:
      self._bar.update(n)
    now = time.time()
    if now - self._last >= self.every_s or self.done == self.total:
      self._last = now
      logging.info('%s', self.line(now))

  def line(self, now: float | None = None) -> str:
    elapsed = max((now or time.time()) - self._start, 1e-9)
    rate = self.done / elapsed
    left = (self.total - self.done) / rate if rate > 0 else float('inf')
    return (
      f'{self.what}: {self.done}/{self.total}, {rate:.3g} images/s, '
      f'{duration(elapsed)} elapsed, {duration(left)} left'
    )

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def duration(seconds: float) -> str:
  """H:MM:SS, or '?' for an unknown (infinite) time."""
  if seconds == float('inf'):
    return '?'
  h, rest = divmod(int(seconds), 3600)
  return f'{h}:{rest // 60:02d}:{rest % 60:02d}'
