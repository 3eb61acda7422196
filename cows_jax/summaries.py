"""TensorBoard summaries beside the JSON-lines logs: WORKDIR/tensorboard/<name>/.

Written with tensorboardX, which needs no TensorFlow (clu's metric writers import it). Only
process 0 writes; elsewhere `Writer` does nothing, so callers need no process checks. For a
workdir on object storage the event file is written to a local temporary directory and
copied there when the writer closes.
"""

import os
import shutil
import sys
import tempfile

import jax
import numpy as np
from etils import epath

from cows_jax import run_dir


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch where torch is installed and not
  yet imported: tensorboardX imports it (1 to 2 s, every process) only to accept torch
  tensors, which cows_jax never logs."""
  if 'torch' in sys.modules:
    from tensorboardX import SummaryWriter

    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError, as without torch.
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']
  return SummaryWriter


class Writer:
  """Scalars and images of one run part (a trained model, the evaluation)."""

  def __init__(self, logdir) -> None:
    self._tb, self._remote, self._local = None, None, None
    if jax.process_index() == 0:
      logdir = epath.Path(logdir)
      if not run_dir.is_local(logdir):
        self._remote, self._local = logdir, tempfile.mkdtemp(prefix='cows_tensorboard.')
      self._tb = _summary_writer_class()(self._local or os.fspath(logdir))

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
    if self._remote is not None:
      for name in os.listdir(self._local):
        run_dir.write_bytes(self._remote / name, (epath.Path(self._local) / name).read_bytes())
      shutil.rmtree(self._local)
