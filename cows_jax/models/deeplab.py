"""DeepLab segmenters: a stride-8 backbone (VGG16 or ResNet-101) and a head.

LargeFOV (the paper's): 3x3 conv dilation 12, no bias; ReLU; 1x1 conv, no bias; ReLU; 1x1 conv
with bias. ASPP (DeepLab-v2 ResNet): one 3x3 conv per rate straight to class logits, summed.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cows_jax.models.conv import Conv
from cows_jax.models.resnet import RESNET101_STAGES, ResNet
from cows_jax.models.vgg import VGG16LargeFOV, scaled

PRETRAINED_GROUPS = ('backbone',)
BACKBONES = ('vgg16', 'resnet101')
HEADS = ('largefov', 'aspp')
# LargeFOV's initializers (fc6 and fc7, score layer fc8). 'caffe': the authors' prototxt,
# Caffe's xavier (uniform, fan-in) and msra (Gaussian, variance 2 / fan-in) fillers.
HEAD_INITS = {
  'caffe': (
    nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform'),
    nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
  ),
  'kaiming': (nn.initializers.kaiming_normal(), nn.initializers.normal(0.01)),
}


class LargeFOVHead(nn.Module):
  num_classes: int
  channels: int = 1024
  dilation: int = 12
  dtype: Any = jnp.float32
  initializers: str = 'caffe'  # a key of HEAD_INITS

  @nn.compact
  def __call__(self, x):
    init, score_init = HEAD_INITS[self.initializers]
    x = Conv(
      self.channels,
      (3, 3),
      padding=self.dilation,
      kernel_dilation=self.dilation,
      use_bias=False,
      dtype=self.dtype,
      kernel_init=init,
      name='fc6',
    )(x)
    x = Conv(self.channels, (1, 1), use_bias=False, dtype=self.dtype, kernel_init=init, name='fc7')(
      nn.relu(x)
    )
    return Conv(
      self.num_classes,
      (1, 1),
      dtype=self.dtype,
      kernel_init=score_init,
      name='fc8',
    )(nn.relu(x))


class ASPPHead(nn.Module):
  """DeepLab-v2 ASPP: the logits of parallel dilated 3x3 convs (with bias) are summed."""

  num_classes: int
  rates: tuple = (6, 12, 18, 24)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return sum(
      Conv(
        self.num_classes,
        (3, 3),
        padding=r,
        kernel_dilation=r,
        dtype=self.dtype,
        kernel_init=nn.initializers.normal(0.01),
        name=f'c{i}',
      )(x)
      for i, r in enumerate(self.rates)
    )


class DeepLab(nn.Module):
  """Logits at stride 8, [B, H/8, W/8, num_classes] in float32 (float64 for a float64 dtype).

  `width` scales the backbone and the LargeFOV head; `norm` applies to VGG16 only (ResNet
  always has its frozen batch norm); `dtype` is the compute dtype (params stay float32).
  """

  num_classes: int
  backbone: str = 'vgg16'
  head: str = 'largefov'
  width: float = 1.0
  head_channels: int = 1024
  head_dilation: int = 12
  head_init: str = 'caffe'
  aspp_rates: tuple = (6, 12, 18, 24)
  norm: str = 'none'
  resnet_stages: tuple = RESNET101_STAGES
  stride_in_1x1: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False, mask=None):
    """`mask` [B]: the examples whose BatchNorm statistics count (VGG with norm='batch')."""
    if self.backbone == 'vgg16':
      x = VGG16LargeFOV(width=self.width, norm=self.norm, dtype=self.dtype, name='backbone')(
        images, train, mask
      )
    elif self.backbone == 'resnet101':
      x = ResNet(
        self.resnet_stages,
        width=self.width,
        stride_in_1x1=self.stride_in_1x1,
        dtype=self.dtype,
        name='backbone',
      )(images, train)
    else:
      raise ValueError(f'segment.backbone={self.backbone!r}: expected one of {BACKBONES}')
    if self.head == 'largefov':
      x = LargeFOVHead(
        self.num_classes,
        scaled(self.head_channels, self.width),
        self.head_dilation,
        self.dtype,
        self.head_init,
        name='head',
      )(x)
    elif self.head == 'aspp':
      x = ASPPHead(self.num_classes, tuple(self.aspp_rates), self.dtype, name='head')(x)
    else:
      raise ValueError(f'segment.head={self.head!r}: expected one of {HEADS}')
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))
