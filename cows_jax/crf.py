"""Dense CRF refinement of the segmenter's probabilities (paper.md, Stage 3): mean-field
inference with a Gaussian (position) and a bilateral (position and colour) Potts kernel.

Needs the optional extra `cows_jax[crf]`: pydensecrf2, built from source (a C++ compiler).
"""

import dataclasses

import numpy as np

INSTALL_HINT = (
  "pip install 'cows_jax[crf]' (pydensecrf2; needs a C++ compiler), or turn the "
  'CRF off with --config.evaluate.crf=False'
)


@dataclasses.dataclass(frozen=True)
class Params:
  """The `crf` config section as a plain value: what a CRF worker process gets (host_pool),
  without the config library."""

  iterations: int
  unary_floor: float
  gaussian_sxy: float
  gaussian_compat: float
  bilateral_sxy: float
  bilateral_srgb: float
  bilateral_compat: float

  @classmethod
  def from_config(cls, section) -> 'Params':
    if isinstance(section, cls):
      return section
    return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls)})


def _densecrf():
  try:
    import pydensecrf.densecrf as dcrf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ValueError(f'the dense CRF is requested but not installed ({e}): {INSTALL_HINT}') from e
  return dcrf


def check_available() -> None:
  """Fails early, before hours of inference, when the extra is missing."""
  _densecrf()


def unary_probabilities(probs: np.ndarray, floor: float) -> np.ndarray:
  """p / sum(p) per pixel, floored: the reference's unary before -log (its cubic resizes
  leave probabilities that do not sum to 1 and may dip below 0)."""
  p = probs / np.sum(probs, axis=-1, keepdims=True)
  return np.maximum(p, floor)


def refine(image: np.ndarray, probs: np.ndarray, params) -> np.ndarray:
  """float32 [H, W, C] marginals after `params.iterations` mean-field steps.

  `image` uint8 [H, W, 3]; `probs` [H, W, C] softmax; `params` the `crf` config section.
  """
  dcrf = _densecrf()
  h, w, c = probs.shape
  if image.shape != (h, w, 3) or image.dtype != np.uint8:
    raise ValueError(f'CRF image must be uint8 [{h}, {w}, 3], got {image.dtype} {image.shape}')
  crf = dcrf.DenseCRF2D(w, h, c)
  unary = -np.log(unary_probabilities(probs, params.unary_floor))
  unary = unary.transpose(2, 0, 1).reshape(c, -1)
  crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
  crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
  crf.addPairwiseBilateral(
    sxy=params.bilateral_sxy,
    srgb=params.bilateral_srgb,
    rgbim=np.require(image, requirements=('C', 'W')),
    compat=params.bilateral_compat,
  )
  q = np.asarray(crf.inference(params.iterations), np.float32)
  return q.reshape(c, h, w).transpose(1, 2, 0)


def labels(image: np.ndarray, probs: np.ndarray, params) -> np.ndarray:
  """uint8 [H, W] argmax of `refine`: the label map after the CRF (runs in host_pool's
  worker processes)."""
  return np.argmax(refine(image, probs, params), -1).astype(np.uint8)
