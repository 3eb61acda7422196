"""DeepLab "LargeFOV" segmenter: a stride-8 backbone and the paper's head
(3x3 conv dilation 12, no bias; ReLU; 1x1 conv, no bias; ReLU; 1x1 conv with bias)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cows_jax.models.vgg import VGG16LargeFOV, scaled

PRETRAINED_GROUPS = ('backbone',)


class LargeFOVHead(nn.Module):
  num_classes: int
  channels: int = 1024
  dilation: int = 12
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.kaiming_normal()
    x = nn.Conv(self.channels, (3, 3), padding=self.dilation, kernel_dilation=self.dilation,
                use_bias=False, dtype=self.dtype, kernel_init=init, name='fc6')(x)
    x = nn.Conv(self.channels, (1, 1), use_bias=False, dtype=self.dtype, kernel_init=init,
                name='fc7')(nn.relu(x))
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype,
                   kernel_init=nn.initializers.normal(0.01), name='fc8')(nn.relu(x))


class DeepLabVGG(nn.Module):
  """Logits at stride 8, [B, H/8, W/8, num_classes] in float32."""
  num_classes: int
  width: float = 1.0
  head_channels: int = 1024
  head_dilation: int = 12
  norm: str = 'none'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = VGG16LargeFOV(width=self.width, norm=self.norm, dtype=self.dtype,
                      name='backbone')(images, train)
    x = LargeFOVHead(self.num_classes, scaled(self.head_channels, self.width),
                     self.head_dilation, self.dtype, name='head')(x)
    return x.astype(jnp.float32)
