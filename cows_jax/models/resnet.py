"""Dilated ResNet (bottleneck) backbone of DeepLab-v2, with frozen batch norm.

res4 (`layer3`) and res5 (`layer4`) trade their stride for dilation 2 and 4: output stride 8.
Every block of a dilated stage uses the stage's dilation, as in DeepLab-v2's Caffe model.

Names and layout follow torchvision's ResNet state dict one to one (conv1, bn1,
layer1/0/conv1, ..., layer1/0/downsample/0 and /1), so ImageNet weights map by name:
`weight` -> `kernel` (OIHW -> HWIO) for convolutions; `weight`, `bias`, `running_mean`,
`running_var` -> `scale`, `bias`, `mean`, `var` for batch norm.

Batch norm is frozen (statistics and affine are fixed, as in the paper): its four arrays live
in the 'frozen_bn' collection, not in 'params', so no gradient or optimizer ever touches them.
Without imported weights they are the identity.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cows_jax.models.conv import Conv
from cows_jax.models.vgg import scaled

FROZEN_BN = 'frozen_bn'
RESNET101_STAGES = (3, 4, 23, 3)
EXPANSION = 4


class FrozenBatchNorm(nn.Module):
  """y = (x - mean) / sqrt(var + eps) * scale + bias with fixed, untrained arrays."""

  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    stat = lambda name, init: self.variable(FROZEN_BN, name, init, (c,), jnp.float32).value
    scale, bias = stat('scale', jnp.ones), stat('bias', jnp.zeros)
    mean, var = stat('mean', jnp.zeros), stat('var', jnp.ones)
    a = scale * jax.lax.rsqrt(var + self.epsilon)
    return x * a.astype(self.dtype) + (bias - mean * a).astype(self.dtype)


def _conv(features, size, stride=1, dilation=1, dtype=jnp.float32, name=None):
  pad = dilation * (size - 1) // 2
  return Conv(
    features,
    (size, size),
    strides=stride,
    padding=pad,
    kernel_dilation=dilation,
    use_bias=False,
    dtype=dtype,
    kernel_init=nn.initializers.kaiming_normal(),
    name=name,
  )


class Downsample(nn.Module):
  """torchvision's `downsample` Sequential: 1x1 conv ('0') and batch norm ('1')."""

  features: int
  stride: int
  epsilon: float
  dtype: Any

  @nn.compact
  def __call__(self, x):
    x = _conv(self.features, 1, self.stride, dtype=self.dtype, name='0')(x)
    return FrozenBatchNorm(self.epsilon, self.dtype, name='1')(x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (dilated) -> 1x1 x4 with a projection shortcut when shapes change.

  `stride_in_1x1`: the stride sits on the first 1x1 conv (Caffe/MSRA, DeepLab-v2) rather
  than on the 3x3 conv (torchvision); the weights of one layout do not suit the other.
  """

  features: int
  stride: int = 1
  dilation: int = 1
  project: bool = False
  stride_in_1x1: bool = True
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
    bn = lambda name: FrozenBatchNorm(self.epsilon, self.dtype, name=name)
    y = nn.relu(bn('bn1')(_conv(self.features, 1, s1, dtype=self.dtype, name='conv1')(x)))
    y = nn.relu(bn('bn2')(_conv(self.features, 3, s3, self.dilation, self.dtype, name='conv2')(y)))
    y = bn('bn3')(_conv(self.features * EXPANSION, 1, dtype=self.dtype, name='conv3')(y))
    if self.project:
      x = Downsample(
        self.features * EXPANSION, self.stride, self.epsilon, self.dtype, name='downsample'
      )(x)
    return nn.relu(x + y)


class Stage(nn.Module):
  """torchvision's `layerN`: blocks named '0', '1', ...; the first one may stride/project."""

  blocks: int
  features: int
  stride: int
  dilation: int
  stride_in_1x1: bool
  epsilon: float
  dtype: Any

  @nn.compact
  def __call__(self, x):
    for b in range(self.blocks):
      project = b == 0 and (self.stride != 1 or x.shape[-1] != self.features * EXPANSION)
      x = Bottleneck(
        self.features,
        self.stride if b == 0 else 1,
        self.dilation,
        project,
        self.stride_in_1x1,
        self.epsilon,
        self.dtype,
        name=str(b),
      )(x)
    return x


class ResNet(nn.Module):
  """Stem and four stages; returns the last stage's activations (stride 8 by default)."""

  stage_sizes: tuple = RESNET101_STAGES
  dilations: tuple = (1, 1, 2, 4)
  width: float = 1.0
  stride_in_1x1: bool = True
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # frozen batch norm behaves the same in training and inference.
    x = x.astype(self.dtype)
    x = _conv(scaled(64, self.width), 7, 2, dtype=self.dtype, name='conv1')(x)
    x = nn.relu(FrozenBatchNorm(self.epsilon, self.dtype, name='bn1')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, (blocks, dilation) in enumerate(zip(self.stage_sizes, self.dilations)):
      stride = 2 if i > 0 and dilation == 1 else 1
      x = Stage(
        blocks,
        scaled(64 * 2**i, self.width),
        stride,
        dilation,
        self.stride_in_1x1,
        self.epsilon,
        self.dtype,
        name=f'layer{i + 1}',
      )(x)
    return x
