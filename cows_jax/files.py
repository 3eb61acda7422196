"""Atomic file writes: every output of a stage is complete or absent, never half written."""

import os
import tempfile


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Write `data` to a temp file beside `path`, then rename it over `path` in one step."""
  path = os.fspath(path)
  directory = os.path.dirname(path) or '.'
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
