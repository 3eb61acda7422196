"""VGG16 "LargeFOV" backbone (DeepLab-v1 style) shared by the classifier and the segmenter.

pool4 is a 3x3 stride-1 max-pool and pool5 is gone, conv5 uses dilation 2: output stride 8.
Layer names follow VGG16 (conv1_1 ... conv5_3) so ImageNet weights map one to one.

`norm='batch'` inserts BatchNorm after every conv: not in the paper (whose VGG starts from
ImageNet weights). Trained from scratch, the plain 13-layer network maps every image to
nearly the same pooled feature and a GAP classifier sits at the label prior for thousands of
steps; batch statistics keep images apart. The synthetic config uses it.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cows_jax.models.conv import Conv

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def scaled(channels: int, width: float) -> int:
  """Channel count under the width multiplier, never below 4."""
  return max(4, int(round(channels * width)))


def _max_pool(x, window: int, stride: int, pad: int):
  padding = ((pad, pad), (pad, pad))
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding=padding)


class VGG16LargeFOV(nn.Module):
  """conv1_1..conv5_3 with ReLU; returns the conv5_3 activations (stride 8)."""

  width: float = 1.0
  norm: str = 'none'  # 'none' (paper) or 'batch'.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    """`mask` [B] (bool): the examples whose BatchNorm statistics count (batch padding is
    left out); None counts all."""
    if self.norm not in ('none', 'batch'):
      raise ValueError(f"model.norm={self.norm!r}: expected 'none' or 'batch'")
    x = x.astype(self.dtype)
    for block, channels in enumerate(VGG16_BLOCKS, start=1):
      dilation = 2 if block == 5 else 1
      for i, ch in enumerate(channels, start=1):
        x = Conv(
          scaled(ch, self.width),
          (3, 3),
          padding=dilation,
          kernel_dilation=dilation,
          dtype=self.dtype,
          kernel_init=nn.initializers.kaiming_normal(),
          name=f'conv{block}_{i}',
        )(x)
        if self.norm == 'batch':
          x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, dtype=self.dtype, name=f'norm{block}_{i}'
          )(x, mask=None if mask is None else mask[:, None, None, None])
        x = nn.relu(x)
      if block <= 3:
        x = _max_pool(x, 2, 2, 0)
      elif block == 4:
        x = _max_pool(x, 3, 1, 1)
    return x
