"""The run directory: every path under WORKDIR and the format of every artifact written there.

Stages hand work to each other only through this directory, so this module is their one
contract: the classifier's and segmenters' checkpoint directories, the classifier's epoch
boundaries, the localization maps, the pseudo labels, the stage-complete markers, reports,
logs, predictions, and the layout of an export. Paths are `etils.epath` paths, so a gs:// workdir reaches the stages
unchanged. Every write is atomic: a local file is written beside its target and renamed over
it; an object store publishes an object only once its upload is complete. A stage therefore
never reads a half-written file, and a killed stage resumes from the files that exist.
"""

import contextlib
import fcntl
import hashlib
import io
import json
import os
import socket
import sys
import tempfile
import threading
import time
import zipfile

import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from cows_jax import visualize

# Segmenters by supervision: 'pseudo' (the paper's) and 'ground_truth' (the upper bound).
SUPERVISIONS = ('pseudo', 'ground_truth')


def path(root: str | os.PathLike) -> epath.Path:
  """An epath of `root`; local paths are made absolute (orbax needs absolute paths)."""
  root = os.fspath(root)
  return epath.Path(root if '://' in root else os.path.abspath(root))


def is_local(p: epath.Path) -> bool:
  """Whether `p` is on a local filesystem (not an object store such as gs://)."""
  return '://' not in os.fspath(p)


# ---------------------------------------------------------------- paths


class RunDir:
  """The layout of one run directory (WORKDIR)."""

  def __init__(self, workdir: str | os.PathLike):
    self.root = path(workdir)

  def classifier(self) -> epath.Path:
    """The classifier's orbax checkpoints."""
    return self.root / 'classifier'

  def classifier_epochs(self) -> epath.Path:
    """Which checkpoint step ends each classifier epoch (written before training starts)."""
    return self.classifier() / 'epochs.json'

  def segmenter(self, supervision: str = 'pseudo') -> epath.Path:
    """segmenter/ (pseudo labels) or segmenter_<supervision>/ (e.g. the upper bound)."""
    return self.root / ('segmenter' if supervision == 'pseudo' else f'segmenter_{supervision}')

  def maps(self) -> epath.Path:
    return self.root / 'maps'

  def map_file(self, image_id: str) -> epath.Path:
    return self.maps() / f'{image_id}.npz'

  def maps_index(self) -> epath.Path:
    """Stage-complete marker of localize: the image ids, the checkpoint step, the method."""
    return self.maps() / 'index.json'

  def labels(self, kind: str = 'index') -> epath.Path:
    """pseudo_labels/index (class ids, read by later stages) or pseudo_labels/palette."""
    return self.root / 'pseudo_labels' / kind

  def label_file(self, image_id: str, kind: str = 'index') -> epath.Path:
    return self.labels(kind) / f'{image_id}.png'

  def labels_index(self) -> epath.Path:
    """Stage-complete marker of label: the image ids and the labelling mode."""
    return self.root / 'pseudo_labels' / 'index.json'

  def reports(self) -> epath.Path:
    return self.root / 'reports'

  def summary(self) -> epath.Path:
    """evaluate's numbers, written last: the marker of a finished pipeline."""
    return self.reports() / 'summary.json'

  def log(self, name: str) -> epath.Path:
    """The JSON-lines metric log of one trained model."""
    return self.root / 'logs' / f'{name}.jsonl'

  def tensorboard(self, name: str) -> epath.Path:
    """TensorBoard event files of one trained model or of the evaluation."""
    return self.root / 'tensorboard' / name

  def predictions(self, split: str, supervision: str = 'pseudo') -> epath.Path:
    name = split if supervision == 'pseudo' else f'{split}_{supervision}'
    return self.root / 'predictions' / name


# ---------------------------------------------------------------- atomic writes, checked reads

# The process's umask, read once at import (reading it means setting it, which threads race):
# an atomic write's file gets the mode a plain open() would give it, not mkstemp's 0600, so a
# run directory or an export stays readable by whoever the umask lets read it.
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
  """Write `data` to `target` atomically: complete or absent, never half written."""
  target = epath.Path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(target):  # object stores publish an object only when it is complete.
    target.write_bytes(data)
    return
  fd, tmp = tempfile.mkstemp(dir=os.fspath(target.parent), prefix=f'.{target.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      os.fchmod(f.fileno(), 0o666 & ~_UMASK)
    os.replace(tmp, os.fspath(target))
  except OSError as e:  # a full disk, a file-size or quota limit: no partial file remains.
    os.unlink(tmp)
    raise OSError(
      f'cannot write {target}: {e.strerror or e}; free space (or raise the limit) and rerun '
      'to resume'
    ) from None
  except BaseException:
    os.unlink(tmp)
    raise


def write_json(target: str | os.PathLike, obj) -> None:
  write_bytes(target, json.dumps(obj, indent=2, sort_keys=True).encode())


def write_text(target: str | os.PathLike, text: str) -> None:
  write_bytes(target, text.encode())


def read_json(source: str | os.PathLike, stage: str):
  """JSON written by an earlier stage, or an error naming the command that writes it."""
  source = epath.Path(source)
  if not source.is_file():
    raise FileNotFoundError(f'{source} is missing; run `cows-jax {stage}` first')
  try:
    return json.loads(source.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f'{source} is unreadable ({e}); rerun `cows-jax {stage}`') from e


def append_line(target: str | os.PathLike, line: str) -> None:
  """One line at the end of a log file: appended locally; on object storage, which cannot
  append, the object is rewritten (logs are small)."""
  target = epath.Path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_local(target):
    with target.open('a') as f:
      f.write(line + '\n')
  else:
    write_text(target, (target.read_text() if target.exists() else '') + line + '\n')


# ---------------------------------------------------------------- artifacts


def save_maps(target: str | os.PathLike, maps: np.ndarray, classes: np.ndarray) -> None:
  """One image's maps: .npz with maps float16 [K,H,W] in 0..255 and classes int32 [K]."""
  buf = io.BytesIO()
  np.savez_compressed(buf, maps=maps.astype(np.float16), classes=classes.astype(np.int32))
  write_bytes(target, buf.getvalue())


def load_maps(source: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """(maps float32 [K,H,W], classes [K]) of one image, with an error naming the file."""
  try:
    with np.load(io.BytesIO(epath.Path(source).read_bytes())) as z:
      return z['maps'].astype(np.float32), z['classes']
  except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(
      f'localization maps {source} are missing or unreadable ({e}); run `cows-jax localize`'
    ) from e


def _png_bytes(image: Image.Image) -> bytes:
  """Encode first, so that an encoding error leaves no file behind."""
  buf = io.BytesIO()
  image.save(buf, format='PNG')
  return buf.getvalue()


def maps_readable(source: str | os.PathLike) -> bool:
  """Whether a maps file exists and reads back whole (a truncated .npz fails here)."""
  try:
    load_maps(source)
    return True
  except ValueError:
    return False


def label_readable(source: str | os.PathLike) -> bool:
  """Whether a label PNG exists and its data is complete (every chunk's checksum holds)."""
  try:
    with Image.open(io.BytesIO(epath.Path(source).read_bytes())) as image:
      image.load()
    return True
  except (OSError, ValueError, SyntaxError):
    return False


def complete(marker: epath.Path, file_of, readable, stage: str) -> bool:
  """Whether a stage's marker exists and every output it lists (`file_of(id)`) reads back.
  When some do not, the marker is deleted and the stage makes them again: a marker never
  stands for missing or truncated outputs."""
  if not marker.is_file():
    return False
  ids = read_json(marker, stage)['ids']
  bad = [i for i in ids if not readable(file_of(i))]
  if not bad:
    logging.info(
      '%s: complete (%s exists, its %d outputs read back), skipping', stage, marker, len(ids)
    )
    return True
  logging.warning(
    '%s: %d outputs are missing or unreadable (first: %s); making them again',
    stage,
    len(bad),
    file_of(bad[0]),
  )
  marker.unlink()
  return False


def save_label_png(target: str | os.PathLike, label: np.ndarray, palette: bool = True) -> None:
  """A label map as a VOC palette PNG ('P', viewable in colour) or a plain index PNG ('L').

  Both store the raw indices, so either reads back with `read_label_png`.
  """
  label = np.asarray(label)
  if label.ndim != 2:
    raise ValueError(f'label must be [H,W], got shape {label.shape}')
  if label.size and (label.min() < 0 or label.max() > 255):
    raise ValueError(f'label values must fit in uint8, got range {label.min()}..{label.max()}')
  image = Image.fromarray(label.astype(np.uint8))
  if palette:
    image.putpalette(visualize.voc_palette().ravel().tolist())
  write_bytes(target, _png_bytes(image))


def read_label_png(source: str | os.PathLike) -> np.ndarray:
  """uint8 [H,W] raw indices of a label PNG; palette PNGs decode to indices, not colours."""
  try:
    with Image.open(io.BytesIO(epath.Path(source).read_bytes())) as image:
      if image.mode not in ('P', 'L'):
        raise ValueError(f"label PNG {source} has mode {image.mode!r}, expected 'P' or 'L'")
      return np.array(image, dtype=np.uint8)
  except OSError as err:
    raise OSError(f'cannot read label PNG {source}: {err}') from err


def save_png(target: str | os.PathLike, rgb: np.ndarray) -> None:
  """A uint8 [H,W,3] RGB image (figures of the reports)."""
  rgb = np.asarray(rgb)
  if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
    raise ValueError(f'rgb must be uint8 [H,W,3], got {rgb.dtype} {rgb.shape}')
  write_bytes(target, _png_bytes(Image.fromarray(rgb)))


def write_classifier_epochs(run: RunDir, steps_per_epoch: int, epochs: int) -> None:
  """The steps that end each epoch, so that later stages find an epoch's checkpoint without
  rebuilding the classifier's data plan."""
  write_json(
    run.classifier_epochs(),
    {
      'steps_per_epoch': steps_per_epoch,
      'epoch_end_steps': [steps_per_epoch * (e + 1) for e in range(epochs)],
    },
  )


def classifier_epoch_step(run: RunDir, epoch: int) -> int:
  """The checkpoint step that ends classifier epoch `epoch` (1-based)."""
  record = read_json(run.classifier_epochs(), 'classify')
  return int(record['steps_per_epoch']) * epoch


def supervisions(cfg) -> tuple[str, ...]:
  """segment.supervisions, checked: the segmenters a run trains, each with its directory."""
  sups = tuple(cfg.segment.supervisions)
  if not sups or set(sups) - set(SUPERVISIONS) or len(set(sups)) != len(sups):
    raise ValueError(f'segment.supervisions={sups}: expected distinct entries of {SUPERVISIONS}')
  return sups


# ---------------------------------------------------------------- exports (`cows-jax export`)

EXPORT_FORMAT_VERSION = 1


class ExportDir:
  """The layout of an export: model.jax (Exported.serialize()), meta.json, test_time.py (cows_jax/tta.py,
  under the name exports have always shipped it)."""

  def __init__(self, directory: str | os.PathLike):
    self.root = path(directory)

  def model(self) -> epath.Path:
    return self.root / 'model.jax'

  def meta(self) -> epath.Path:
    return self.root / 'meta.json'

  def driver(self) -> epath.Path:
    return self.root / 'test_time.py'


def write_export(export: ExportDir, model_bytes: bytes, meta: dict, driver: bytes = b'') -> None:
  """model.jax and the driver (if any) first, meta.json (with model.jax's sha256) last: a
  directory with a meta.json is a complete export."""
  write_bytes(export.model(), model_bytes)
  if driver:
    write_bytes(export.driver(), driver)
  digest = hashlib.sha256(model_bytes).hexdigest()
  write_json(export.meta(), {**meta, 'format_version': EXPORT_FORMAT_VERSION, 'sha256': digest})


def read_export(export: ExportDir) -> tuple[bytes, dict]:
  """(model.jax bytes, meta) of a complete export of a format this code reads."""
  if not export.meta().is_file():
    raise FileNotFoundError(f'{export.meta()} is missing; make the export with `cows-jax export`')
  meta = json.loads(export.meta().read_text())
  if meta.get('format_version', 0) > EXPORT_FORMAT_VERSION:
    raise ValueError(
      f'{export.meta()}: format version {meta["format_version"]} is newer than this cows_jax '
      f'reads ({EXPORT_FORMAT_VERSION}); upgrade cows_jax'
    )
  data = export.model().read_bytes()
  if hashlib.sha256(data).hexdigest() != meta.get('sha256'):
    raise ValueError(f'{export.model()}: its sha256 differs from meta.json; export it again')
  return data, meta


@contextlib.contextmanager
def exclusive(lock_file: str | os.PathLike, what: str):
  """An exclusive flock on the local file `lock_file` while `what` runs: separate jobs on one
  machine take turns, a later one waiting (logged) for the earlier. The kernel releases it
  when the holder dies. Object stores get no lock: jobs there run one per directory."""
  path = os.fspath(lock_file)
  if not is_local(path):
    yield
    return
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'a') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info('Waiting for another job %s (%s)', what, path)
      fcntl.flock(lock, fcntl.LOCK_EX)
    yield  # closing the file releases the lock.


# ---------------------------------------------------------------- one job per run directory


class Locked(ValueError):
  """Another live job holds the run directory."""


class Lock:
  """WORKDIR/.lock while a job runs, so that a second job on the same run directory fails at
  once instead of interleaving its writes with the first's. The file names its holder (host,
  pid, command, start time) and its modification time is renewed every `heartbeat_s`; a lock
  whose holder is dead (same host, no such process) or whose heartbeat stopped `stale_s` ago
  is stale and taken over with a warning. Created with O_EXCL, so two jobs starting together
  cannot both take it. Local run directories only: on object storage it is skipped (logged).
  """

  def __init__(self, run: RunDir, heartbeat_s: float = 60.0, stale_s: float = 600.0):
    self.file, self.heartbeat_s, self.stale_s = run.root / '.lock', heartbeat_s, stale_s
    self._stop = threading.Event()
    self._thread = None

  def __enter__(self) -> 'Lock':
    if not is_local(self.file):
      logging.info('run directory lock skipped on %s (not a local filesystem)', self.file)
      return self
    self.file.parent.mkdir(parents=True, exist_ok=True)
    me = {
      'host': socket.gethostname(),
      'pid': os.getpid(),
      'command': ' '.join(sys.argv),
      'started': time.strftime('%Y-%m-%d %H:%M:%S'),
    }
    for _ in range(3):
      try:
        fd = os.open(os.fspath(self.file), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._holder()
        if not self._stale(holder):
          raise Locked(
            f'{self.file.parent} is in use by pid {holder.get("pid")} on {holder.get("host")} '
            f'since {holder.get("started")} ({holder.get("command")}); wait for it to finish, '
            f'or delete {self.file} if that job is gone'
          ) from None
        logging.warning('taking over the stale lock %s of %s', self.file, holder)
        self.file.unlink(missing_ok=True)
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump(me, f)
      self._thread = threading.Thread(target=self._beat, daemon=True)
      self._thread.start()
      return self
    raise Locked(f'{self.file}: could not take the lock (other jobs keep taking it)')

  def __exit__(self, *exc) -> None:
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      if self._holder().get('pid') == os.getpid():
        self.file.unlink(missing_ok=True)

  def _holder(self) -> dict:
    try:
      return json.loads(self.file.read_text())
    except (OSError, ValueError):
      return {}  # being written, or garbage: judged by its age alone.

  def _stale(self, holder: dict) -> bool:
    try:
      age = time.time() - os.stat(self.file).st_mtime
    except FileNotFoundError:
      return True
    if age > self.stale_s:
      return True
    if holder.get('host') == socket.gethostname() and isinstance(holder.get('pid'), int):
      try:
        os.kill(holder['pid'], 0)
      except ProcessLookupError:
        return True
      except PermissionError:
        return False
    return False

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        os.utime(self.file)
      except OSError:
        return
