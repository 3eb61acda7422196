"""BatchNorm folded into the convolution before it: a VGG16 trained with BatchNorm becomes the
plain VGG16 of the paper (models/vgg.py with norm='none') that computes the same function in
eval mode.

In eval mode BatchNorm is an affine map per channel, z = gamma (y - mean) / sqrt(var + eps)
+ beta, of the conv output y = W * x + b. With s = gamma / sqrt(var + eps) the pair is one
conv: W' = W s (each output channel's kernel scaled), b' = (b - mean) s + beta.
"""

import numpy as np

from cows_jax.models.vgg import VGG16_BLOCKS

# flax.linen.BatchNorm's default epsilon, which models/vgg.py uses.
BATCHNORM_EPSILON = 1e-5


def conv_names() -> tuple[str, ...]:
  """conv1_1 ... conv5_3."""
  return tuple(
    f'conv{b}_{i}'
    for b, channels in enumerate(VGG16_BLOCKS, 1)
    for i in range(1, len(channels) + 1)
  )


def fold_vgg16_batchnorm(variables: dict, epsilon: float = BATCHNORM_EPSILON) -> dict:
  """{'params': {conv: {kernel, bias}}} of VGG16LargeFOV(norm='none') from the variables of
  VGG16LargeFOV(norm='batch') ({'params': {conv..., norm...}, 'batch_stats': {norm...}}).
  Computed in float64, returned in the kernels' dtype."""
  params, stats = variables['params'], variables['batch_stats']
  folded = {}
  for conv in conv_names():
    norm = conv.replace('conv', 'norm')
    if norm not in params or norm not in stats:
      raise ValueError(f'{norm} (the BatchNorm of {conv}) is missing: not a norm=batch VGG16')
    kernel = np.asarray(params[conv]['kernel'])
    bias = np.asarray(params[conv]['bias'], np.float64)
    scale = np.asarray(params[norm]['scale'], np.float64) / np.sqrt(
      np.asarray(stats[norm]['var'], np.float64) + epsilon
    )
    shift = np.asarray(params[norm]['bias'], np.float64)
    mean = np.asarray(stats[norm]['mean'], np.float64)
    folded[conv] = {
      'kernel': (kernel.astype(np.float64) * scale).astype(kernel.dtype),  # HWIO: O is last.
      'bias': ((bias - mean) * scale + shift).astype(kernel.dtype),
    }
  return {'params': folded}
