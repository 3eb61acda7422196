"""TensorBoard summaries beside the JSON-lines logs: WORKDIR/tensorboard/<name>/.

Written with tensorboardX, which needs no TensorFlow (clu's metric writers import it). Only
process 0 writes; elsewhere `Writer` does nothing, so callers need no process checks.
"""

import os

import jax
import numpy as np


class Writer:
  """Scalars and images of one run part (a trained model, the evaluation)."""

  def __init__(self, logdir) -> None:
    self._tb = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.fspath(logdir))

  def scalars(self, step: int, values: dict) -> None:
    if self._tb is not None:
      for name, value in values.items():
        self._tb.add_scalar(name, float(value), step)

  def image(self, tag: str, rgb: np.ndarray, step: int = 0) -> None:
    """A uint8 [H, W, 3] image."""
    if self._tb is not None:
      self._tb.add_image(tag, np.asarray(rgb), step, dataformats='HWC')

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
