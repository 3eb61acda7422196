"""Metric logs and small file helpers shared by the stages.

clu's metric writers and periodic actions import TensorFlow, which this project does not
depend on; metrics are written as JSON lines (one file per stage) plus the console log.
"""

import json
import os
import time

import jax
from absl import logging

from cows_jax import files


def write_json_atomic(path: str, obj) -> None:
  files.write_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def write_text_atomic(path: str, text: str) -> None:
  files.write_atomic(path, text.encode())


def read_json(path: str, stage: str):
  """JSON written by an earlier stage, or an error naming the command that writes it."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} is missing; run `cows-jax {stage}` first')
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f'{path} is unreadable ({e}); rerun `cows-jax {stage}`') from e


class MetricLog:
  """Appends {'step', **scalars} lines to a .jsonl file and logs them with throughput."""

  def __init__(self, path: str, total_steps: int):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    self.path, self.total = path, total_steps
    self._last_time, self._last_step = time.time(), None

  def write(self, step: int, scalars: dict) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    now = time.time()
    if self._last_step is not None and step > self._last_step:
      scalars['steps_per_sec'] = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    if jax.process_index() == 0:
      with open(self.path, 'a') as f:
        f.write(json.dumps({'step': step, **scalars}) + '\n')
    text = ', '.join(f'{k}={v:.4g}' for k, v in sorted(scalars.items()))
    logging.info('[%d/%d] %s', step, self.total, text)
