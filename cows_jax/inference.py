"""Test-time inference of the segmenter (paper.md, Stage 3): the image at several scales and
mirrored, each scaled image cut into overlapping windows, softmax probabilities averaged.

The network part lives here: `window_probabilities` (softmax of a batch of windows, averaged
with their mirror images when the mirror is per window); the numpy procedure around it
(scales, whole-image mirror, windows, stitching) is
`test_time.py`, which exports share. All windows of an image, at every scale, go to the device
in one call (padded to a few batch sizes, so few compilations). `load_predictor` gives a run
directory's trained segmenter as a function image -> probabilities.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from cows_jax import checkpoints, crf, losses, parallel, run_dir, test_time
from cows_jax.models import from_config


@dataclasses.dataclass(frozen=True)
class Settings:
  """The test-time procedure of `inference` in the config (test_time.predict's arguments)."""

  scales: tuple = (1.0,)
  flip: bool = False
  flip_whole_image: bool = True  # mirror the image (the reference), else each window.
  window: int = 0  # 0: whole scaled images, no windows.
  stride: float = 2 / 3  # window step as a fraction of the window.
  pad: str = 'bottom_right'
  interpolation: str = 'cubic'

  @classmethod
  def from_config(cls, cfg) -> 'Settings':
    i = cfg.inference
    if not i.scales or min(i.scales) <= 0:
      raise ValueError(f'inference.scales={tuple(i.scales)}: expected positive scales')
    if i.window < 0 or not 0 < i.window_stride <= 1:
      raise ValueError(
        f'inference.window={i.window}, inference.window_stride='
        f'{i.window_stride}: expected window >= 0 and 0 < stride <= 1'
      )
    for field, value, choices in (
      ('pad', i.pad, test_time.PADDINGS),
      ('interpolation', i.interpolation, test_time.INTERPOLATIONS),
    ):
      if value not in choices:
        raise ValueError(f'inference.{field}={value!r}: expected one of {choices}')
    return cls(
      tuple(float(s) for s in i.scales),
      bool(i.flip),
      bool(i.flip_whole_image),
      int(i.window),
      float(i.window_stride),
      i.pad,
      i.interpolation,
    )

  @property
  def flip_windows(self) -> bool:
    """Whether the network's function averages each window with its mirror image."""
    return self.flip and not self.flip_whole_image

  def predict_kwargs(self) -> dict:
    """test_time.predict's procedure arguments (an export's meta.json keeps them)."""
    return {
      'scales': list(self.scales),
      'window': self.window,
      'stride': self.stride,
      'flip_image': self.flip and self.flip_whole_image,
      'pad': self.pad,
      'interpolation': self.interpolation,
    }


def window_probabilities(model, flip: bool, align_corners: bool) -> Callable:
  """jit: (variables, windows [N,h,w,3]) -> softmax [N,h,w,C] at window resolution (the
  logits upsampled x8 as in training), averaged with the mirrored window's (mirrored back)
  when `flip`."""

  @jax.jit
  def probs(variables, x):
    if flip:
      x = jnp.concatenate([x, x[:, :, ::-1]])
    logits = losses.upsample_logits(model.apply(variables, x), x.shape[1:3], align_corners)
    p = jax.nn.softmax(logits, -1)
    if flip:
      n = p.shape[0] // 2
      p = (p[:n] + p[n:, :, ::-1]) / 2
    return p

  return probs


def load_predictor(cfg, workdir: str, supervision: str = 'pseudo') -> Callable:
  """A trained segmenter of the run directory as a function uint8 image [H,W,3] -> float32
  class probabilities [H,W,C], by the test-time procedure of `cfg.inference`."""
  settings = Settings.from_config(cfg)
  model = from_config.segmenter(cfg)
  like = from_config.abstract_variables(model, cfg)
  variables, _ = checkpoints.restore_variables(
    run_dir.RunDir(workdir).segmenter(supervision), None, like, 'segment'
  )
  # Variables replicated on this process's devices (restore_variables), windows sharded over
  # them where they divide.
  probs = window_probabilities(model, settings.flip_windows, cfg.segment.upsample_align_corners)
  mesh = parallel.local_mesh()
  probs_fn = lambda x: probs(variables, parallel.to_local_devices(np.asarray(x), mesh))
  kwargs = settings.predict_kwargs()
  return lambda image: test_time.predict(
    image, probs_fn, mean=cfg.segment.mean, std=cfg.segment.std, **kwargs
  )


def load_export(export_dir: str) -> tuple[Callable, dict]:
  """An export (`cows-jax export`) as the same kind of predictor as `load_predictor`, and its
  metadata; an export for another platform is an error naming the fix."""
  data, meta = run_dir.read_export(run_dir.ExportDir(export_dir))
  platform = jax.default_backend()
  if platform not in meta['platforms']:
    raise ValueError(
      f'{export_dir} was exported for {", ".join(meta["platforms"])} and this machine runs '
      f'{platform}; export it again with --platforms={platform}'
    )
  exported = jax_export.deserialize(bytearray(data))
  return lambda image: test_time.predict(image, exported.call, **meta['test_time']), meta


def label_maps(image: np.ndarray, probabilities: Callable, crf_params=None):
  """(argmax label map, argmax after the dense CRF or None), uint8 [H, W]."""
  p = probabilities(image)
  plain = np.argmax(p, -1).astype(np.uint8)
  if crf_params is None:
    return plain, None
  return plain, np.argmax(crf.refine(image, p, crf_params), -1).astype(np.uint8)


def predict_source(source, probabilities: Callable, crf_params=None):
  """([label map per record], [after the CRF per record] or None)."""
  pairs = [label_maps(source[i]['image'], probabilities, crf_params) for i in range(len(source))]
  plain = [p for p, _ in pairs]
  return plain, (None if crf_params is None else [r for _, r in pairs])
